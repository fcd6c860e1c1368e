"""Where the client CPU goes: a cProfile of the backfill's default (insert) path, the mirror's apply of a batch, and verify's scan.

Run it from the project root::

    .venv/bin/python -m bench.profile_hot_paths --items 2000

One FRESH DynamoDB Local (free port, in memory, stopped afterwards), seeded like bench/backfill_bench.py
(``shared.sc.seed.generate``: 1 account : 3 repositories, 2% bad rows, seed 7) into legacy tables WITH
streams. Then, in this one process, each path under ``cProfile`` with a CPU clock
(``time.process_time``: a coroutine waiting for DynamoDB, or a fixed wait, costs nothing, so the
figures are the client's CPU, not its wall time):

1. **backfill insert**: ``backfill.run.run_backfill`` in the default write mode (insert), 8 segments,
   1 worker, no mirror (``allow_no_mirror``), from the seeded legacy tables into sc-main.
2. **verify scan**: ``shared.verify.verifier.run`` (8 segments) of the legacy tables against that sc-main.
3. **mirror apply**: the seeded writes' stream records (read back with GetRecords, in Lambda's event
   shape, ``shared.streams.lambda_event.lambda_record``) handed to the mirror's Lambda handler
   (``handlers.mirror.lambda_handler`` on a ``shared.streams.mirror.MirrorEngine``, as bench/mirror_bench.py
   drives it) in batches of 100 (the event source mapping's BatchSize), into a second, empty target
   and control table on the same engine. The engine is warmed first (client pool, registry), as in a
   warm Lambda container.

cProfile sees the main thread only; each section gives the process CPU beside the profiled total, and
the DynamoDB data-plane requests the path made (``shared.core.capacity``'s ledger). Asyncio resumes a
coroutine once per step, so a coroutine's ``calls`` counts its steps; the event loop's own frames
(``_run_once``, ``Handle._run``), which hold nearly everything cumulatively, are left out of the
cumulative ranking. cProfile's own cost inflates the CPU several times: read the shares.

Writes bench/out/profile.md: per path, the CPU per item and the top functions by cumulative and by own
(``tottime``) CPU time; and bench/out/profile-<path>.prof (pstats files, for ``snakeviz`` or
``python -m pstats``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import platform
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.backfill_bench import generate_data
from bench.common import OUT_DIR, fresh_engine
from shared.core import aws, capacity
from shared.core.settings import PROJECT_ROOT, Settings, load_settings
from shared.ops.tables import create_tables

TOP = 15
MIRROR_BATCH = 100
SITE = next((p for p in sys.path if p.endswith("site-packages")), "")


@dataclass
class Profiled:
    name: str
    title: str
    what: str
    items: int
    unit: str
    profiled_cpu_s: float
    process_cpu_s: float
    wall_s: float
    requests: int  # DynamoDB data-plane requests (shared.core.capacity's ledger)
    stats: pstats.Stats

    @property
    def cpu_ms_per_item(self) -> float:
        return self.process_cpu_s * 1000 / self.items if self.items else 0.0


def profile(name: str, title: str, what: str, unit: str, run: Callable[[], int]) -> Profiled:
    """Run `run` (which returns how many items it handled) under cProfile with a CPU clock."""
    profiler = cProfile.Profile(time.process_time)
    capacity.LEDGER.reset()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    profiler.enable()
    try:
        items = run()
    finally:
        profiler.disable()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    requests = sum(u.requests for tables in capacity.LEDGER.snapshot().values() for u in tables.values())
    stats = pstats.Stats(profiler)
    return Profiled(name, title, what, items, unit, stats.total_tt, cpu, wall, requests,  # type: ignore[attr-defined]
                    stats)


# =====================================================================================
# The three paths
# =====================================================================================


def seed(settings: Settings, items: int) -> dict[str, int]:
    from shared.sc.seed import write_items

    create_tables(settings, with_sources=True)  # legacy tables with streams, as `dynashift local` does
    return {settings.physical_name(logical): asyncio.run(write_items(settings, settings.physical_name(logical), rows,
                                                                     concurrency=16))
            for logical, rows in generate_data(items).items()}


def backfill_default(settings: Settings) -> int:
    from rich.console import Console

    from backfill.run import BackfillRequest, run_backfill, status

    request = BackfillRequest(table="all", segments=8, write_mode="insert", allow_no_mirror=True)
    code = run_backfill(settings, {"endpoint_url": settings.effective_endpoint}, request, Console(quiet=True))
    if code != 0:
        raise RuntimeError(f"backfill exited with {code}")
    return sum(row["read"] for row in status(settings))


def verify_scan(settings: Settings) -> int:
    from shared.verify.verifier import make_request, run

    report = run(settings, make_request(settings, segments=8))
    return int(report["source_items"]) + int(report["target_items"])


def stream_records(settings: Settings) -> list[dict[str, Any]]:
    """Every record of the legacy tables' streams, in Lambda's event shape, table after table."""
    from shared.core.definition import get_definition
    from shared.streams.lambda_event import lambda_record

    client, streams = aws.dynamodb(settings), aws.streams(settings)
    records: list[dict[str, Any]] = []
    for source in get_definition(settings.migration).sources:
        arn = client.describe_table(TableName=settings.physical_name(source.name))["Table"]["LatestStreamArn"]
        shards = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
        for shard in shards:
            iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"],
                                                  ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            while iterator:
                page = streams.get_records(ShardIterator=iterator, Limit=1000)
                if not page["Records"]:
                    break  # an open shard: nothing more for now
                records += [lambda_record(r, arn, settings.effective_region) for r in page["Records"]]
                iterator = page.get("NextShardIterator")
    return records


def mirror_apply(settings: Settings, records: list[dict[str, Any]]) -> Callable[[], int]:
    """The handler on a warm engine; returns the profiled part (the batches) as a callable."""
    from handlers import mirror as mirror_handler
    from shared.streams.lambda_event import LocalContext
    from shared.streams.mirror import MirrorEngine

    engine = MirrorEngine(settings)
    mirror_handler.use_engine(engine)
    engine.apply_records([])  # warm: client pool and stale-writer registry, like a warm container

    def run() -> int:
        try:
            for start in range(0, len(records), MIRROR_BATCH):
                response = mirror_handler.lambda_handler({"Records": records[start : start + MIRROR_BATCH]},
                                                         LocalContext())
                if response.get("batchItemFailures"):
                    raise RuntimeError(f"the mirror failed records: {response['batchItemFailures'][:3]}")
            return len(records)
        finally:
            engine.close()
            mirror_handler.use_engine(None)  # type: ignore[arg-type]

    return run


# =====================================================================================
# Report
# =====================================================================================


def where(path: str) -> str:
    if SITE and path.startswith(SITE):
        return path[len(SITE) + 1:]
    root = str(PROJECT_ROOT) + os.sep
    if path.startswith(root):
        return path[len(root):]
    if "/lib/python" in path:
        return "stdlib/" + path.split("/lib/python", 1)[1].split("/", 1)[-1]
    return path


def plumbing(file: str, func: str) -> bool:
    """Frames every path runs through (the event loop, this script): left out of the cumulative ranking."""
    return ("/asyncio/" in file or file == __file__ or file.endswith("profile_hot_paths.py")
            or (file == "~" and "_contextvars.Context" in func))


def top_rows(result: Profiled, key: str) -> list[str]:
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = result.stats.stats  # type: ignore[attr-defined]
    index = 2 if key == "tottime" else 3
    if key == "cumtime":
        raw = {k: v for k, v in raw.items() if not plumbing(k[0], k[2])}
    ranked = sorted(raw.items(), key=lambda kv: kv[1][index], reverse=True)[:TOP]
    total = result.profiled_cpu_s or 1.0
    lines = ["| # | function | calls | own CPU s | cumulative CPU s | cumulative % |", "|---|---|---|---|---|---|"]
    for rank, ((file, line, func), (_, calls, own, cumulative, _)) in enumerate(ranked, 1):
        name = f"`{func}`" if file == "~" else f"`{func}` ({where(file)}:{line})"
        lines.append(f"| {rank} | {name} | {calls:,} | {own:.3f} | {cumulative:.3f} | {cumulative / total:.0%} |")
    return lines


def render(results: list[Profiled], items: int, endpoint_note: str) -> str:
    lines = [
        "# Client CPU profile of the hot paths",
        "",
        (f"Generated by `python -m bench.profile_hot_paths --items {items}` on "
         f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; {os.cpu_count()} CPUs, Python "
         f"{platform.python_version()}, {endpoint_note}. cProfile with a CPU clock (`time.process_time`): "
         "waiting costs nothing. Method: the docstring of bench/profile_hot_paths.py."),
        "",
        ("| path | items | DynamoDB requests | requests/item | process CPU s | profiled (main thread) CPU s "
         "| CPU ms/item (profiled) | CPU ms/request (profiled) | wall s |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.title} | {r.items:,} {r.unit} | {r.requests:,} | {r.requests / max(r.items, 1):.2f} | "
                     f"{r.process_cpu_s:.2f} | {r.profiled_cpu_s:.2f} | {r.cpu_ms_per_item:.3f} | "
                     f"{r.process_cpu_s * 1000 / max(r.requests, 1):.2f} | {r.wall_s:.1f} |")
    lines += ["", ("cProfile's own cost inflates every figure several times (bench/backfill_bench.py measures the "
                   "paths unprofiled); read the shares. DynamoDB requests: data-plane requests counted by "
                   "`shared.core.capacity` (DescribeTable and the like are not). A coroutine's `calls` counts its "
                   "resumptions, not its calls.")]
    for r in results:
        lines += ["", f"## {r.title}", "", r.what, "",
                  f"### Top {TOP} by cumulative CPU (the event loop's frames and this script's left out)", ""]
        lines += top_rows(r, "cumtime")
        lines += ["", f"### Top {TOP} by own CPU (tottime)", ""]
        lines += top_rows(r, "tottime")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_hot_paths", description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2000, help="source items seeded (default 2000)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    if args.items < 10:
        parser.error("--items must be at least 10")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results: list[Profiled] = []
    with fresh_engine() as (info, settings):
        print(f"seeding {args.items:,} items into a fresh DynamoDB Local on port {info.port}")
        seed(settings, args.items)
        print("profiling the backfill (insert, the default)")
        results.append(profile(
            "backfill", "backfill insert path (default)", (
                "`backfill.run.run_backfill`, write mode insert (the default), 8 segments, 1 worker, no mirror: "
                "planning, the fence, scan pages, transform, PartiQL INSERTs 25 a request (refused ones as "
                "conditional puts), checkpoints, quarantine, "
                "progress polling, the final sweep. Items: source items read."),
            "source items", lambda: backfill_default(settings)))
        print("profiling verify")
        results.append(profile(
            "verify", "verify scan", (
                "`shared.verify.verifier.run`, 8 segments per table, of the legacy tables against the backfilled sc-main "
                "(nothing to repair). Items: source + target items scanned."),
            "items scanned", lambda: verify_scan(settings)))
        print("reading the stream records back")
        records = stream_records(settings)
        mirrored = load_settings(endpoint_url=info.endpoint, target_table="sc-main-mirror",
                                 control_table="dynashift-control-mirror")
        create_tables(mirrored, with_sources=False)
        print(f"profiling the mirror on {len(records):,} records")
        results.append(profile(
            "mirror", "mirror apply of a batch", (
                f"`handlers.mirror.lambda_handler` on a warm `shared.streams.mirror.MirrorEngine`, {len(records):,} INSERT "
                f"records of the seeding in batches of {MIRROR_BATCH}, into an empty target (powertools logging "
                "and metrics included, as in Lambda). Items: stream records."),
            "records", mirror_apply(mirrored, records)))
    for r in results:
        r.stats.dump_stats(str(args.out_dir / f"profile-{r.name}.prof"))
    path = args.out_dir / "profile.md"
    path.write_text(render(results, args.items, "DynamoDB Local (fresh engine)"))
    print(path.read_text())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
