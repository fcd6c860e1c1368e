"""Backfill under faults: items/s with 3% of its requests throttled or failed, against its own fault-free rate.

Run it from the project root::

    .venv/bin/python -m bench.backfill_faults_bench            # 6,000 source items, 3 rounds
    .venv/bin/python -m bench.backfill_faults_bench --quick    # smoke run: 1,000 items, 2 rounds (~3 min, quiet machine)
    .venv/bin/python -m bench.backfill_faults_bench --items 2000 --rounds 2 --share 0.05 --write-mode put

Method
======

Two contenders, the same backfill (``backfill.run.run_backfill``: ``--table all --segments 8 --workers 1
--write-mode insert``, the CLI's default (``--write-mode`` picks another), ``allow_no_mirror``; no kill) on the same data:

* ``fault-free``: every request of the backfill goes through the fault proxy of the chaos tests
  (``tests/chaos/fault_proxy.py``) with no fault planned, so both contenders pay the same extra hop;
* ``faulty``: the same proxy answers ``--share`` (default 3%) of the backfill's requests, of every
  operation, with an error, split as the chaos tests split them: two thirds ``ThrottlingException``
  (HTTP 400, nothing done), one third ``InternalServerError`` (HTTP 500, half of them AFTER forwarding:
  the write happened, the client cannot know). The fault pattern is seeded.

Each contender runs on a FRESH DynamoDB Local (free port, in memory, stopped afterwards) in the same state:
sc-main, the control table and the legacy tables (with streams) created as the CLI creates them, loaded
with the same seeded items as bench/backfill_bench.py (``generate_data``/``prepare_engine``, imported from
there; seeding is not timed). The backfill runs in a CHILD PROCESS that does nothing else
(bench/backfill_bench.py's ``CopyProcess``); the proxy and the live workload run in this process.
During each backfill a live application workload (``shared.sc.workload.Workload``, seeded, ``--workload-rate``
operations/s, default 20; 0 turns it off) writes the legacy tables directly (not through the proxy: the
faults are the backfill's). No mirror runs.

Rounds alternate the order of the contenders, so neither always runs on the warmer (or busier) machine.
Figures per run: ``items/s`` = source items the backfill read / wall time of the whole run (planning, the
stale-writer fence, the final tombstone sweep included, as the operator waits for them); ``copy items/s``
leaves the two fixed waits out (informational); requests = what the proxy forwarded to the engine, per
source item; the faults the proxy injected. Per round, ratio = faulty items/s / fault-free items/s.
Runs during which other programs (not the engine, the backfill, nor this process's proxy and workload) used
more than 0.25 cores are flagged ``†`` (a 2-core shared machine): read the ratios, taken within one round,
rather than the absolute rates.

Target (issue 14): the faulty backfill keeps at least 0.5x its own fault-free items/s (median of the
per-round ratios). Results: bench/out/backfill_faults.json (every run, raw) and backfill_faults.md;
``--quick`` writes backfill_faults-quick.*.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import common
from bench.backfill_bench import DEFAULT_MODE, CopyProcess, CopySpec, generate_data, prepare_engine, split
from bench.common import (
    CONTAMINATED_CORES,
    DAGGER,
    OUT_DIR,
    CpuSnapshot,
    cell,
    fresh_engine,
    summary_stats,
    wait_for_quiet,
)
from shared.core import aws
from shared.core.settings import Settings
from shared.sc.workload import Workload, apply_operation
from tests.chaos.fault_proxy import FaultPlan, FaultProxy

CONTENDERS = ("fault-free", "faulty")
TARGET_RATIO = 0.5
THROTTLE_SHARE = 2 / 3  # of the faults; the rest are 5xx, as tests/chaos/test_chaos.py splits them
PROXY_SEED = 31
WORKLOAD_SEED = 24


@dataclass
class BenchConfig:
    items: int = 6_000
    rounds: int = 3
    share: float = 0.03  # of the backfill's requests answered with a fault
    segments: int = 8
    write_mode: str = DEFAULT_MODE  # what operators run: `backfill run` without --write-mode
    workload_rate: float = 20.0  # application operations/s during each backfill (0: none)
    quiet_wait_s: float = 30.0
    timeout_s: float = 3600.0  # one backfill


def fault_plan(share: float) -> FaultPlan:
    return FaultPlan(throttle=share * THROTTLE_SHARE, error_5xx=share * (1 - THROTTLE_SHARE), seed=PROXY_SEED)


class WorkloadThread:
    """The application, writing the legacy tables at a rate while the backfill runs."""

    def __init__(self, settings: Settings, rate: float) -> None:
        self.settings, self.rate = settings, rate
        self.done = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="workload", daemon=True)

    def _run(self) -> None:
        client = aws.dynamodb(self.settings)
        workload = Workload(seed=WORKLOAD_SEED)
        started = time.monotonic()
        while not self._stop.is_set():
            delay = started + (self.done + self.failed) / self.rate - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            try:
                apply_operation(client, self.settings, workload.next())
                self.done += 1
            except Exception:  # noqa: BLE001  (the application's problem, not the benchmark's)
                self.failed += 1

    def __enter__(self) -> WorkloadThread:
        if self.rate > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)


def run_contender(contender: str, data: dict[str, list[dict[str, Any]]], config: BenchConfig) -> dict[str, Any]:
    """Fresh engine, seeded; the backfill in a child process, through the proxy; its figures."""
    items = sum(len(v) for v in data.values())
    share = config.share if contender == "faulty" else 0.0
    with fresh_engine() as (info, settings):
        loaded = prepare_engine(settings, data, legacy_streams=True)
        seed_s = loaded[0] if isinstance(loaded, tuple) else loaded  # (seconds, items per table) or seconds
        proxy = FaultProxy(info.endpoint, fault_plan(share)).start()
        try:
            with CopyProcess(CopySpec(config.write_mode, proxy.endpoint, items, config.segments)) as child:
                child.wait_ready(timeout=600)
                injected_before, forwarded_before = sum(proxy.injected.values()), proxy.forwarded
                with WorkloadThread(settings, config.workload_rate) as app:
                    before = CpuSnapshot.take(info.pid)
                    result = child.run(timeout=config.timeout_s)
                    after = CpuSnapshot.take(info.pid)
            injected = dict(proxy.injected)
            faults = sum(injected.values()) - injected_before
            forwarded = proxy.forwarded - forwarded_before
        finally:
            proxy.stop()
    window = after.at - before.at
    engine_cpu = after.engine_s - before.engine_s
    machine = after.machine_s - before.machine_s
    harness = after.own_s - before.own_s  # this process: the proxy and the workload, part of the set-up
    source, wall = result["source_items"], result["wall_s"]
    run = {
        "contender": contender,
        "items": items,
        "share": share,
        "seed_s": seed_s,
        "wall_s": wall,
        "source_items": source,
        **{k: result[k] for k in ("read", "written", "skipped", "quarantined", "fixed_waits_s", "cpu_s")},
        "exit_code": result.get("exit_code"),
        "items_per_s": source / wall if wall else 0.0,
        "copy_items_per_s": source / (wall - result["fixed_waits_s"]) if wall > result["fixed_waits_s"] else None,
        "requests": forwarded + faults,
        "requests_per_item": (forwarded + faults) / source if source else None,
        "faults": faults,
        "injected": injected,
        "workload_ops": app.done,
        "workload_failed": app.failed,
        "engine_cpu_cores": engine_cpu / window if window else 0.0,
        "harness_cpu_cores": harness / window if window else 0.0,
        "other_load_cores": max(0.0, machine - engine_cpu - result["cpu_s"] - harness) / window if window else 0.0,
    }
    return run


def run_bench(config: BenchConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    started = time.time()
    data = generate_data(config.items)
    runs: list[dict[str, Any]] = []
    waited_total = 0.0
    for round_no in range(config.rounds):
        order = CONTENDERS if round_no % 2 == 0 else tuple(reversed(CONTENDERS))
        for contender in order:
            waited, _ = wait_for_quiet(config.quiet_wait_s)
            waited_total += waited
            run = run_contender(contender, data, config)
            run.update(round=round_no, waited_for_quiet_s=waited,
                       contaminated=run["other_load_cores"] > CONTAMINATED_CORES)
            runs.append(run)
            log(f"round {round_no + 1} {contender:>10} @ {config.items:,}: {run['items_per_s']:7.1f} items/s "
                f"(copy {run['copy_items_per_s'] or 0:7.1f}), wall {run['wall_s']:6.1f} s, {run['faults']} faults "
                f"of {run['requests']} requests, other load {run['other_load_cores']:.2f}")
    report = {
        "bench": "backfill_faults",
        "config": asdict(config),
        "machine": common.machine_info(),
        "started_at": started,
        "runtime_s": time.time() - started,
        "waited_for_quiet_s": waited_total,
        "rounds": config.rounds,
        "runs": runs,
    }
    report["summary"] = summarize(report)
    return report


SUMMARY_FIELDS = ("items_per_s", "copy_items_per_s", "wall_s", "requests_per_item", "faults", "other_load_cores")


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    runs = report["runs"]
    rows = []
    for contender in CONTENDERS:
        mine = [r for r in runs if r["contender"] == contender]
        if mine:
            rows.append({"contender": contender, "items": mine[0]["items"], "repeats": len(mine),
                         "contaminated": sum(r["contaminated"] for r in mine),
                         **{name: summary_stats([r.get(name) for r in mine]) for name in SUMMARY_FIELDS}})
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["contender"]] = r
    per_round = []
    for round_no, pair in sorted(by_round.items()):
        if "faulty" in pair and "fault-free" in pair and pair["fault-free"]["items_per_s"]:
            copy_free, copy_faulty = pair["fault-free"]["copy_items_per_s"], pair["faulty"]["copy_items_per_s"]
            per_round.append({
                "round": round_no,
                "ratio": pair["faulty"]["items_per_s"] / pair["fault-free"]["items_per_s"],
                "copy_ratio": copy_faulty / copy_free if copy_free and copy_faulty else None,
            })
    ratios = {"faulty/fault-free items/s": summary_stats([p["ratio"] for p in per_round]),
              "faulty/fault-free copy items/s": summary_stats([p["copy_ratio"] for p in per_round])}
    return {"rows": rows, "per_round": per_round, "ratios": ratios, "verdicts": verdicts(ratios, report)}


def verdicts(ratios: dict[str, Any], report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's target against the median of the per-round ratios; a missing number fails."""
    ratio = ratios["faulty/fault-free items/s"]
    share = report["config"]["share"]
    return [{
        "target": (f"backfill with {share:.0%} of its requests throttled or 5xx keeps >= {TARGET_RATIO}x its "
                   "fault-free items/s"),
        "measured": (f"{ratio['median']:.2f}x (median of {ratio['n']} round(s), {ratio['min']:.2f}-"
                     f"{ratio['max']:.2f}x)") if ratio else "not measured",
        "pass": bool(ratio) and ratio["median"] >= TARGET_RATIO,
    }]


# =====================================================================================
# Rendering
# =====================================================================================


def render_markdown(report: dict[str, Any]) -> str:
    summary, cfg = report["summary"], report["config"]
    accounts, repos = split(cfg["items"])
    workload = (f"a live workload of {cfg['workload_rate']:g} application writes/s on the legacy tables"
                if cfg["workload_rate"] else "no live workload")
    lines = [
        "# Backfill under faults (DynamoDB Local)",
        "",
        (f"{cfg['items']:,} source items ({accounts:,} accounts, {repos:,} repositories), {cfg['segments']} "
         f"segments, 1 worker process, {cfg.get('write_mode', 'put')} mode, {workload}; faulty = {cfg['share']:.0%} "
         "of the backfill's "
         f"requests answered by the fault proxy ({THROTTLE_SHARE:.0%} ThrottlingException, the rest "
         "InternalServerError, half of those after applying). Each run on a fresh engine, the same seeded data; "
         f"{report['rounds']} round(s), alternating order; {report['machine']['cpus']} CPUs, "
         f"{report['machine']['engine']}. Runtime {report['runtime_s']:.0f} s (of which "
         f"{report['waited_for_quiet_s']:.0f} s waiting for other programs to go idle). Cells: median (min-max). "
         "Method: the docstring of bench/backfill_faults_bench.py."),
        "",
        "| contender | items/s | copy items/s | wall s | requests/item | faults injected | other load |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        dirty = DAGGER if row["contaminated"] else ""
        lines.append(f"| {row['contender']}{dirty} | {cell(row['items_per_s'], 1)} | "
                     f"{cell(row['copy_items_per_s'], 1)} | {cell(row['wall_s'], 1)} | "
                     f"{cell(row['requests_per_item'], 2)} | {cell(row['faults'])} | "
                     f"{cell(row['other_load_cores'], 2)} |")
    dirty_runs = [r for r in report["runs"] if r["contaminated"]]
    if dirty_runs:
        lines += ["", (f"`{DAGGER}` {len(dirty_runs)} of {len(report['runs'])} runs shared the machine with other "
                       f"programs (other load > {CONTAMINATED_CORES} cores): their absolute numbers are pessimistic.")]
    lines += ["", "## Per round", "", "| round | fault-free items/s | faulty items/s | ratio | copy ratio |",
              "|---|---|---|---|---|"]
    by_round = {p["round"]: p for p in summary["per_round"]}
    for round_no in sorted({r["round"] for r in report["runs"]}):
        pair = {r["contender"]: r for r in report["runs"] if r["round"] == round_no}
        ratio = by_round.get(round_no)
        free, faulty = pair.get("fault-free"), pair.get("faulty")
        lines.append(
            f"| {round_no + 1} | {free['items_per_s']:.1f} | " if free else f"| {round_no + 1} | - | "
        )
        lines[-1] += (f"{faulty['items_per_s']:.1f} | " if faulty else "- | ")
        lines[-1] += (f"{ratio['ratio']:.2f}x | " if ratio else "- | ")
        lines[-1] += (f"{ratio['copy_ratio']:.2f}x |" if ratio and ratio["copy_ratio"] else "- |")
    lines += ["", "## Ratios (within a round, then the median)", "", "| ratio | value |", "|---|---|"]
    for name, stat in summary["ratios"].items():
        lines.append(f"| {name} | {cell(stat, 2)} |")
    faulty_runs = [r for r in report["runs"] if r["contender"] == "faulty"]
    if faulty_runs:
        kinds: dict[str, int] = {}
        for run in faulty_runs:
            for key, count in run["injected"].items():
                kind = key.split(":", 1)[0]
                kinds[kind] = kinds.get(kind, 0) + count
        lines += ["", "Faults injected over all faulty runs: "
                  + ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items())) + "."]
    lines += ["", ("`copy items/s` leaves out the fixed waits of a run (the stale-writer fence before the first "
                   "read and the wait before the final tombstone sweep), the same for both contenders.")]
    lines += ["", "## Target (issue 14)", "", *common.verdict_lines(summary["verdicts"])]
    return "\n".join(lines) + "\n"


def quick_config() -> BenchConfig:
    return BenchConfig(items=1_000, rounds=2, quiet_wait_s=3.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.backfill_faults_bench", description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = BenchConfig()
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 items, 2 rounds")
    parser.add_argument("--items", type=int, default=None, help=f"source items seeded (default {defaults.items})")
    parser.add_argument("--rounds", type=int, default=None, help=f"rounds, each contender once (default "
                        f"{defaults.rounds})")
    parser.add_argument("--share", type=float, default=defaults.share,
                        help="share of the backfill's requests answered with a fault (default 0.03)")
    parser.add_argument("--segments", type=int, default=defaults.segments, help="scan segments per table")
    parser.add_argument("--write-mode", default=defaults.write_mode, help=f"backfill write mode (default {DEFAULT_MODE}, the CLI's default)")
    parser.add_argument("--workload-rate", type=float, default=defaults.workload_rate,
                        help="application writes/s during each backfill (0: none)")
    parser.add_argument("--quiet-wait-s", type=float, default=None,
                        help="before each run, wait up to this long for other programs to go idle (0: never)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    config = quick_config() if args.quick else BenchConfig()
    if args.items is not None:
        if args.items < 10:
            parser.error("--items: at least 10")
        config.items = args.items
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error("--rounds: at least 1")
        config.rounds = args.rounds
    if not 0 < args.share < 1:
        parser.error("--share: between 0 and 1")
    config.share, config.segments, config.workload_rate = args.share, args.segments, args.workload_rate
    config.write_mode = args.write_mode
    if args.quiet_wait_s is not None:
        config.quiet_wait_s = args.quiet_wait_s
    report = run_bench(config)
    stem = "backfill_faults" + ("-quick" if args.quick else "")
    return common.publish(report, args.out_dir, stem, render_markdown)


if __name__ == "__main__":
    common.script_main(main)
