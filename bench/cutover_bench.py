"""Cutover benchmark on DynamoDB Local: the freeze window and the writes it delays.

Run it from the project root::

    .venv/bin/python -m bench.cutover_bench            # 5 cutovers + 5 rollbacks (about 2-4 minutes)
    .venv/bin/python -m bench.cutover_bench --quick    # smoke run: 1 cutover + 1 rollback
    .venv/bin/python bench/cutover_bench.py --help

Method
======

One FRESH DynamoDB Local (started on a free port, stopped afterwards; see
`bench.mirror_bench.fresh_engine`). The legacy tables, sc-main and the
control table are created; both mirror consumers run in follow mode (the
local stream runner, each gated on the mode flag); the simulated application
(`shared.app_sim.AppSimulator`) writes at ``--rate`` operations/s through
`shared.router.Router` (its cached flag, `mode_cache_age_s`), in `old` on the
legacy tables and in `new` in one transaction on sc-main, retrying
`WritesFrozen` every 50 ms. After ``--phase`` seconds of writes, a cutover
runs (`shared.cutover.run_switch`: gate, freeze, cache wait, exact drains of
both consumers, flip), then after another phase a rollback, ``--cycles``
times. After every switch the application pauses and the authoritative side
is compared with the expected state built from every acknowledged write
(`shared.app_sim.diff_authoritative`); a failed comparison is reported.

* ``freeze window``: seconds from the write of ``freeze`` until the write of
  ``new`` (``old``), as the protocol measures it (`freeze_window_s` in the
  mode item). It is at least ``mode_cache_age_s + cutover_inflight_grace_s``
  (here ``--cache-age`` and ``--grace``): the wait that makes sure no
  application instance still writes the table being left. The rest is the
  two exact drains (each a poll of every shard's end every 0.1 s).
* ``outcome``: ``switched``; ``aborted`` (it froze, the drains did not finish
  within the timeout, and it went back by itself: the protocol working, but
  the mirrors could not keep up); ``refused`` (the gate said no, e.g. a mirror
  lagging more than ``cutover_max_lag_s``; nothing froze). Medians are over
  completed switches only.
* ``delayed writes``: application operations that met ``freeze`` (and were
  retried every 50 ms) or waited in their worker's queue behind one that did,
  during the switch; all were acknowledged afterwards, none lost (see the
  comparison). The delay of each: from meeting the freeze (or from arrival)
  to its acknowledgement; it includes up to one cache age after the flip,
  until the worker's cached flag shows the new mode.
* ``other load``: CPU (cores) used on the machine by other programs during
  the switch; above 0.25 the row is flagged ``†`` (the 2 cores were shared).

Target (issue): median freeze window ≤ 3 s. Results: bench/out/cutover.json
and bench/out/cutover.md (``--quick``: cutover-quick.{json,md}).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/cutover_bench.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.mirror_bench import (
    CONTAMINATED_CORES,
    DAGGER,
    OUT_DIR,
    _cell,
    _machine_busy_s,
    _stats,
    fresh_engine,
    wait_for_quiet,
)
from shared.app_sim import SwitchRig
from shared.cutover import CUTOVER, ROLLBACK
from shared.settings import load_settings

TARGET_FREEZE_S = 3.0


@dataclass
class BenchConfig:
    cycles: int = 5
    rate: float = 200.0
    phase_s: float = 3.0
    cache_age_s: float = 1.0
    grace_s: float = 0.3
    timeout_s: float = 30.0
    quiet_wait_s: float = 30.0


def run_bench(config: BenchConfig, *, log: Any = print) -> dict[str, Any]:
    started = time.monotonic()
    waited, _ = wait_for_quiet(config.quiet_wait_s)
    runs: list[dict[str, Any]] = []
    with fresh_engine() as (info, base):
        settings = load_settings(endpoint_url=base.endpoint_url, mode_cache_age_s=config.cache_age_s,
                                 cutover_inflight_grace_s=config.grace_s, cutover_timeout_s=config.timeout_s,
                                 cutover_max_lag_s=60.0)
        with SwitchRig(settings, rate_per_s=config.rate, seed=3, audit=False) as rig:
            time.sleep(config.phase_s)
            for cycle in range(config.cycles):
                for which in (CUTOVER, ROLLBACK):
                    own_before, machine_before, at = time.process_time(), _machine_busy_s(), time.monotonic()
                    acked_before = rig.app.stats.acknowledged
                    outcome = rig.switch(which)
                    elapsed = time.monotonic() - at
                    other = max(0.0, (_machine_busy_s() - machine_before) - (time.process_time() - own_before))
                    run = {
                        "cycle": cycle,
                        "op": outcome.op,
                        "outcome": outcome.outcome,
                        "mode": str(outcome.mode),
                        "freeze_window_s": outcome.freeze_window_s,
                        "timings": outcome.timings,
                        "delayed_writes": outcome.delayed_writes,
                        "median_delay_s": statistics.median(outcome.delays_s) if outcome.delays_s else None,
                        "consistent": bool(outcome.diff and outcome.diff.ok),
                        "diff": outcome.diff.summary() if outcome.diff else None,
                        "error": outcome.error,
                        "other_load_cores": round(other / elapsed, 2) if elapsed > 0 else 0.0,
                        "contaminated": other / elapsed > CONTAMINATED_CORES if elapsed > 0 else False,
                    }
                    runs.append(run)
                    log(f"{outcome.op} {cycle + 1}/{config.cycles}: {outcome.outcome}, freeze window "
                        f"{outcome.freeze_window_s}s, {outcome.delayed_writes} writes delayed, consistent="
                        f"{run['consistent']}")
                    phase_started = time.monotonic()
                    time.sleep(config.phase_s)
                    run["achieved_ops_per_s"] = round(
                        (rig.app.stats.acknowledged - acked_before) / (time.monotonic() - phase_started + elapsed), 1
                    )
            app = rig.app.stats
            totals = {"acknowledged": app.acknowledged, "by_mode": dict(app.acknowledged_by_mode),
                      "rejected": app.rejected, "errors": app.errors, "delayed": app.delayed}
    report = {
        "config": asdict(config),
        "machine": {"cpus": _cpus(), "python": platform.python_version(), "engine": info.kind},
        "runs": runs,
        "application": totals,
        "runtime_s": round(time.monotonic() - started, 1),
        "waited_for_quiet_s": round(waited, 1),
    }
    report["summary"] = summarize(report)
    return report


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


TARGET_RATE = 200.0  # the workload, writes/s


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    runs = [r for r in report["runs"] if r["outcome"] == "switched"]  # aborted/refused ones are counted apart
    by_op = {
        op: {
            "freeze_window_s": _stats([r["freeze_window_s"] for r in runs if r["op"] == op]),
            "delayed_writes": _stats([r["delayed_writes"] for r in runs if r["op"] == op]),
            "median_delay_s": _stats([r["median_delay_s"] for r in runs if r["op"] == op]),
        }
        for op in ("cutover", "rollback")
    }
    windows = _stats([r["freeze_window_s"] for r in runs])
    delayed = _stats([r["delayed_writes"] for r in runs])
    outcomes = {name: sum(1 for r in report["runs"] if r["outcome"] == name) for name in ("switched", "aborted", "refused")}
    consistent = all(r["consistent"] and r["outcome"] == "switched" for r in report["runs"])
    verdict = {
        "target": f"median freeze window <= {TARGET_FREEZE_S:g} s at {report['config']['rate']:g} app writes/s offered"
        + ("" if report["config"]["rate"] >= TARGET_RATE else f" (the issue asks {TARGET_RATE:g})"),
        "pass": bool(windows) and windows["median"] <= TARGET_FREEZE_S and consistent,
        "measured": (f"{windows['median']:.2f} s over {windows['n']} switches" if windows else "no switch")
        + ("" if consistent else f"; NOT every switch completed ({summary_outcomes(report)})"),
    }
    return {"freeze_window_s": windows, "delayed_writes": delayed, "by_op": by_op, "consistent": consistent,
            "outcomes": outcomes,
            "verdict": verdict}


def summary_outcomes(report: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for run in report["runs"]:
        counts[run["outcome"]] = counts.get(run["outcome"], 0) + 1
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))


def render_markdown(report: dict[str, Any]) -> str:
    cfg, summary = report["config"], report["summary"]
    lines = [
        "# Cutover benchmark (DynamoDB Local)",
        "",
        (f"{cfg['cycles']} cutover(s) + {cfg['cycles']} rollback(s) under an application writing "
         f"{cfg['rate']:.0f} ops/s through the router (mode cache age {cfg['cache_age_s']:g} s + in-flight grace "
         f"{cfg['grace_s']:g} s), {report['machine']['cpus']} CPUs, {report['machine']['engine']}. Runtime "
         f"{report['runtime_s']:.0f} s. Cells: median (min-max)."),
        "",
        "| switch | freeze window s | writes delayed | median delay per delayed write s |",
        "|---|---|---|---|",
    ]
    for op, row in summary["by_op"].items():
        lines.append(f"| {op} | {_cell(row['freeze_window_s'], 2)} | {_cell(row['delayed_writes'])} | "
                     f"{_cell(row['median_delay_s'], 2)} |")
    lines.append(f"| all | {_cell(summary['freeze_window_s'], 2)} | {_cell(summary['delayed_writes'])} | |")
    lines += ["", f"Outcomes: {summary_outcomes(report)} (freeze windows and delays above: completed switches only; "
              "`aborted` = froze, hit the timeout and went back by itself; `refused` = the gate said no, no freeze)."]
    lines += [
        "",
        "| # | switch | outcome | freeze s | cache wait s | drains s | delayed | consistent | app ops/s | other load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for index, run in enumerate(report["runs"], 1):
        timings = run["timings"] or {}
        cache = timings.get("cache_waited")
        window = run["freeze_window_s"]
        drains = window - cache if window is not None and cache is not None else None
        mark = DAGGER if run["contaminated"] else ""
        lines.append(
            f"| {index} | {run['op']} | {run['outcome']} | {_num(window)} | {_num(cache)} | {_num(drains)} | "
            f"{run['delayed_writes']} | {'yes' if run['consistent'] else 'NO'} | "
            f"{run.get('achieved_ops_per_s', '-')} | {run['other_load_cores']:.2f}{mark} |"
        )
    if any(r["contaminated"] for r in report["runs"]):
        lines += ["", f"`{DAGGER}` other programs used more than {CONTAMINATED_CORES} cores during that switch."]
    verdict = summary["verdict"]
    lines += ["", "## Target (issue)", "",
              f"- **{'PASS' if verdict['pass'] else 'FAIL'}** {verdict['target']}: {verdict['measured']}"]
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_outputs(report: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    return common.write_outputs(report, out_dir, stem, render_markdown)


def quick_config() -> BenchConfig:
    return BenchConfig(cycles=1, phase_s=2.0, quiet_wait_s=3.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cutover_bench", description=__doc__.split("\n\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = BenchConfig()
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 cutover + 1 rollback")
    parser.add_argument("--cycles", type=int, default=defaults.cycles, help="cutover+rollback pairs")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="application operations per second")
    parser.add_argument("--phase", type=float, default=defaults.phase_s, help="seconds of writes between switches")
    parser.add_argument("--cache-age", type=float, default=defaults.cache_age_s, help="mode_cache_age_s")
    parser.add_argument("--grace", type=float, default=defaults.grace_s, help="cutover_inflight_grace_s")
    parser.add_argument("--quiet-wait-s", type=float, default=defaults.quiet_wait_s,
                        help="first wait up to this long for other programs to go idle (0: never)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    config = quick_config() if args.quick else BenchConfig(
        cycles=args.cycles, rate=args.rate, phase_s=args.phase, cache_age_s=args.cache_age, grace_s=args.grace,
        quiet_wait_s=args.quiet_wait_s,
    )
    report = run_bench(config)
    common.publish(report, args.out_dir, "cutover-quick" if args.quick else "cutover", render_markdown)
    return 0 if report["summary"]["consistent"] else 1


if __name__ == "__main__":
    common.script_main(__package__, "bench.cutover_bench", main)
