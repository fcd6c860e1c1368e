"""`bench/run`: every benchmark side by side, one report (bench/RESULTS.md).

Each benchmark module (`bench/<name>_bench.py`) measures its component and
its baselines in the same run and writes `bench/out/<name>.json` (raw runs
plus ``summary.verdicts``: target, measured, pass) and `bench/out/<name>.md`
(its tables). This driver runs them one after the other, never two at once
(they share 2 cores), each in its own process so one failing benchmark does
not stop the others, and then writes `bench/RESULTS.md`:

* the machine, the date, the exact commands and how long each took;
* one table of every target with its measured value and PASS/FAIL;
* each benchmark's own tables, verbatim, and its plot where a picture reads
  better (`bench/plots.py`, into bench/plots/);
* the two profiles, when their files are in bench/out (`PROFILES`): where
  the client's CPU goes on each hot path, and where the engine's goes.

Extra runs of a benchmark with other parameters are reported too when kept
as bench/out/<name>-at-<what>.{json,md} (the cutover at other rates).
``--quick`` runs every benchmark's smoke mode (minutes instead of an hour);
the report says which mode produced it. ``--only`` picks benchmarks;
``--report-only`` rebuilds RESULTS.md from the existing result files. The
README quotes figures from RESULTS.md only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess  # nosec B404 - runs our own benchmark modules with sys.executable, no shell
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import plots

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
RESULTS = ROOT / "bench" / "RESULTS.md"
PLOTS_DIR = ROOT / "bench" / "plots"

# name -> (full-run arguments, quick-run arguments, what it answers)
BENCHMARKS: dict[str, tuple[list[str], list[str], str]] = {
    "mirror": ([], ["--quick"], "forward mirror: legacy writes/s mirrored and lag, vs a naive handler"),
    "backfill": ([], ["--quick"], "backfill: items/s, capacity units and client CPU vs the users' naive script, "
                 "each contender on a fresh engine; peak RSS against table size"),
    "backfill_faults": ([], ["--quick"], "backfill under 3% throttling and 5xx vs fault-free"),
    "engine_writes": ([], ["--quick"], "the engine's CPU per target item by write method: the floor under the "
                      "backfill's items/s on DynamoDB Local"),
    "verify": ([], ["--quick"], "verifier: items/s and peak RSS vs a naive in-memory verifier"),
    "cutover": ([], ["--quick"], "cutover: freeze window and delayed writes over cutovers and rollbacks"),
    "artifact": ([], ["--repeats", "3"], "Lambda artifact: size per function, cold import time per handler"),
}


# Profiles (no targets; run apart, slow under their samplers): reported verbatim when present in bench/out.
PROFILES: dict[str, tuple[str, str]] = {
    "profile": (".venv/bin/python -m bench.profile_hot_paths --items 2000",
                "where the client CPU of each hot path goes (cProfile of the backfill, verify and the mirror)"),
    "engine-profile": (".venv/bin/python -m bench.engine_profile --items 5000",
                       "where DynamoDB Local's own CPU goes during a backfill (jstack samples), against the naive "
                       "script"),
}

# benchmark -> result stems of its separate runs (reported after its main result, when present)
SERIES: dict[str, tuple[str, ...]] = {"backfill": ("backfill-rss",)}


def result_stems(name: str, quick: bool) -> list[str]:
    """The result files to report for a benchmark: the mode just run first, then any other present."""
    preferred = [f"{name}-quick", name] if quick else [name, f"{name}-quick"]
    present = [stem for stem in preferred if (OUT / f"{stem}.json").exists() or (OUT / f"{stem}.md").exists()]
    # Extra runs kept beside the main one, e.g. cutover-at-200 (`--rate 200 --out-dir`, renamed).
    present += sorted(path.stem for path in OUT.glob(f"{name}-at-*.json"))
    # Series run apart from the main one: the backfill's peak RSS at 100,000 and 1,000,000 items (`--rss-only`).
    for series in SERIES.get(name, ()):
        stems = [f"{series}-quick", series] if quick else [series, f"{series}-quick"]
        present += [stem for stem in stems if (OUT / f"{stem}.json").exists()][:1]
    return present or [preferred[0]]


def run_one(name: str, quick: bool) -> dict[str, Any]:
    full, smoke, _ = BENCHMARKS[name]
    command = [sys.executable, "-m", f"bench.{name}_bench", *(smoke if quick else full)]
    started = time.monotonic()
    completed = subprocess.run(command, cwd=ROOT, check=False)  # nosec B603 - fixed argv, no shell
    return {
        "name": name,
        "command": " ".join(["python", "-m", f"bench.{name}_bench", *(smoke if quick else full)]),
        "exit_code": completed.returncode,
        "seconds": round(time.monotonic() - started, 1),
    }


def load(stem: str) -> tuple[dict[str, Any] | None, str | None]:
    data = None
    json_path, md_path = OUT / f"{stem}.json", OUT / f"{stem}.md"
    if json_path.exists():
        data = json.loads(json_path.read_text())
    table = md_path.read_text() if md_path.exists() else None
    return data, table


def verdict_rows(name: str, data: dict[str, Any] | None) -> list[str]:
    if not data:
        return [f"| {name} | (no result file) | | |"]
    summary = data.get("summary") or {}
    verdicts = summary.get("verdicts") or ([summary["verdict"]] if summary.get("verdict") else [])
    if not verdicts and "target_ms" in data:  # the artifact benchmark: one target per function
        verdicts = [
            {
                "target": f"{row['function']} cold import < {data['target_ms']:g} ms",
                "measured": f"{row['median_ms']:.0f} ms wall, {row['median_cpu_ms']:.0f} ms CPU (median)",
                "pass": row["median_ms"] < data["target_ms"],
            }
            for row in data.get("rows", [])
        ]
    if not verdicts:
        return [f"| {name} | (no targets recorded) | | |"]
    rows = []
    for v in verdicts:
        state = "PASS" if v.get("pass") else "FAIL"
        if v.get("informational"):
            state += " (informational)"
        rows.append(f"| {name} | {v.get('target', '')} | {v.get('measured', '')} | {state} |")
    return rows


def render(names: list[str], runs: list[dict[str, Any]], quick: bool) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `bench/run{' --quick' if quick else ''}` on {now}. "
        f"Mode: **{'quick (smoke sizes)' if quick else 'full'}**. Every figure below was measured on this "
        "machine, with each benchmark's baselines in the same run; cells are median (min-max) over rounds "
        "unless a table says otherwise. The machine is shared and noisy: read ratios, not absolutes.",
        "",
        "## Machine",
        "",
        f"- {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}",
    ]
    engines = set()
    for name in names:
        for stem in result_stems(name, quick):
            data, _ = load(stem)
            if data and (data.get("machine") or {}).get("engine"):
                engines.add(data["machine"]["engine"])
    for engine in sorted(engines):
        lines.append(f"- {engine}")
    lines += ["", "## Commands", ""]
    if runs:
        lines += ["| benchmark | command | exit code | seconds |", "|---|---|---|---|"]
        lines += [f"| {r['name']} | `{r['command']}` | {r['exit_code']} | {r['seconds']} |" for r in runs]
    else:
        lines.append("(report rebuilt from existing result files; see each section for when it ran)")
    lines += ["", "## Targets", "", "| benchmark | target | measured | result |", "|---|---|---|---|"]
    for name in names:
        for stem in result_stems(name, quick):
            lines += verdict_rows(stem, load(stem)[0])
    for name in names:
        for stem in result_stems(name, quick):
            data, table = load(stem)
            lines += ["", f"## {stem}: {BENCHMARKS[name][2]}", ""]
            if data and data.get("started_at"):
                started = data["started_at"]
                if isinstance(started, int | float):
                    started = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M UTC")
                lines.append(f"Run started {started}; raw data: `bench/out/{stem}.json`.")
                lines.append("")
            body = table or f"(no result: the benchmark did not produce bench/out/{stem}.md)"
            # demote the benchmark's own headings one level under this section
            lines += [("##" + line) if line.startswith("#") else line for line in body.strip().splitlines()]
            drawn = plots.draw(name, stem, data, PLOTS_DIR)
            if drawn:
                path, caption = drawn
                lines += ["", f"![{caption}]({path.relative_to(RESULTS.parent).as_posix()})"]
    for stem, (command, what) in PROFILES.items():
        profile = OUT / f"{stem}.md"
        if profile.exists():
            lines += ["", f"## {stem}: {what}", "", f"Not a target: run apart with `{command}`.", ""]
            lines += [("##" + line) if line.startswith("#") else line
                      for line in profile.read_text().strip().splitlines()[1:]]  # its title is this section's
    chaos = OUT / "chaos.md"
    if chaos.exists():
        lines += ["", "## Chaos scenarios (from the last run of `tests/chaos`, part of `make test`)", ""]
        lines += [line for line in chaos.read_text().strip().splitlines() if not line.startswith("#")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark's smoke mode")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--report-only", action="store_true", help="rebuild RESULTS.md from existing results")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    runs = [] if args.report_only else [run_one(name, args.quick) for name in names]
    RESULTS.write_text(render(names, runs, args.quick))
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 1 if any(r["exit_code"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
