"""Verifier benchmark on DynamoDB Local: throughput and peak memory against a naive verifier.

Run it from the project root::

    .venv/bin/python -m bench.verify_bench              # 100,000 source items, 2 rounds
    .venv/bin/python -m bench.verify_bench --million    # also the 1,000,000 point (about an hour here)
    .venv/bin/python -m bench.verify_bench --quick      # smoke run: 5,000 items, 1 round

Method
======

Each data size gets a FRESH DynamoDB Local (started on a free port, stopped
afterwards). The legacy data is `shared.sc.seed.generate` (every legacy variant,
1% bad rows, case collisions), a quarter accounts and three quarters
repositories. Loading a million items through streams and the mirror would
take hours on DynamoDB Local, so the bench builds the migrated state directly:
the legacy tables, sc-main and the control table are created WITHOUT streams
(sc-main and the control table otherwise exactly as template.yaml defines
them), the legacy items are written with unconditional BatchWriteItem, the
clean items' transforms likewise into sc-main (the first claimant of a
shared key keeps it), and every bad item and every collision loser goes into
quarantine with its reason. That is exactly the state the mirror and
backfill converge to, so both verifiers must find it clean.

Each verifier runs in a spawned child process of its own, on the same
engine, one after the other, in alternating order per round. Its peak RSS
is its own high-water mark (``VmHWM``, `bench.common.own_peak_rss_mb`), not
``ru_maxrss``: Linux carries that across fork and execve, so a child spawned
by this parent, which still holds the memory of the load, would report the
parent's size (that is what made the first 300,000-item run read 1,007 MB).

* ``dynashift``: `shared.verify.verifier.run` with ``--segments`` parallel segments
  per table (aiobotocore), SQLite spill, default settle (no difference is
  found, so nothing is re-read).
* ``naive``: boto3 paginated scans of both legacy tables and of sc-main,
  every item deserialised into memory, every source item transformed, then
  dict comparison (missing / extra / mismatched). No quarantine, ownership or
  leftover logic: it is the cost floor of "scan, transform, compare". It
  also cannot tell which of two case-colliding repositories holds their
  shared key, so it reports those keys as mismatched (its ``ok`` is false).

Throughput = (source items + target items) / wall time of the child. Ratios
pair the two verifiers within a round.

Read units: every client counts its ConsumedCapacity (`shared.core.capacity`).
dynashift's are its report's ``capacity.verify`` (scans, the quarantine's
pages, re-checks); the naive verifier's are what its plain Scans consumed.
The reference is ONE eventually consistent scan of each table verified (the
two legacy tables and sc-main), by AWS's rules from the loaded items' sizes:
per table, its items' bytes rounded up to 4 KB, half a unit per 4 KB
(`shared.core.capacity.read_units`); a real scan also rounds each 1 MB page up, at
most half a unit a page. The naive verifier's measured units are shown beside
it: they are such a scan, measured.

Targets (issue 14, after issue 5): dynashift at least 3x the naive
throughput at 100,000 items, with read units at most 1.05x the reference
scan; dynashift peak RSS under 250 MB and flat from 100,000 to 1,000,000
items, where the naive verifier's grows.

The machine is shared (2 cores); before each measurement the bench waits up
to ``--quiet-wait-s`` for other programs to go idle, and reports the load.

Results: bench/out/verify.json and bench/out/verify.md (``--quick``:
verify-quick.*). With ``--million`` the 1M point is added to the same files;
without it, a 1M point kept from an earlier run (bench/out/verify-million.json)
is merged into the report.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import queue
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import common
from bench.common import fresh_engine, machine_busy_s, summary_stats, wait_for_quiet
from shared.core import aws, capacity
from shared.core.codec import to_native
from shared.core.definition import get_definition
from shared.core.errors import QuarantineError
from shared.core.itemsize import check_target_items, item_size_bytes
from shared.core.settings import PROJECT_ROOT, Settings, load_settings
from shared.ops.tables import create_table, source_specs, table_specs
from shared.store.control import ControlStore, QuarantineEntry

OUT_DIR = PROJECT_ROOT / "bench" / "out"
TARGET_RATIO = 3.0
TARGET_UNITS_RATIO = 1.05  # read units at most 1.05x one eventually consistent scan of each table
TARGET_RSS_MB = 250.0
FLAT_RATIO = 1.25  # "flat": the 1M peak within 25% of the 100k peak
VERIFIERS = ("dynashift", "naive")


# =====================================================================================
# Loading the migrated state, fast
# =====================================================================================


def create_tables_without_streams(settings: Settings) -> None:
    client = aws.dynamodb(settings)
    specs = [*table_specs(settings).values(), *source_specs(settings, get_definition(settings.migration))]
    for spec in specs:
        spec.create.pop("StreamSpecification", None)
        create_table(client, spec, local=True)


def load(settings: Settings, source_items: int, seed: int = 11, log: Callable[[str], None] = print) -> dict[str, int]:
    """Legacy items + their transforms + quarantine, with unconditional batch writes."""
    from shared.sc.seed import generate, write_items

    definition = get_definition(settings.migration)
    accounts = source_items // 4
    data = generate(accounts, source_items - accounts, 0.01, seed)
    targets: dict[tuple[str, ...], dict[str, Any]] = {}
    quarantine: list[QuarantineEntry] = []
    for table, items in data.tables.items():
        source = definition.source(table)
        for item in items:
            ref = source.ref(item)
            try:
                produced = definition.transform(table, item)
                check_target_items(produced)
            except QuarantineError as exc:
                quarantine.append(QuarantineEntry(ref, exc.reason, exc.message, item))
                continue
            keys = [definition.target_key(t) for t in produced]
            if any(k in targets for k in keys):
                quarantine.append(QuarantineEntry(ref, "key_collision", "bench: key taken", item))
                continue
            targets.update(zip(keys, produced, strict=True))
    started = time.monotonic()
    for table, items in data.tables.items():
        asyncio.run(write_items(settings, settings.physical_name(table), items, concurrency=16))
    log(f"  loaded {source_items:,} legacy items in {time.monotonic() - started:.0f}s")
    started = time.monotonic()
    asyncio.run(write_items(settings, settings.target_table, targets.values(), concurrency=16))
    log(f"  loaded {len(targets):,} sc-main items in {time.monotonic() - started:.0f}s")

    async def put_quarantine() -> None:
        async with aws.aio_dynamodb(settings) as client:
            control = ControlStore(client, settings.control_table)
            for start in range(0, len(quarantine), 50):
                await asyncio.gather(*(control.quarantine_put(e) for e in quarantine[start : start + 50]))

    asyncio.run(put_quarantine())
    table_bytes = {settings.physical_name(t): sum(item_size_bytes(i) for i in items) for t, items in data.tables.items()}
    table_bytes[settings.target_table] = sum(item_size_bytes(i) for i in targets.values())
    return {"source_items": source_items, "target_items": len(targets), "quarantined": len(quarantine),
            "table_bytes": table_bytes, "scan_read_units": scan_read_units(table_bytes)}


def scan_read_units(table_bytes: dict[str, int]) -> float:
    """One eventually consistent scan of each table, by AWS's rules: bytes rounded up to 4 KB, 0.5 unit per 4 KB."""
    return sum(capacity.read_units(size) for size in table_bytes.values() if size)


# =====================================================================================
# The two verifiers, each in a child process
# =====================================================================================


def run_dynashift(settings: Settings, segments: int) -> dict[str, Any]:
    from shared.verify.verifier import make_request, run

    report = run(settings, make_request(settings, segments=segments))
    counts = {k: report[k] for k in ("missing", "extra", "mismatched", "leftover", "quarantine_missing",
                                     "quarantine_stale")}
    units = report["capacity"]["verify"]
    return {"ok": report["ok"], "source_items": report["source_items"], "target_items": report["target_items"],
            "differences": counts, "read_units": units["read_units"], "write_units": units["write_units"],
            "requests": units["requests"]}


def run_naive(settings: Settings, segments: int) -> dict[str, Any]:
    """Scan everything into memory, transform, compare dicts."""
    definition = get_definition(settings.migration)
    client = aws.dynamodb(settings)

    def scan(table: str) -> list[dict[str, Any]]:
        items = []
        for page in client.get_paginator("scan").paginate(TableName=table):
            items.extend(to_native(i) for i in page["Items"])
        return items

    expected: dict[tuple[str, ...], dict[str, Any]] = {}
    source_count = 0
    for source in definition.sources:
        items = scan(settings.physical_name(source.name))
        source_count += len(items)
        for item in items:
            try:
                produced = definition.transform(source.name, item)
                check_target_items(produced)
            except QuarantineError:
                continue
            for target in produced:
                expected.setdefault(definition.target_key(target), target)
    actual = {definition.target_key(i): i for i in scan(settings.target_table)}
    missing = sum(1 for k in expected if k not in actual)
    extra = sum(1 for k in actual if k not in expected)
    mismatched = sum(1 for k, v in expected.items() if k in actual and actual[k] != v)
    usage = capacity.Usage()
    for tables in capacity.LEDGER.snapshot().values():  # its client counts like every other (shared.core.aws)
        for table_usage in tables.values():
            usage.add(table_usage)
    return {"ok": not (missing or extra or mismatched), "source_items": source_count, "target_items": len(actual),
            "differences": {"missing": missing, "extra": extra, "mismatched": mismatched},
            "read_units": usage.read_units, "write_units": usage.write_units, "requests": usage.requests}


RUNNERS = {"dynashift": run_dynashift, "naive": run_naive}


def _child(kind: str, endpoint: str, segments: int, out: Any) -> None:
    settings = load_settings(endpoint_url=endpoint)
    started = time.monotonic()
    cpu = time.process_time()
    result = RUNNERS[kind](settings, segments)
    result["elapsed_s"] = time.monotonic() - started
    result["cpu_s"] = time.process_time() - cpu
    result["peak_rss_mb"] = common.own_peak_rss_mb()
    out.put(result)


def measure(kind: str, endpoint: str, segments: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    busy_before, at = machine_busy_s(), time.monotonic()
    process = context.Process(target=_child, args=(kind, endpoint, segments, out))
    process.start()
    while True:  # a child that died without a result must not hang the bench
        try:
            result = out.get(timeout=5)
            break
        except queue.Empty:
            if not process.is_alive():
                raise RuntimeError(f"the {kind} verifier died (exit code {process.exitcode})") from None
    process.join()
    wall = time.monotonic() - at
    result["machine_load_cores"] = (machine_busy_s() - busy_before) / max(wall, 1e-9)
    result["items_per_s"] = (result["source_items"] + result["target_items"]) / result["elapsed_s"]
    result["verifier"] = kind
    return result


# =====================================================================================
# The run
# =====================================================================================


@dataclass
class BenchConfig:
    sizes: list[int] = field(default_factory=lambda: [100_000])
    rounds: int = 2
    segments: int = 8
    quiet_wait_s: float = 30.0
    seed: int = 11
    verifiers: tuple[str, ...] = VERIFIERS


@contextmanager
def loaded_engine(size: int, config: BenchConfig, reuse: str | None, log: Callable[[str], None]) -> Iterator[
        tuple[str, dict[str, Any]]]:
    """A fresh engine loaded with `size` source items; or, with `reuse`, an engine a previous
    (interrupted) run of this bench already loaded with the same size and seed."""
    if reuse:
        log(f"{size:,} source items already loaded on {reuse}")
        yield reuse, {"reused_engine": True}
        return
    with fresh_engine() as (info, settings):
        log(f"{size:,} source items on {info.endpoint}")
        create_tables_without_streams(settings)
        load_started = time.monotonic()
        loaded = load(settings, size, config.seed, log)
        loaded["load_s"] = time.monotonic() - load_started
        yield info.endpoint, loaded


def run_bench(config: BenchConfig, *, log: Callable[[str], None] = print, reuse: str | None = None) -> dict[str, Any]:
    started = time.time()
    runs: list[dict[str, Any]] = []
    loads: dict[int, dict[str, Any]] = {}
    for size in config.sizes:
        with loaded_engine(size, config, reuse, log) as (endpoint, loaded):
            loads[size] = loaded
            for round_no in range(config.rounds):
                order = config.verifiers if round_no % 2 == 0 else tuple(reversed(config.verifiers))
                for kind in order:
                    waited, load_before = wait_for_quiet(config.quiet_wait_s)
                    result = measure(kind, endpoint, config.segments)
                    result.update(size=size, round=round_no, waited_for_quiet_s=waited, load_before_cores=load_before,
                                  scan_read_units=loaded.get("scan_read_units"))
                    runs.append(result)
                    loads[size].setdefault("target_items", result["target_items"])
                    log(f"  round {round_no + 1} {kind:>9}: {result['elapsed_s']:6.1f}s, "
                        f"{result['items_per_s']:7.0f} items/s, peak RSS {result['peak_rss_mb']:6.0f} MB, "
                        f"ok={result['ok']} (machine load {result['machine_load_cores']:.2f} cores)")
    report = {
        "bench": "verify",
        "config": asdict(config),
        "machine": common.machine_info(),
        "started_at": started,
        "runtime_s": time.time() - started,
        "loads": {str(k): v for k, v in loads.items()},
        "runs": runs,
    }
    report["summary"] = summarize(runs)
    return report


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rows, ratios = [], []
    for size in sorted({r["size"] for r in runs}):
        by_kind = {k: {r["round"]: r for r in runs if r["size"] == size and r["verifier"] == k} for k in VERIFIERS}
        for kind, mine in by_kind.items():
            if not mine:
                continue
            rows.append({
                "size": size, "verifier": kind, "rounds": len(mine),
                "all_ok": all(r["ok"] for r in mine.values()),
                **{name: summary_stats([r[name] for r in mine.values()])
                   for name in ("elapsed_s", "items_per_s", "peak_rss_mb", "cpu_s", "machine_load_cores")},
                "read_units": summary_stats([r["read_units"] for r in mine.values() if r.get("read_units") is not None]),
                "scan_read_units": next((r["scan_read_units"] for r in mine.values() if r.get("scan_read_units")),
                                        None),
            })
        shared = sorted(set(by_kind["dynashift"]) & set(by_kind["naive"]))
        if shared:
            ratios.append({"size": size, "throughput_ratio": summary_stats(
                [by_kind["dynashift"][n]["items_per_s"] / by_kind["naive"][n]["items_per_s"] for n in shared])})
    return {"rows": rows, "ratios": ratios, "verdicts": verdicts(rows, ratios)}


def verdicts(rows: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    # The throughput target is set at 100,000 items; a run without that size (--quick) is judged at its own.
    ratio = next((r for r in ratios if r["size"] == 100_000), None) or (ratios[0] if ratios else None)
    if ratio:
        value = ratio["throughput_ratio"]["median"]
        out.append({"target": f"throughput >= {TARGET_RATIO:.0f}x naive at {ratio['size']:,} items",
                    "measured": f"{common.cell(ratio['throughput_ratio'], 2)}x (median of "
                                f"{ratio['throughput_ratio']['n']} paired rounds)",
                    "pass": value >= TARGET_RATIO})
    mine = {r["size"]: r for r in rows if r["verifier"] == "dynashift"}
    naive = {r["size"]: r for r in rows if r["verifier"] == "naive"}
    for size, row in sorted(mine.items()):
        reference, units = row.get("scan_read_units"), row.get("read_units")
        if not reference or not units:
            continue
        measured_scan = (naive.get(size) or {}).get("read_units")
        scan_text = f"; the naive verifier's plain scans measured {measured_scan['median']:,.0f}" if measured_scan else ""
        out.append({"target": f"read units <= {TARGET_UNITS_RATIO:g}x one eventually consistent scan of each table "
                              f"at {size:,} items",
                    "measured": f"{units['max'] / reference:.3f}x: {units['max']:,.0f} read units (max over rounds) vs "
                                f"{reference:,.0f} by AWS rules from the items' sizes{scan_text}",
                    "pass": units["max"] <= TARGET_UNITS_RATIO * reference})
    for size, row in sorted(mine.items()):
        peak = row["peak_rss_mb"]["max"]
        out.append({"target": f"dynashift peak RSS < {TARGET_RSS_MB:.0f} MB at {size:,} items",
                    "measured": f"{peak:.0f} MB (max over rounds)", "pass": peak < TARGET_RSS_MB})
    largest = max(mine, default=0)
    if 100_000 in mine and largest > 100_000:
        growth = mine[largest]["peak_rss_mb"]["max"] / mine[100_000]["peak_rss_mb"]["max"]
        partial = "" if largest >= 1_000_000 else " (the issue asks up to 1,000,000: not measured)"
        out.append({"target": f"dynashift peak RSS flat from 100,000 to {largest:,} items (x{FLAT_RATIO} at most)"
                              + partial,
                    "measured": f"x{growth:.2f}", "pass": growth <= FLAT_RATIO})
    naive_largest = max(naive, default=0)
    if 100_000 in naive and naive_largest > 100_000:
        naive_growth = naive[naive_largest]["peak_rss_mb"]["max"] / naive[100_000]["peak_rss_mb"]["max"]
        out.append({"target": f"the naive verifier's peak RSS grows with the data (100,000 to {naive_largest:,} "
                              "items, for contrast)",
                    "measured": f"x{naive_growth:.2f}", "pass": naive_growth > FLAT_RATIO, "informational": True})
    return out


def cell(stat: dict[str, float] | None, digits: int = 0) -> str:
    return common.cell(stat, digits, thousands=True)


def render_markdown(report: dict[str, Any]) -> str:
    summary = report["summary"]
    lines = [
        "# Verifier benchmark (DynamoDB Local)",
        "",
        (f"{report['config']['rounds']} round(s) per size, {report['config']['segments']} scan segments per table, "
         f"{report['machine']['cpus']} CPUs (shared), {report['machine']['engine']}. Runtime "
         f"{report['runtime_s']:.0f} s. Cells: median (min-max) over rounds. Tables loaded without streams, with "
         "unconditional batch writes (see the module docstring)."),
        "",
        ("| source items | target items | verifier | ok | wall s | items/s | peak RSS MB | CPU s | read units "
         "(one EC scan of each table, AWS rules) | machine load |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    loads = report.get("loads", {})
    for row in summary["rows"]:
        target_items = loads.get(str(row["size"]), {}).get("target_items", "?")
        lines.append(
            f"| {row['size']:,} | {target_items:,} | {row['verifier']} | {'yes' if row['all_ok'] else 'NO'} | "
            f"{cell(row['elapsed_s'], 1)} | {cell(row['items_per_s'])} | {cell(row['peak_rss_mb'])} | "
            f"{cell(row['cpu_s'], 1)} | {cell(row.get('read_units'))} ({_num(row.get('scan_read_units'))}) | "
            f"{cell(row['machine_load_cores'], 2)} |"
        )
    lines += ["", "| source items | dynashift / naive throughput (paired) |", "|---|---|"]
    for ratio in summary["ratios"]:
        lines.append(f"| {ratio['size']:,} | {cell(ratio['throughput_ratio'], 2)} |")
    verifiers_by_size: dict[int, set[str]] = {}
    for row in summary["rows"]:
        verifiers_by_size.setdefault(row["size"], set()).add(row["verifier"])
    alone = {size: kinds for size, kinds in verifiers_by_size.items() if len(kinds) == 1}
    if alone:
        lines += ["", "Measured by one verifier only (so no ratio): " + "; ".join(
            f"{size:,} items: {next(iter(kinds))}" for size, kinds in sorted(alone.items())) + "."]
    lines += ["", "## Targets (issue 14, after issue 5)", ""]
    lines += common.verdict_lines(summary["verdicts"])
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def write_outputs(report: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    return common.write_outputs(report, out_dir, stem, render_markdown)


KEPT_STEMS = ("verify-million", "verify-extra")


def merge_kept_runs(report: dict[str, Any], out_dir: Path) -> None:
    """Add the runs of sizes this run did not measure, kept from earlier `--million` / `--sizes` runs."""
    for stem in KEPT_STEMS:
        kept = out_dir / f"{stem}.json"
        if not kept.exists():
            continue
        earlier = json.loads(kept.read_text())
        measured = {r["size"] for r in report["runs"]}
        new_runs = [dict(r, kept_from=stem) for r in earlier["runs"] if r["size"] not in measured]
        report["runs"].extend(new_runs)
        report["loads"].update({k: v for k, v in earlier["loads"].items() if int(k) not in measured})
    report["summary"] = summarize(report["runs"])


def quick_config() -> BenchConfig:
    return BenchConfig(sizes=[5_000], rounds=1, segments=4, quiet_wait_s=3.0)


def _verifier_list(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in chosen if name not in VERIFIERS]
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(VERIFIERS)}, not {text!r}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.verify_bench", description=__doc__.split("\n\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 5,000 items, 1 round")
    parser.add_argument("--million", action="store_true", help="also measure 1,000,000 source items (slow)")
    parser.add_argument("--only-million", action="store_true", help="measure only the 1,000,000 point")
    parser.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")],
                        help="measure only these sizes (1 round), kept in verify-extra.json for later reports")
    defaults = BenchConfig()
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--verifiers", type=_verifier_list, default=defaults.verifiers,
                        help="which verifiers to measure, comma-separated (default: dynashift,naive; a size "
                             "measured by one only gets no throughput ratio)")
    parser.add_argument("--segments", type=int, default=defaults.segments)
    parser.add_argument("--quiet-wait-s", type=float, default=defaults.quiet_wait_s)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--reuse-endpoint", help="measure on an engine an interrupted run already loaded (one size)")
    args = parser.parse_args(argv)
    if args.quick:
        config, stem = quick_config(), "verify-quick"
    elif args.sizes:
        config = BenchConfig(sizes=args.sizes, rounds=1, segments=args.segments, quiet_wait_s=args.quiet_wait_s)
        stem = "verify-extra"
    else:
        sizes = [1_000_000] if args.only_million else [100_000] + ([1_000_000] if args.million else [])
        rounds = 1 if args.only_million else args.rounds
        config = BenchConfig(sizes=sizes, rounds=rounds, segments=args.segments, quiet_wait_s=args.quiet_wait_s)
        stem = "verify-million" if args.only_million else "verify"
    if args.reuse_endpoint and len(config.sizes) != 1:
        parser.error("--reuse-endpoint: with exactly one size")
    config = dataclasses.replace(config, verifiers=args.verifiers)
    report = run_bench(config, reuse=args.reuse_endpoint)
    if stem == "verify":
        if args.million:
            write_outputs(report, args.out_dir, "verify-million")
        merge_kept_runs(report, args.out_dir)
    return common.publish(report, args.out_dir, stem, render_markdown)


if __name__ == "__main__":
    common.script_main(main)
