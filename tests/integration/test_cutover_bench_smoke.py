"""Smoke test of the cutover benchmark: one cutover and one rollback on a fresh engine."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench.cutover_bench import quick_config, render_markdown, run_bench, write_outputs

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:No application metrics to publish")]


@pytest.mark.timeout(300)
def test_quick_cutover_bench_reports_the_freeze_window(tmp_path: Path) -> None:
    # GIVEN the quick configuration, with a light application, short phases and a timeout
    # generous enough for a machine shared with other jobs (this tests the mechanics, the
    # benchmark itself measures the figures)
    config = dataclasses.replace(quick_config(), rate=20.0, phase_s=1.0, quiet_wait_s=0.0, timeout_s=90.0)
    # WHEN the bench runs
    report = run_bench(config, log=lambda _: None)
    # THEN both switches completed consistently, each with a freeze window of at least the cache wait
    assert [r["op"] for r in report["runs"]] == ["cutover", "rollback"]
    for run in report["runs"]:
        assert run["outcome"] == "switched" and run["consistent"], run
        assert run["freeze_window_s"] >= config.cache_age_s + config.grace_s
        assert run["timings"]["cache_waited"] >= config.cache_age_s + config.grace_s
    summary = report["summary"]
    assert summary["consistent"] and summary["freeze_window_s"]["n"] == 2
    assert isinstance(summary["verdict"]["pass"], bool) and "median freeze window" in summary["verdict"]["target"]
    # the target is the mode cache age + 1 s, at the rate given (no calibration with --rate)
    assert "= 2 s" in summary["verdict"]["target"] and report["calibration"] == []
    assert report["application"]["acknowledged"] > 0 and report["application"]["errors"] == 0
    # AND the outputs are written, with the verdict
    json_path, md_path = write_outputs(report, tmp_path, "cutover")
    assert json_path.exists() and "| cutover |" in md_path.read_text()
    assert "PASS" in render_markdown(report) or "FAIL" in render_markdown(report)
