"""Where DynamoDB Local's own CPU goes during a backfill: thread dumps of the engine, sampled.

Run it from the project root (needs the JDK's ``jstack``)::

    .venv/bin/python -m bench.engine_profile                  # 5,000 items, insert and the naive script
    .venv/bin/python -m bench.engine_profile --items 10000 --scenarios insert,put,naive

Why
===

On this machine the engine, not the client, bounds a backfill's items/s: DynamoDB Local (Java, its data in
SQLite) takes most of the 2 cores, and the backfill's default mode costs it about twice the naive script's
engine CPU per item (bench/backfill_bench.py, ``engine CPU ms/item``), a gap that grows as the engine holds
more stream records. bench/engine_writes_bench.py measures the cost of each write method; this one says
where inside the engine it goes, so the gap can be told apart from anything the backfill could change.

Method
======

Each contender (as bench/backfill_bench.py runs it: ``insert``/``put``, ``backfill.run.run_backfill``
with 8 segments; ``naive``, the users' scan / transform / ``batch_writer`` script) runs in this process on
its own FRESH engine, seeded the same way (``shared.sc.seed``, legacy tables with streams). While it runs,
a thread takes ``jstack`` thread dumps of the engine's process back to back (each takes a few hundred ms
and some engine CPU of its own: the contender runs slower, so read shares, not times). In each dump:

* the engine's SQLite queue thread (``SQLiteQueue``): every read and write of the engine's data is a job
  this one thread runs, so its state is where the data work goes. Busy = RUNNABLE in SQLite; its job is
  the innermost ``SQLiteDBAccess`` frame (for example ``getStreamDescription``, ``putRecord``);
* (the naive script runs as its timed run in bench/backfill_bench.py does: without asking for
  ConsumedCapacity, which costs DynamoDB Local a table lookup per written item)
* each request thread serving a request (a ``*Dispatcher.enact`` frame): the operation, and the
  ``SQLiteDBAccess`` call it is in or waiting for, with the engine frame that made it (for example
  ``InsertStatementTranslator.translate -> getTableInfo``).

Output: bench/out/engine-profile.md (and .json): per contender, the samples, the SQLite thread's share
busy and its jobs, and the request threads' top (operation, engine call, caller) triples.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess  # nosec B404  (jstack, a fixed local tool)
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import common
from bench.backfill_bench import CopySpec, _dynashift_copier, _naive_copier, generate_data, prepare_engine
from bench.common import fresh_engine

OUT_DIR = Path(__file__).resolve().parent / "out"
SCENARIOS = ("insert", "put", "naive")
TOP = 12
_DISPATCHER = re.compile(r"dispatchers\.(\w+)Dispatcher\.enact")
_FRAME = re.compile(r"^\s*at ([\w.$<>]+)\(")


def _short(frame: str) -> str:
    """`a.b.c.Class$Inner.method` -> `Class$Inner.method`."""
    parts = frame.split(".")
    return ".".join(parts[-2:])


def classify(dump: str) -> tuple[str | None, list[tuple[str, str, str]]]:
    """One thread dump: the SQLite thread's job (None: idle) and, per request thread, (operation, call, caller)."""
    sqlite_job: str | None = None
    requests: list[tuple[str, str, str]] = []
    for block in dump.split("\n\n"):
        frames = [m.group(1) for m in map(_FRAME.match, block.splitlines()) if m]
        if block.startswith('"SQLiteQueue'):
            if "RUNNABLE" in block and frames and "sqlite4java" in frames[0]:
                job = next((f for f in frames if ".sqlite.SQLiteDBAccess" in f), "other")
                sqlite_job = _short(job) if job != "other" else "other"
            continue
        operation = _DISPATCHER.search(block)
        if not operation:
            continue
        engine = [f for f in frames if f.startswith("software.amazon.dynamodb.")]
        at = next((i for i, f in enumerate(engine) if ".sqlite.SQLiteDBAccess." in f), None)
        if at is None:
            call, caller = (_short(engine[0]) if engine else "?"), ""
        else:
            call = _short(engine[at])
            caller = next((_short(f) for f in engine[at + 1:] if ".sqlite." not in f and "DBAccess" not in f), "")
        requests.append((operation.group(1), call, caller))
    return sqlite_job, requests


class Sampler:
    """Thread dumps of one process, back to back, until stopped."""

    def __init__(self, pid: int, jstack: str) -> None:
        self.pid, self.jstack = pid, jstack
        self.dumps: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jstack-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            done = subprocess.run([self.jstack, str(self.pid)], capture_output=True, text=True,  # nosec B603
                                  timeout=30, check=False)
            if done.returncode == 0:
                self.dumps.append(done.stdout)
            self._stop.wait(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def profile_scenario(scenario: str, data: dict[str, list[dict[str, Any]]], jstack: str) -> dict[str, Any]:
    items = sum(len(v) for v in data.values())
    with fresh_engine() as (info, settings):
        prepare_engine(settings, data, legacy_streams=True)
        spec = CopySpec(scenario, info.endpoint, items, count_units=scenario != "naive")  # as users run it
        copier = _naive_copier(spec, settings) if scenario == "naive" else _dynashift_copier(spec, settings)
        started = time.perf_counter()
        with Sampler(info.pid, jstack) as sampler:
            copier.run()
        wall = time.perf_counter() - started
    jobs: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for dump in sampler.dumps:
        job, requests = classify(dump)
        jobs[job or "(idle)"] += 1
        calls.update(requests)
    samples = len(sampler.dumps)
    return {"scenario": scenario, "items": items, "wall_s": wall, "samples": samples,
            "sqlite_jobs": dict(jobs.most_common()), "request_calls": [[*k, v] for k, v in calls.most_common()]}


def render(report: dict[str, Any]) -> str:
    lines = ["# Where DynamoDB Local's CPU goes during a backfill", "",
             (f"Generated by `python -m bench.engine_profile --items {report['items']}` on {report['generated']}; "
              f"{report['machine']}. Each contender on a fresh engine seeded the same way; jstack thread dumps of "
              "the engine, back to back, while it ran. Method: the docstring of bench/engine_profile.py."), ""]
    for run in report["runs"]:
        samples = run["samples"] or 1
        busy = samples - run["sqlite_jobs"].get("(idle)", 0)
        lines += [f"## {run['scenario']}: {run['items']:,} items, {run['samples']} dumps in {run['wall_s']:.1f} s", "",
                  f"The SQLite thread was busy in {busy / samples:.0%} of the dumps.", "",
                  "| SQLite thread's job | share of dumps |", "|---|---|"]
        for job, count in run["sqlite_jobs"].items():
            lines.append(f"| {job} | {count / samples:.0%} |")
        total = sum(c for *_, c in run["request_calls"]) or 1
        lines += ["", "| request | engine call | made by | share of request-thread samples |", "|---|---|---|---|"]
        for operation, call, caller, count in run["request_calls"][:TOP]:
            lines.append(f"| {operation} | {call} | {caller} | {count / total:.0%} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=5000, help="source items seeded per contender (default 5000)")
    parser.add_argument("--scenarios", default="insert,naive", help=f"comma separated, of: {', '.join(SCENARIOS)}")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"--scenarios: unknown {', '.join(unknown)} (choose from {', '.join(SCENARIOS)})")
    if args.items < 10:
        parser.error("--items must be at least 10")
    jstack = shutil.which("jstack")
    if jstack is None:
        print("error: jstack not found (it comes with a JDK; DynamoDB Local's JRE alone has none)", file=sys.stderr)
        return 2
    data = generate_data(args.items)
    runs = []
    for scenario in scenarios:
        print(f"profiling {scenario} at {args.items:,} items")
        runs.append(profile_scenario(scenario, data, jstack))
    machine = common.machine_info()
    report = {"items": args.items, "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{machine['cpus']} CPUs, {machine['engine']}",
              "runs": runs}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "engine-profile.json").write_text(json.dumps(report, indent=1))
    path = args.out_dir / "engine-profile.md"
    path.write_text(render(report))
    print(path.read_text())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    common.script_main(main)
