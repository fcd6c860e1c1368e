"""Cutover benchmark on DynamoDB Local: the freeze window and the writes it delays.

Run it from the project root::

    .venv/bin/python -m bench.cutover_bench            # 5 cutovers + 5 rollbacks (about 2-4 minutes)
    .venv/bin/python -m bench.cutover_bench --quick    # smoke run: 1 cutover + 1 rollback
    .venv/bin/python -m bench.cutover_bench --help

Method
======

One FRESH DynamoDB Local (started on a free port, stopped afterwards; see
`bench.common.fresh_engine`). The legacy tables, sc-main and the
control table are created; both mirror consumers run in follow mode (the
local stream runner, each gated on the mode flag); the simulated application
(`shared.sim.app_sim.AppSimulator`) writes at ``--rate`` operations/s through
`shared.cutover.router.Router` (its cached flag, `mode_cache_age_s`), in `old` on the
legacy tables and in `new` in one transaction on sc-main, retrying
`WritesFrozen` every 50 ms. After ``--phase`` seconds of writes, a cutover
runs (`shared.cutover.operations.run_switch`: gate, freeze, cache wait, exact drains of
both consumers, flip), then after another phase a rollback, ``--cycles``
times. After every switch the application pauses and the authoritative side
is compared with the expected state built from every acknowledged write
(`shared.sim.app_sim.diff_authoritative`); a failed comparison is reported.

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

* ``rate``: unless ``--rate`` is given, the bench first finds the highest
  application rate the mirrors sustain on this machine (calibration, both
  consumers running): it offers each of ``--calibrate-rates`` in turn for
  ``--calibrate-s`` seconds, in mode ``old`` (the forward mirror works),
  then after an unmeasured cutover at the lowest rate in mode ``new`` (the
  reverse mirror works, rates up to the forward one's), then rolls back. A
  rate is sustained when the application got at least 90% of its writes
  through and the working mirror, at the end of the step and with the
  application still writing, acknowledged every record then in its streams
  within ``--sustain-lag-s`` (`shared.streams.drain.wait_caught_up`, the cutover
  gate's own lag check; not `shared.streams.drain.lag_s`, which reads stream
  timestamps that DynamoDB Local rounds down to the minute); the first rate
  that fails ends a direction's search. The switches then run at the lower
  of the two directions' highest sustained rates.

Target (issue 14): median freeze window <= the mode cache age + 1 s (the
cache age is `mode_cache_age_s`, the router's cache period; this bench sets
it with ``--cache-age``, default 1 s, so the target is 2 s), at the highest
rate the mirrors sustain (the calibrated one). Results: bench/out/cutover.json
and bench/out/cutover.md (``--quick``: cutover-quick.{json,md}).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import common
from bench.common import (
    CONTAMINATED_CORES,
    DAGGER,
    OUT_DIR,
    cell,
    fresh_engine,
    machine_busy_s,
    summary_stats,
    wait_for_quiet,
)
from shared.core.settings import Settings, load_settings
from shared.cutover.protocol import CUTOVER, ROLLBACK
from shared.sim.app_sim import SwitchRig
from shared.streams import drain

FREEZE_SLACK_S = 1.0  # the target: median freeze window <= mode cache age + 1 s
SUSTAINED_SHARE = 0.9  # a calibration step is sustained if the application got 90% of its writes through ...


@dataclass
class BenchConfig:
    cycles: int = 5
    rate: float | None = None  # None: the highest rate the mirrors sustain (calibrated first)
    phase_s: float = 3.0
    cache_age_s: float = 1.0
    grace_s: float = 0.3
    timeout_s: float = 30.0
    quiet_wait_s: float = 30.0
    calibrate_rates: list[float] = field(default_factory=lambda: [25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0])
    calibrate_s: float = 8.0
    sustain_lag_s: float = 2.0  # ... and the forward mirror's lag at the end of the step was at most this


def target_freeze_s(cache_age_s: float) -> float:
    return cache_age_s + FREEZE_SLACK_S


def _step(rig: SwitchRig, settings: Settings, config: BenchConfig, rate: float, direction: str, log: Any) -> dict[str, Any]:
    """Offer `rate` for `config.calibrate_s`, then see whether the `direction` mirror keeps up with its streams."""
    _set_rate(rig, rate)
    acked, at = rig.app.stats.acknowledged, time.monotonic()
    time.sleep(config.calibrate_s)
    achieved = (rig.app.stats.acknowledged - acked) / (time.monotonic() - at)
    checked = time.monotonic()
    caught_up = drain.wait_caught_up(settings, direction, config.sustain_lag_s, poll_s=0.1)
    lag = time.monotonic() - checked
    caught_up = caught_up and lag <= config.sustain_lag_s  # its last look may end past the bound
    sustained = achieved >= SUSTAINED_SHARE * rate and caught_up
    log(f"calibration, {direction} mirror, at {rate:g} ops/s: {achieved:.1f} ops/s acknowledged, caught up "
        f"{f'in {lag:.2f}s' if caught_up else f'NOT within {config.sustain_lag_s:g}s'}: "
        f"{'sustained' if sustained else 'NOT sustained'}")
    return {"direction": direction, "rate": rate, "achieved_ops_per_s": round(achieved, 1),
            "caught_up_s": round(lag, 2), "caught_up": caught_up, "sustained": sustained}


def _set_rate(rig: SwitchRig, rate: float) -> None:
    """Change the application's rate: pause (in-flight writes finish), let its generator see the pause, resume."""
    rig.app.pause()
    time.sleep(0.3)  # the generator resets its schedule only once it has seen the pause
    rig.app.rate_per_s = rate
    rig.app.resume()


def calibrate(rig: SwitchRig, settings: Settings, config: BenchConfig, log: Any) -> tuple[float, list[dict[str, Any]]]:
    """The highest of `config.calibrate_rates` both mirrors keep up with: the forward one in mode old, then
    (after a cutover at the lowest rate) the reverse one in mode new, at most the forward one's; then back to old."""
    steps: list[dict[str, Any]] = []
    rates = sorted(config.calibrate_rates)

    def highest(direction: str, candidates: list[float]) -> float | None:
        best = None
        for rate in candidates:
            step = _step(rig, settings, config, rate, direction, log)
            steps.append(step)
            if not step["sustained"]:
                break
            best = rate
        return best

    forward = highest("forward", rates)
    reverse = None
    _set_rate(rig, rates[0])
    drain.wait_caught_up(settings, "forward", 120.0)
    went = rig.switch(CUTOVER)  # not measured: it only brings the application to sc-main
    if went.outcome == "switched":
        reverse = highest("reverse", [r for r in rates if forward is None or r <= forward])
        _set_rate(rig, rates[0])
        drain.wait_caught_up(settings, "reverse", 120.0)
        back = rig.switch(ROLLBACK)
        if back.outcome != "switched":
            raise RuntimeError(f"the calibration's rollback did not complete: {back.outcome} ({back.error})")
    else:
        log(f"calibration: the cutover to measure the reverse mirror did not complete ({went.outcome}); "
            "the forward mirror's rate is used alone")
        reverse = forward
    chosen = min((r for r in (forward, reverse) if r is not None), default=None)
    rate = chosen if chosen is not None else rates[0]
    drain.wait_caught_up(settings, "forward", 120.0)
    _set_rate(rig, rate)
    return rate, steps


def run_bench(config: BenchConfig, *, log: Any = print) -> dict[str, Any]:
    started = time.monotonic()
    waited, _ = wait_for_quiet(config.quiet_wait_s)
    runs: list[dict[str, Any]] = []
    calibration: list[dict[str, Any]] = []
    with fresh_engine() as (_info, base):
        settings = load_settings(endpoint_url=base.endpoint_url, mode_cache_age_s=config.cache_age_s,
                                 cutover_inflight_grace_s=config.grace_s, cutover_timeout_s=config.timeout_s,
                                 cutover_max_lag_s=60.0)
        first_rate = config.rate if config.rate is not None else config.calibrate_rates[0]
        with SwitchRig(settings, rate_per_s=first_rate, seed=3, audit=False) as rig:
            if config.rate is None:
                rate, calibration = calibrate(rig, settings, config, log)
                config = dataclasses.replace(config, rate=rate)
                log(f"switching at {rate:g} ops/s, the highest rate the mirrors sustained")
            time.sleep(config.phase_s)
            for cycle in range(config.cycles):
                for which in (CUTOVER, ROLLBACK):
                    own_before, machine_before, at = time.process_time(), machine_busy_s(), time.monotonic()
                    acked_before = rig.app.stats.acknowledged
                    outcome = rig.switch(which)
                    elapsed = time.monotonic() - at
                    other = max(0.0, (machine_busy_s() - machine_before) - (time.process_time() - own_before))
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
        "machine": {**common.machine_info(), "cpus": _cpus()},
        "calibration": calibration,
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


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    runs = [r for r in report["runs"] if r["outcome"] == "switched"]  # aborted/refused ones are counted apart
    by_op = {
        op: {
            "freeze_window_s": summary_stats([r["freeze_window_s"] for r in runs if r["op"] == op]),
            "delayed_writes": summary_stats([r["delayed_writes"] for r in runs if r["op"] == op]),
            "median_delay_s": summary_stats([r["median_delay_s"] for r in runs if r["op"] == op]),
        }
        for op in ("cutover", "rollback")
    }
    windows = summary_stats([r["freeze_window_s"] for r in runs])
    delayed = summary_stats([r["delayed_writes"] for r in runs])
    outcomes = {name: sum(1 for r in report["runs"] if r["outcome"] == name) for name in ("switched", "aborted", "refused")}
    consistent = all(r["consistent"] and r["outcome"] == "switched" for r in report["runs"])
    cfg = report["config"]
    target = target_freeze_s(cfg["cache_age_s"])
    calibration = report.get("calibration") or []
    how = (", the highest rate the mirrors sustain here (calibrated: "
           + ", ".join(f"{s['direction']} {s['rate']:g} {'ok' if s['sustained'] else 'no'}" for s in calibration)
           + ")"
           if calibration else " (given with --rate, not calibrated)")
    verdict = {
        "target": f"median freeze window <= mode cache age + {FREEZE_SLACK_S:g} s = {target:g} s (cache age "
                  f"{cfg['cache_age_s']:g} s, in-flight grace {cfg['grace_s']:g} s) at {cfg['rate']:g} app writes/s "
                  f"offered{how}",
        "pass": bool(windows) and windows["median"] <= target and consistent,
        "measured": (f"{common.cell(windows, 2)} s over {windows['n']} switches" if windows else "no switch")
        + ("" if consistent else f"; NOT every switch completed ({summary_outcomes(report)})"),
    }
    return {"freeze_window_s": windows, "delayed_writes": delayed, "by_op": by_op, "consistent": consistent,
            "outcomes": outcomes, "verdict": verdict, "verdicts": [verdict]}


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
    ]
    if report.get("calibration"):
        lines += [("Calibration (both mirrors running; forward in mode old, reverse in mode new): the switches run "
                   "at the lower of the two highest rates sustained."), "",
                  ("| mirror | offered ops/s | acknowledged ops/s | caught up with its streams in s "
                   f"(at most {cfg['sustain_lag_s']:g}) | sustained |"), "|---|---|---|---|---|"]
        lines += [f"| {s['direction']} | {s['rate']:g} | {s['achieved_ops_per_s']:g} | "
                  f"{s['caught_up_s']:.2f}{'' if s['caught_up'] else ' (not caught up)'} | "
                  f"{'yes' if s['sustained'] else 'NO'} |" for s in report["calibration"]]
        lines.append("")
    lines += [
        "| switch | freeze window s | writes delayed | median delay per delayed write s |",
        "|---|---|---|---|",
    ]
    for op, row in summary["by_op"].items():
        lines.append(f"| {op} | {cell(row['freeze_window_s'], 2)} | {cell(row['delayed_writes'])} | "
                     f"{cell(row['median_delay_s'], 2)} |")
    lines.append(f"| all | {cell(summary['freeze_window_s'], 2)} | {cell(summary['delayed_writes'])} | |")
    lines += ["", f"Outcomes: {summary_outcomes(report)} (freeze windows and delays above: completed switches only; "
              "`aborted` = froze, hit the timeout and went back by itself; `refused` = the gate said no, no freeze)."]
    lines += [
        "",
        ("| # | switch | outcome | freeze s | cache wait s | drains s (forward, reverse) | delayed | consistent "
         "| app ops/s | other load |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for index, run in enumerate(report["runs"], 1):
        timings = run["timings"] or {}
        cache = timings.get("cache_waited")
        window = run["freeze_window_s"]
        drains = window - cache if window is not None and cache is not None else None
        steps = [timings.get(f"drained_{d}") for d in ("forward", "reverse")]
        split = ""
        if cache is not None and all(t is not None for t in steps) and run["op"] == "cutover":
            split = f" ({steps[0] - cache:.2f}, {steps[1] - steps[0]:.2f})"
        elif cache is not None and all(t is not None for t in steps):  # a rollback drains reverse first
            split = f" ({steps[0] - steps[1]:.2f}, {steps[1] - cache:.2f})"
        mark = DAGGER if run["contaminated"] else ""
        lines.append(
            f"| {index} | {run['op']} | {run['outcome']} | {_num(window)} | {_num(cache)} | {_num(drains)}{split} | "
            f"{run['delayed_writes']} | {'yes' if run['consistent'] else 'NO'} | "
            f"{run.get('achieved_ops_per_s', '-')} | {run['other_load_cores']:.2f}{mark} |"
        )
    if any(r["contaminated"] for r in report["runs"]):
        lines += ["", f"`{DAGGER}` other programs used more than {CONTAMINATED_CORES} cores during that switch."]
    verdict = summary["verdict"]
    lines += ["", "## Target (issue 14)", "",
              f"- **{'PASS' if verdict['pass'] else 'FAIL'}** {verdict['target']}: {verdict['measured']}"]
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_outputs(report: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    return common.write_outputs(report, out_dir, stem, render_markdown)


def quick_config() -> BenchConfig:
    return BenchConfig(cycles=1, phase_s=2.0, quiet_wait_s=3.0, calibrate_rates=[25.0, 50.0, 100.0], calibrate_s=5.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cutover_bench", description=__doc__.split("\n\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = BenchConfig()
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 cutover + 1 rollback")
    parser.add_argument("--cycles", type=int, default=defaults.cycles, help="cutover+rollback pairs")
    parser.add_argument("--rate", type=float, default=defaults.rate,
                        help="application operations per second (default: the highest the mirrors sustain, calibrated)")
    parser.add_argument("--calibrate-rates", type=lambda t: [float(x) for x in t.split(",")],
                        default=defaults.calibrate_rates, help="rates tried in turn by the calibration")
    parser.add_argument("--calibrate-s", type=float, default=defaults.calibrate_s, help="seconds per calibration step")
    parser.add_argument("--phase", type=float, default=defaults.phase_s, help="seconds of writes between switches")
    parser.add_argument("--cache-age", type=float, default=defaults.cache_age_s, help="mode_cache_age_s")
    parser.add_argument("--grace", type=float, default=defaults.grace_s, help="cutover_inflight_grace_s")
    parser.add_argument("--quiet-wait-s", type=float, default=defaults.quiet_wait_s,
                        help="first wait up to this long for other programs to go idle (0: never)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    config = quick_config() if args.quick else BenchConfig(
        cycles=args.cycles, rate=args.rate, phase_s=args.phase, cache_age_s=args.cache_age, grace_s=args.grace,
        quiet_wait_s=args.quiet_wait_s, calibrate_rates=args.calibrate_rates, calibrate_s=args.calibrate_s,
    )
    report = run_bench(config)
    common.publish(report, args.out_dir, "cutover-quick" if args.quick else "cutover", render_markdown)
    return 0 if report["summary"]["consistent"] else 1


if __name__ == "__main__":
    common.script_main(main)
