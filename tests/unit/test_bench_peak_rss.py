"""The benchmarks' peak-RSS figure is the child's own, whatever the parent that spawned it holds."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from bench.common import own_peak_rss_mb

MB = 2**20


def _child(allocate_mb: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    held = bytearray(allocate_mb * MB)
    held[::4096] = b"x" * len(held[::4096])  # touch every page, so all of it is resident
    out.put(own_peak_rss_mb())
    del held


def _peak_of_spawned_child(allocate_mb: int) -> float:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=_child, args=(allocate_mb, out))
    process.start()
    peak = out.get(timeout=60)
    process.join(30)
    return float(peak)


def test_a_child_spawned_by_a_large_parent_reports_its_own_peak_not_the_parents():
    # GIVEN a parent holding 400 MB, resident (as the bench's parent holds the loaded items)
    ballast = bytearray(400 * MB)
    ballast[::4096] = b"x" * len(ballast[::4096])
    # WHEN a spawned child that allocates little reports its peak
    small = _peak_of_spawned_child(0)
    del ballast
    # THEN the figure is the child's own (an interpreter, well under the parent's 400 MB)
    assert small < 200, small


def test_a_childs_own_allocation_shows_in_its_peak():
    # GIVEN / WHEN a spawned child that allocates 300 MB itself
    big = _peak_of_spawned_child(300)
    # THEN its peak includes it
    assert big >= 300, big


def test_a_status_file_without_the_line_is_a_clear_error(tmp_path: Path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmRSS:\t 1000 kB\n")
    with pytest.raises(RuntimeError, match="VmHWM"):
        own_peak_rss_mb(status)


def test_the_status_line_is_read_in_megabytes(tmp_path: Path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  204800 kB\nVmRSS:\t 1000 kB\n")
    assert own_peak_rss_mb(status) == 200.0

