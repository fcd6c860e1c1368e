"""Smoke test of the verifier benchmark: its quick mode's core, shortened, on a real engine."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench.verify_bench import quick_config, render_markdown, run_bench, write_outputs

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_quick_verify_bench_reports_every_figure(tmp_path: Path) -> None:
    # GIVEN the quick configuration, shrunk to 1,000 source items
    config = dataclasses.replace(quick_config(), sizes=[1_000], quiet_wait_s=0.0, segments=2)
    # WHEN the bench runs (load, then both verifiers in child processes on a fresh DynamoDB Local)
    report = run_bench(config, log=lambda _: None)
    # THEN both verifiers ran and report positive figures, and dynashift found the loaded state clean
    runs = {r["verifier"]: r for r in report["runs"]}
    assert set(runs) == {"dynashift", "naive"}
    assert runs["dynashift"]["ok"] is True
    for run in runs.values():
        assert run["source_items"] == 1_000 and run["target_items"] == report["loads"]["1000"]["target_items"]
        assert run["items_per_s"] > 0 and 0 < run["peak_rss_mb"] < 2_000 and run["elapsed_s"] > 0
        # AND each counted its read units, against one eventually consistent scan of each table by AWS rules
        assert run["read_units"] > 0 and run["scan_read_units"] == report["loads"]["1000"]["scan_read_units"] > 0
    # the naive verifier's plain scans are such a scan: within a page's rounding of the reference
    assert abs(runs["naive"]["read_units"] - runs["naive"]["scan_read_units"]) <= 0.1 * runs["naive"]["scan_read_units"]
    (ratio,) = report["summary"]["ratios"]
    assert ratio["throughput_ratio"]["median"] > 0
    targets = [v["target"] for v in report["summary"]["verdicts"]]
    assert any("peak RSS" in t for t in targets) and any("read units" in t for t in targets)
    # AND the outputs are written
    json_path, md_path = write_outputs(report, tmp_path, "verify")
    assert json_path.exists() and "| 1,000 |" in md_path.read_text()
    assert "PASS" in render_markdown(report) or "FAIL" in render_markdown(report)
