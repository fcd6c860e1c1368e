"""Smoke tests of the benchmarks (mirror, backfill): their quick modes' core functions, shortened, on real engines."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from bench.mirror_bench import quick_config, render_markdown, run_bench, write_outputs

pytestmark = pytest.mark.integration


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
@pytest.mark.timeout(180)
def test_quick_bench_reports_every_figure(tmp_path: Path) -> None:
    # GIVEN the quick configuration, shortened to a few seconds of writes per scenario
    config = dataclasses.replace(quick_config(), rates=[100.0], duration_s=2.0, ceiling_s=1.5, quiet_wait_s=0.0)
    started = time.monotonic()
    # WHEN the bench runs (ceiling, dynashift and naive, each on a fresh DynamoDB Local)
    report = run_bench(config, log=lambda _: None)
    # THEN every scenario ran and reports positive numbers
    assert time.monotonic() - started < 90  # about 50 s on a 2-core machine
    kinds = {(r["scenario"], r["handler"]) for r in report["runs"]}
    assert kinds == {
        ("ceiling", "raw-put:sc-main"), ("ceiling", "raw-put:legacy"), ("mirror", "dynashift"), ("mirror", "naive"),
    }
    for run in report["runs"]:
        assert run["acked_writes"] > 0 and run["write_errors"] == 0
        assert run["engine_cpu_cores"] > 0
        if run["scenario"] == "ceiling":
            assert run["puts_per_s"] > 0
            continue
        assert run["achieved_writes_per_s"] > 0 and run["mirrored_per_s"] > 0 and run["handler_capacity_per_s"] > 0
        assert run["applied_records"] + run["censored_records"] == run["acked_writes"]
        assert run["applied_records"] > 0 and run["unmatched_records"] == 0
        assert all(run["lag_ms"][p] > 0 for p in ("p50", "p95", "p99", "max"))
        assert run["handler_cpu_ms_per_record"] > 0 and run["target_writes"] > 0
    summary = report["summary"]
    assert summary["ceiling"]["sc-main"]["puts_per_s"]["median"] > 0
    assert summary["ceiling"]["legacy"]["puts_per_s"]["median"] > 0
    assert {row["handler"] for row in summary["rows"]} == {"dynashift", "naive"}
    for row in summary["rows"]:
        for name in ("achieved_writes_per_s", "mirrored_per_s", "p50_ms", "p99_ms", "handler_cpu_ms_per_record"):
            assert row[name]["median"] > 0, name
    (ratio,) = summary["ratios"]
    assert all(ratio[name]["median"] > 0 for name in ("mirrored_per_s", "p99_ms", "handler_cpu_ms_per_record"))
    assert len(summary["verdicts"]) >= 2
    assert all(isinstance(v["pass"], bool) and v["measured"] for v in summary["verdicts"])
    # AND the outputs are written
    json_path, md_path = write_outputs(report, tmp_path, "mirror")
    assert json_path.exists() and "| 100 | dynashift" in md_path.read_text()
    assert "PASS" in render_markdown(report) or "FAIL" in render_markdown(report)


@pytest.mark.timeout(400)
def test_quick_backfill_bench_reports_every_scenario_and_the_targets(tmp_path: Path) -> None:
    # GIVEN the backfill bench's quick configuration, shrunk to a few hundred items
    from bench import backfill_bench

    config = dataclasses.replace(backfill_bench.quick_config(), items=100, quiet_wait_s=0.0)
    # WHEN every scenario runs (put, transact, naive, ceiling), each on a fresh DynamoDB Local
    report = backfill_bench.run_bench(config, log=lambda _: None)
    json_path, md_path = backfill_bench.write_outputs(report, tmp_path, "backfill")
    # THEN each scenario copied the seeded items and reports positive figures
    assert {r["scenario"] for r in report["runs"]} == set(backfill_bench.SCENARIOS)
    for run in report["runs"]:
        assert run["items"] == 100 and run["source_items"] > 0, run["scenario"]
        assert run["items_per_s"] > 0 and run["client_cpu_ms_per_item"] > 0 and run["peak_rss_mb"] > 0
        if run["scenario"] in ("put", "transact"):
            assert run["read"] == 100
            accounted = run["written"] + run["skipped"] + run["quarantined"]
            # transact does not count a source item whose transform yields no target item (see the bench report)
            assert accounted == 100 if run["scenario"] == "put" else 90 <= accounted <= 100
            assert run["quarantined"] >= 1  # the seeded bad rows
        if run["scenario"] == "naive":
            assert run["written"] == 100
    # AND the ratios and targets are computed, and the outputs have the expected structure
    summary = report["summary"]
    assert summary["ratios"]["put/naive"]["median"] > 0 and summary["ratios"]["put/ceiling"]["median"] > 0
    targets = [v["target"] for v in summary["verdicts"]]
    assert any("naive" in t for t in targets) and any("ceiling" in t for t in targets)
    assert any("RSS" in t for t in targets)
    assert all(isinstance(v["pass"], bool) for v in summary["verdicts"])
    saved = json.loads(json_path.read_text())
    assert saved["bench"] == "backfill" and len(saved["runs"]) == 4
    markdown = md_path.read_text()
    assert "## Targets (issue 4)" in markdown and ("PASS" in markdown or "FAIL" in markdown)
    assert "| dynashift put (default)" in markdown and "naive" in markdown
