"""`dynashift backfill run --dry-run` (scan and export), `backfill run --json`, and a warning-free
`mirror run`, through the CLI's main path on DynamoDB Local.

The dry run's counts are checked against an independent count: the migration
definition's transform run here over the seeded items, collisions counted by
target key.
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections import Counter
from typing import Any

import pytest

from shared.cli.main import main
from shared.core import aws
from shared.core.codec import to_native
from shared.core.definition import get_definition
from shared.core.errors import QuarantineError
from shared.core.itemsize import MAX_ITEM_BYTES, item_size_bytes
from shared.sc.seed import seed
from tests.export_fixture import write_export
from tests.integration.helpers import make_tables

pytestmark = pytest.mark.integration


@pytest.fixture
def env(sc_settings, monkeypatch):
    """The test's tables, as the CLI sees them through DYNASHIFT_* variables; seeded, bad rows included."""
    monkeypatch.setenv("DYNASHIFT_ENDPOINT_URL", sc_settings.endpoint_url)
    monkeypatch.setenv("DYNASHIFT_TARGET_TABLE", sc_settings.target_table)
    monkeypatch.setenv("DYNASHIFT_CONTROL_TABLE", sc_settings.control_table)
    monkeypatch.setenv("DYNASHIFT_TABLE_NAMES", json.dumps(sc_settings.table_names))
    make_tables(sc_settings)
    asyncio.run(seed(sc_settings, 40, 120, 0.1, 11))
    return sc_settings


def scan(settings, physical: str) -> list[dict[str, Any]]:
    client = aws.dynamodb(settings)
    return [to_native(i) for page in client.get_paginator("scan").paginate(TableName=physical) for i in page["Items"]]


def count(settings, physical: str) -> int:
    return aws.dynamodb(settings).scan(TableName=physical, Select="COUNT")["Count"]


def expected_report(settings, items_by_table: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """What a dry run must report, computed without shared.ops.dryrun: transform, size, one owner per key."""
    definition = get_definition(settings.migration)
    sources: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    produced: dict[tuple[str, ...], list[tuple[str, list[dict[str, Any]]]]] = {}
    for table, items in items_by_table.items():
        for item in items:
            sources[table] += 1
            try:
                targets = definition.transform(table, item)
            except QuarantineError as exc:
                quarantined[exc.reason] += 1
                continue
            if any(item_size_bytes(t) > MAX_ITEM_BYTES for t in targets):
                quarantined["item_too_large"] += 1
                continue
            owner = f"{table}|{definition.source(table).ref(item).key}"
            for target in targets:
                produced.setdefault(definition.target_key(target), []).append((owner, targets))
    # Only repositories can collide (one target item each): every key's first owner wins, the others
    # are quarantined whole.
    losers = {owner for claims in produced.values() for owner, _ in claims[1:]}
    quarantined["key_collision"] += len(losers)
    entities: Counter[str] = Counter()
    winners: dict[str, list[dict[str, Any]]] = {}
    for claims in produced.values():
        for owner, targets in claims:
            if owner not in losers:
                winners[owner] = targets
    for targets in winners.values():
        for target in targets:
            entities[target["entity"]] += 1
    return {"source_items": dict(sources), "target_items_per_entity": dict(entities),
            "quarantined_per_reason": {k: v for k, v in quarantined.items() if v}}


def assert_matches(report: dict[str, Any], expected: dict[str, Any]) -> None:
    assert report["dry_run"] is True
    assert report["source_items"] == expected["source_items"]
    assert report["target_items_per_entity"] == expected["target_items_per_entity"]
    assert report["quarantined_per_reason"] == expected["quarantined_per_reason"]
    assert report["quarantined_total"] == sum(expected["quarantined_per_reason"].values()) > 0


def assert_nothing_written(settings) -> None:
    assert count(settings, settings.target_table) == 0
    assert count(settings, settings.control_table) == 0


def test_scan_dry_run_prints_the_report_writes_the_json_file_and_nothing_else(env, capsys, tmp_path):
    # GIVEN seeded legacy tables (bad rows and key collisions included), and the independent count
    items = {t: scan(env, env.physical_name(t)) for t in ("sc-accounts", "sc-repositories")}
    expected = expected_report(env, items)
    capsys.readouterr()
    # WHEN the dry run scans them, with the report also written to a file
    report_file = tmp_path / "dry-run.json"
    assert main(["backfill", "run", "--dry-run", "--segments", "3", "--json-file", str(report_file)]) == 0
    out = capsys.readouterr().out
    # THEN the JSON file holds the independent counts
    report = json.loads(report_file.read_text())
    assert_matches(report, expected)
    # AND the printed report shows items per entity and every quarantine reason with sample keys
    assert "would become" in out and "nothing was written" in out
    for entity, n in expected["target_items_per_entity"].items():
        assert any(entity in line and f"{n:,}" in line for line in out.splitlines()), (entity, out)
    for reason, n in expected["quarantined_per_reason"].items():
        assert f"  {reason}: {n:,}" in out.splitlines()
        for sample in report["samples"][reason]:
            assert f"    {sample['table']} {sample['key']}: " in out
    keys = {str(definition_key) for definition_key in _source_keys(env, items)}
    assert all(s["key"] in keys for samples in report["samples"].values() for s in samples)
    # AND nothing was written anywhere
    assert_nothing_written(env)


def _source_keys(settings, items: dict[str, list[dict[str, Any]]]) -> set[str]:
    definition = get_definition(settings.migration)
    return {"|".join(definition.source(t).ref(i).key) for t, rows in items.items() for i in rows
            if all(a in i for a in definition.source(t).key_attrs)}


def test_export_dry_run_with_json_prints_only_json(env, capsys, tmp_path):
    # GIVEN a PITR export of sc-accounts on disk
    accounts = scan(env, env.physical_name("sc-accounts"))
    export_dir = write_export(tmp_path / "export", accounts, export_time=time.time(), files=3)
    expected = expected_report(env, {"sc-accounts": accounts})
    capsys.readouterr()
    # WHEN the dry run reads it with --json
    code = main(["backfill", "run", "--dry-run", "--table", "sc-accounts", "--source", f"export:{export_dir}",
                 "--json"])
    captured = capsys.readouterr()
    # THEN stdout is exactly the JSON report, with the independent counts; the rest went to stderr
    assert code == 0
    assert_matches(json.loads(captured.out), expected)
    assert "would become" in captured.err
    assert_nothing_written(env)


def test_backfill_run_json_prints_only_the_run_report(env, capsys):
    # GIVEN seeded legacy tables nobody writes to
    capsys.readouterr()
    # WHEN the real backfill runs with --json
    code = main(["backfill", "run", "--segments", "2", "--allow-no-mirror", "--json"])
    captured = capsys.readouterr()
    # THEN stdout is one JSON document: both tables done, the counts of the control table's runs
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["dry_run"] is False and report["complete"] is True and report["unfinished"] == []
    rows = {row["table"]: row for row in report["tables"]}
    assert set(rows) == {"sc-accounts", "sc-repositories"}
    assert rows["sc-accounts"]["read"] == 40 and rows["sc-repositories"]["read"] == 120
    assert all(r["units_done"] == r["units_total"] == 2 for r in rows.values())
    assert count(env, env.target_table) > 0


def test_mirror_run_prints_no_library_warning(env, capsys):
    # GIVEN records on the legacy streams (the local runner calls the Lambda handler, metrics off)
    capsys.readouterr()
    # WHEN the mirror runs through the CLI, every warning recorded
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["mirror", "run"])
    captured = capsys.readouterr()
    # THEN no warning escaped (powertools' "No application metrics to publish" among them)
    assert code == 0, captured.err
    assert "applied 160 records" in captured.out
    assert [str(w.message) for w in caught] == []
    assert "Warning" not in captured.err + captured.out
    assert "metrics" not in captured.err + captured.out


def test_scan_dry_run_counts_each_page_before_reading_the_next(monkeypatch):
    # GIVEN a table of three scan pages (a fake client: no engine needed)
    import contextlib

    from backfill.run import _scan_dry
    from shared.core.settings import load_settings
    from shared.ops.dryrun import DryRun

    def account(n: int) -> dict[str, Any]:
        return {"accountId": {"S": f"a{n}"}, "email": {"S": f"a{n}@example.com"}, "createdAt": {"N": "1700000000"}}

    pages = [{"Items": [account(3 * p + i) for i in range(3)], "LastEvaluatedKey": {"p": p}} for p in range(3)]
    pages[-1].pop("LastEvaluatedKey")
    dry = DryRun(get_definition("sc"))
    counted_before_each_page: list[int] = []

    class Client:
        async def scan(self, **kwargs: Any) -> dict[str, Any]:
            counted_before_each_page.append(dry.report.source_items["sc-accounts"])
            return pages[kwargs["ExclusiveStartKey"]["p"] + 1 if "ExclusiveStartKey" in kwargs else 0]

    @contextlib.asynccontextmanager
    async def fake_client(settings, **kw):
        yield Client()

    monkeypatch.setattr(aws, "aio_dynamodb", fake_client)
    # WHEN the dry run scans it in one segment
    asyncio.run(_scan_dry(load_settings(), ["sc-accounts"], 1, dry))
    # THEN each page was counted before the next was read: memory holds one page, not the segment
    assert counted_before_each_page == [0, 3, 6]
    assert dry.report.source_items["sc-accounts"] == 9
    assert sum(dry.report.target_items.values()) == 9


def test_scan_dry_run_holds_at_most_two_pages_whatever_the_segment_count(monkeypatch):
    # GIVEN a table of 8 segments, 3 pages each (a fake client whose scans yield to the event loop)
    import contextlib

    from backfill.run import DRY_RUN_PAGE_ITEMS, DRY_RUN_PAGES_IN_FLIGHT, _scan_dry
    from shared.core.settings import load_settings
    from shared.ops.dryrun import DryRun

    dry = DryRun(get_definition("sc"))
    in_flight, most_in_flight, limits = 0, 0, set()

    class Client:
        async def scan(self, **kwargs: Any) -> dict[str, Any]:
            nonlocal in_flight, most_in_flight
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
            limits.add(kwargs.get("Limit"))
            for _ in range(3):
                await asyncio.sleep(0)
            in_flight -= 1
            segment, page = kwargs["Segment"], kwargs.get("ExclusiveStartKey", {"p": -1})["p"] + 1
            items = [{"accountId": {"S": f"a{segment}-{page}-{i}"}, "email": {"S": "a@example.com"},
                      "createdAt": {"N": "1700000000"}} for i in range(2)]
            return {"Items": items, **({"LastEvaluatedKey": {"p": page}} if page < 2 else {})}

    @contextlib.asynccontextmanager
    async def fake_client(settings, **kw):
        yield Client()

    monkeypatch.setattr(aws, "aio_dynamodb", fake_client)
    # WHEN the dry run scans it with --segments 8
    asyncio.run(_scan_dry(load_settings(), ["sc-accounts"], 8, dry))
    # THEN every page was counted, but never more than two pages were read at once, each of bounded size:
    # eight full 1 MB pages parsed at once cost about 200 MB
    assert dry.report.source_items["sc-accounts"] == 8 * 3 * 2
    assert most_in_flight == DRY_RUN_PAGES_IN_FLIGHT == 2
    assert limits == {DRY_RUN_PAGE_ITEMS}


def test_dry_run_keeps_fingerprints_of_shared_keys_only():
    # GIVEN the sc migration, whose only shared keys are the repositories' (profiles and memberships
    # embed their account's id)
    from shared.ops.dryrun import DryRun

    dry = DryRun(get_definition("sc"))
    account = {"accountId": "a1", "email": "a@example.com", "createdAt": 1700000000, "teamIds": {"t1", "t2"}}
    repo = {"repoId": "r1", "accountId": "a1", "name": "tools", "createdAt": 1700000000}
    # WHEN an account (three target items) and two repositories claiming one name are counted
    dry.add("sc-accounts", account)
    dry.add("sc-repositories", repo)
    dry.add("sc-repositories", {**repo, "repoId": "r2", "name": "TOOLS"})
    # THEN memory holds one fingerprint (the repository's key), and the collision is still found
    assert len(dry._owners) == 1
    assert dry.report.target_items["account"] == 1 and dry.report.target_items["membership"] == 2
    assert dry.report.quarantined == {"key_collision": 1}


def test_dry_run_estimate_is_within_ten_percent_of_what_the_backfill_consumed(env, capsys):
    # GIVEN seeded legacy tables nobody writes to, and the dry run's estimate for them
    capsys.readouterr()
    assert main(["backfill", "run", "--dry-run", "--json", "--rate", "400", "--write-rate", "50"]) == 0
    dry = json.loads(capsys.readouterr().out)
    estimate = dry["estimate"]
    # WHEN the real backfill runs (default mode), its units counted from the engine's answers
    code = main(["backfill", "run", "--segments", "2", "--allow-no-mirror", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads(captured.out)["tables"]
    consumed_writes = sum(r["write_units"] for r in rows)
    consumed_reads = sum(r["read_units"] for r in rows)
    # THEN the estimate is within 10% of both, and says its price and time
    assert consumed_writes > 0 and consumed_reads > 0
    assert abs(estimate["backfill"]["write_units"] - consumed_writes) <= 0.10 * consumed_writes, (estimate, rows)
    assert abs(estimate["backfill"]["read_units"] - consumed_reads) <= 0.10 * consumed_reads, (estimate, rows)
    assert estimate["backfill"]["usd"] == pytest.approx(
        (estimate["backfill"]["write_units"] * 0.625 + estimate["backfill"]["read_units"] * 0.125) / 1e6, rel=0.01)
    assert estimate["backfill"]["seconds_at_rate"] == pytest.approx(dry["source_items_total"] / 400, abs=0.1)
    assert estimate["mirror"]["write_rate_per_s"] == 50 and estimate["mirror"]["write_units_per_day"] > 50 * 86400
