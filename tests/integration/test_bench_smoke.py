"""Smoke tests of the benchmarks (mirror, backfill, engine writes): their quick modes' core functions, shortened, on real engines."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pytest

from bench.mirror_bench import quick_config, render_markdown, run_bench, write_outputs

pytestmark = pytest.mark.integration


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
@pytest.mark.timeout(600)
def test_quick_bench_reports_every_figure(tmp_path: Path) -> None:
    # GIVEN the quick configuration, shrunk to a small backlog and two seconds of lag
    config = dataclasses.replace(quick_config(), backlog=150, warmup=60, lag_duration_s=2.0, quiet_wait_s=0.0)
    started = time.monotonic()
    # WHEN the bench runs (ceiling, the three drains and lag runs, each on a fresh, warmed-up DynamoDB Local)
    report = run_bench(config, log=lambda _: None)
    # THEN every scenario ran and reports positive numbers, with the engine's state beside them
    assert time.monotonic() - started < 420  # about 2 minutes on an idle 2-core machine
    kinds = {(r["scenario"], r["handler"]) for r in report["runs"]}
    assert kinds == {("ceiling", "ceiling"), ("drain", "dynashift"), ("drain", "users"), ("drain", "naive"),
                     ("lag", "dynashift"), ("lag", "users"), ("lag", "naive")}
    for run in report["runs"]:
        assert run["records"] > 0 and run["engine_cpu_cores"] > 0
        assert 0 < run["stream_records_before"] <= run["stream_records_after"]
        assert run["units"]["aws"]["total"] >= run["units"]["local"]["total"] > 0
        assert run["warmup"]["writes"] > 0 and run["warmup"]["mirrored"] > 0
        if run["scenario"] == "ceiling":
            assert run["records_per_s"] > 0 and run["target_writes"] > 0 and run["write_errors"] == 0
            assert run["requests_per_record"]["PutItem sc-main"] > 0
        elif run["scenario"] == "drain":
            assert run["applied_records"] == run["records"] and run["records_per_s"] > 0
            assert run["requests_per_record"]["PutItem sc-main"] > 0 and run["handler_cpu_ms_per_record"] > 0
        else:
            assert run["acked_writes"] > 0 and run["write_errors"] == 0 and run["unmatched_records"] == 0
            assert run["applied_records"] + run["censored_records"] == run["acked_writes"]
            assert all(run["lag_ms"][p] > 0 for p in ("p50", "p95", "p99", "max"))
            assert run["offered_rate"] > 0 and run["mirrored_per_s"] > 0
    # the dynashift handler's own requests show up by operation: the mode read and the receipts among them
    drain = next(r for r in report["runs"] if r["scenario"] == "drain" and r["handler"] == "dynashift")
    assert drain["requests_per_record"]["GetItem dynashift-control"] > 0
    assert drain["requests_per_record"]["PutItem dynashift-control"] > 0
    summary = report["summary"]
    ratios = summary["ratios"]
    for name in ("drain_vs_ceiling_records_per_s", "drain_units_vs_naive", "lag_units_vs_naive",
                 "drain_units_vs_users", "lag_units_vs_users"):
        assert ratios[name]["median"] > 0, name
    # AND the users' handler removes the keys renames and transfers moved away; the naive floor does not
    users = next(r for r in report["runs"] if r["scenario"] == "drain" and r["handler"] == "users")
    floor = next(r for r in report["runs"] if r["scenario"] == "drain" and r["handler"] == "naive")
    assert users["requests_per_record"]["DeleteItem sc-main"] > floor["requests_per_record"].get("DeleteItem sc-main", 0)
    assert len([v for v in summary["verdicts"] if not v.get("informational")]) == 4
    assert all(isinstance(v["pass"], bool) and v["measured"] for v in summary["verdicts"])
    # AND the outputs are written
    json_path, md_path = write_outputs(report, tmp_path, "mirror")
    text = md_path.read_text()
    assert json_path.exists() and "## Saturation" in text and "| dynashift" in text
    assert "PASS" in render_markdown(report) or "FAIL" in render_markdown(report)


@pytest.mark.timeout(400)
def test_quick_backfill_bench_reports_ratios_units_and_engine_state(tmp_path: Path) -> None:
    # GIVEN the backfill bench's quick configuration, shrunk to a hundred items, one round, no RSS series
    from bench import backfill_bench

    config = dataclasses.replace(backfill_bench.quick_config(), items=100, repeats=1, with_rss=False,
                                 scenarios=["insert", "put", "naive", "plain", "transact"], quiet_wait_s=0.0)
    # WHEN every contender runs, each on a fresh DynamoDB Local seeded the same way
    report = backfill_bench.run_bench(config, log=lambda _: None)
    json_path, md_path = backfill_bench.write_outputs(report, tmp_path, "backfill-quick")
    # THEN each contender copied the seeded items and reports positive figures, units included
    assert {r["scenario"] for r in report["runs"]} == {"insert", "put", "naive", "plain", "transact"}
    for run in report["runs"]:
        assert run["items"] == 100 and run["source_items"] > 0, run["scenario"]
        assert run["items_per_s"] > 0 and run["client_cpu_ms_per_item"] > 0 and run["peak_rss_mb"] > 0
        assert run["write_units_per_item"] > 0 and run["read_units_per_item"] > 0, run["scenario"]
        assert run["units_by_operation"], run["scenario"]
        # AND the engine state at the start: fresh, the seeded items in the legacy tables, one stream record each
        state = run["engine_state"]
        assert state["fresh_engine"] and state["stream_records"] == 100 and state["item_counts_agree"]
        assert {t for t, v in state["tables"].items() if v["stream_records"]} == {"sc-accounts", "sc-repositories"}
        if run["scenario"] in ("insert", "put", "transact"):
            assert run["read"] == 100
            accounted = run["written"] + run["skipped"] + run["quarantined"]
            # transact does not count a source item whose transform yields no target item (see the bench report)
            assert accounted == 100 if run["scenario"] != "transact" else 90 <= accounted <= 100
            assert run["quarantined"] >= 1  # the seeded bad rows
            assert run["control_write_units_per_item"] > 0  # plan, claims, checkpoints, quarantine
            # AND the dry run's estimate of the run, beside what `backfill status` says it consumed
            estimate = run["dry_run_estimate"]
            assert estimate["write_units"] > 0 and estimate["consumed_write_units"] > 0, run["scenario"]
            assert estimate["read_units"] > 0 and estimate["consumed_read_units"] > 0, run["scenario"]
        if run["scenario"] == "naive":
            assert run["written"] > 0 and run["refused_by_transform"] >= 1
            assert run["units"]["write_units"] >= report["minimum_units"]["write_units"]
        if run["scenario"] in ("naive", "plain"):
            # AND the users' scripts were timed as users run them, their units counted in a second run
            assert run["units_run"]["items_per_s"] > 0, run["scenario"]
        if run["scenario"] == "plain":
            assert run["written"] == 100
    # AND the minimum units, the within-round ratios against the naive script and the targets are computed
    minimum = report["minimum_units"]
    assert minimum["write_units_per_item"] > 0 and minimum["read_units_per_item"] > 0
    summary = report["summary"]
    assert set(summary["ratios"]) == {"insert", "put", "plain", "transact"}
    for name in ("items_per_s", "write_units_per_item", "read_units_per_item", "client_cpu_per_item"):
        assert summary["ratios"]["insert"][name]["median"] > 0, name
    put_row = next(r for r in summary["rows"] if r["scenario"] == "insert")
    assert put_row["write_units_vs_minimum"]["median"] >= 1.0 and put_row["stream_records_at_start"]["median"] == 100
    assert summary["units_breakdown"]["insert"] and summary["units_breakdown"]["put"]
    targets = [v["target"] for v in summary["verdicts"]]
    assert any("items/s" in t for t in targets) and any("write units" in t for t in targets)
    assert any("client CPU" in t for t in targets) and any("RSS" in t for t in targets)
    assert any("--dry-run" in t for t in targets) and "The dry run's estimate against the run" in md_path.read_text()
    assert all(isinstance(v["pass"], bool) and v["measured"] for v in summary["verdicts"])
    saved = json.loads(json_path.read_text())
    assert saved["bench"] == "backfill" and len(saved["runs"]) == 5 and saved["minimum_units"]
    markdown = md_path.read_text()
    assert "## Targets (issue 14)" in markdown and ("PASS" in markdown or "FAIL" in markdown)
    assert "| dynashift insert (default)" in markdown and "Against the naive script of the same round" in markdown
    assert "stream records at start" in markdown


@pytest.mark.timeout(300)
def test_engine_writes_bench_writes_every_method_on_fresh_engines(tmp_path: Path) -> None:
    from bench import engine_writes_bench

    # WHEN the bench runs as bench/run runs it, on a few items
    assert engine_writes_bench.main(["--quick", "--items", "40", "--out-dir", str(tmp_path)]) == 0
    # THEN every method wrote every item (the bench checks the count) and each has its ratio to BatchWriteItem
    report = json.loads((tmp_path / "engine_writes-quick.json").read_text())
    assert {run["method"] for run in report["runs"]} == set(engine_writes_bench.METHODS)
    assert all(run["engine_cpu_ms_per_item"] > 0 and run["items_per_s"] > 0 for run in report["runs"])
    assert {r["method"] for r in report["summary"]["ratios"]} == set(engine_writes_bench.METHODS) - {"batch_write"}
    assert "| BatchExecuteStatement INSERT (25, create-only) |" in (tmp_path / "engine_writes-quick.md").read_text()


@pytest.mark.timeout(300)
def test_backfill_faults_bench_injects_faults_and_reports_its_ratio(tmp_path: Path) -> None:
    from bench import backfill_faults_bench

    # WHEN the bench runs as bench/run runs it, on a few items and one round
    argv = ["--quick", "--rounds", "1", "--items", "400", "--quiet-wait-s", "0", "--out-dir", str(tmp_path)]
    assert backfill_faults_bench.main(argv) == 0
    # THEN both contenders completed; only the faulty one met faults; the ratio and its verdict are reported
    report = json.loads((tmp_path / "backfill_faults-quick.json").read_text())
    runs = {run["contender"]: run for run in report["runs"]}
    assert set(runs) == {"fault-free", "faulty"} and all(run["exit_code"] == 0 for run in runs.values())
    assert runs["fault-free"]["faults"] == 0 < runs["faulty"]["faults"]
    assert report["summary"]["ratios"]["faulty/fault-free items/s"]["n"] == 1
    markdown = (tmp_path / "backfill_faults-quick.md").read_text()
    assert "keeps >= 0.5x its fault-free items/s" in markdown and ("PASS" in markdown or "FAIL" in markdown)


@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("jstack") is None, reason="the engine profile needs the JDK's jstack")
def test_engine_profile_samples_the_engine_under_each_contender(tmp_path: Path) -> None:
    # GIVEN the engine profile at a few dozen items, the default mode against the naive script
    from bench import engine_profile

    # WHEN it runs (each contender on a fresh engine, jstack dumps while it copies)
    assert engine_profile.main(["--items", "40", "--scenarios", "insert,naive", "--out-dir", str(tmp_path)]) == 0
    # THEN each contender has dumps, and its requests were seen inside the engine
    report = json.loads((tmp_path / "engine-profile.json").read_text())
    assert [r["scenario"] for r in report["runs"]] == ["insert", "naive"]
    for run in report["runs"]:
        assert run["samples"] >= 1 and sum(run["sqlite_jobs"].values()) == run["samples"]
    assert "## insert: 40 items" in (tmp_path / "engine-profile.md").read_text()
