"""Foundation on the real engine: local start/stop, tables from template.yaml, seed counts."""

from __future__ import annotations

import asyncio

import pytest

from shared.cli.main import main
from shared.core import aws
from shared.core.settings import PROJECT_ROOT
from shared.ops.tables import create_tables, load_template
from shared.sc.seed import seed
from shared.sim import local_engine

pytestmark = pytest.mark.integration


def test_local_start_stop_with_data_dir_keeps_data(tmp_path, capsys):
    # GIVEN DynamoDB Local started by the CLI with a data directory
    port = local_engine.free_port()
    data_dir = tmp_path / "ddb"
    assert main(["local", "start", "--port", str(port), "--data-dir", str(data_dir)]) == 0
    endpoint = f"http://127.0.0.1:{port}"
    try:
        assert main(["--endpoint-url", endpoint, "tables", "create"]) == 0
        # WHEN it is stopped and started again on the same directory
        assert main(["local", "stop", "--port", str(port)]) == 0
        assert local_engine.status(PROJECT_ROOT / ".cache" / "dynashift", port) is None
        assert main(["local", "start", "--port", str(port), "--data-dir", str(data_dir)]) == 0
        # THEN the tables are still there
        assert main(["--endpoint-url", endpoint, "tables", "create"]) == 0
        assert "sc-main: exists" in capsys.readouterr().out
    finally:
        main(["local", "stop", "--port", str(port)])


def test_tables_match_template_and_creating_twice_is_fine(sc_settings):
    # GIVEN the template's definition of sc-main
    template = load_template()["Resources"]["TargetTable"]["Properties"]
    # WHEN the tables are created twice
    first = create_tables(sc_settings, with_sources=True)
    second = create_tables(sc_settings, with_sources=True)
    # THEN the second time everything exists, and sc-main is what the template says
    assert {outcome for _, outcome, _ in first} == {"created"}
    assert {outcome for _, outcome, _ in second} == {"exists"}
    client = aws.dynamodb(sc_settings)
    table = client.describe_table(TableName=sc_settings.target_table)["Table"]
    assert [(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]] == [
        (k["AttributeName"], k["KeyType"]) for k in template["KeySchema"]
    ]
    gsi = table["GlobalSecondaryIndexes"][0]
    assert gsi["IndexName"] == "GSI1"
    assert [k["AttributeName"] for k in gsi["KeySchema"]] == ["GSI1PK", "GSI1SK"]
    assert gsi["Projection"]["ProjectionType"] == "ALL"
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    ttl = client.describe_time_to_live(TableName=sc_settings.target_table)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == template["TimeToLiveSpecification"]["AttributeName"]
    for logical in ("sc-accounts", "sc-repositories"):
        source = client.describe_table(TableName=sc_settings.physical_name(logical))["Table"]
        assert source["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"


def count(settings, table):
    client = aws.dynamodb(settings)
    total = 0
    for page in client.get_paginator("scan").paginate(TableName=table, Select="COUNT"):
        total += page["Count"]
    return total


def test_seed_writes_exactly_the_requested_counts(fresh_sc_settings):
    # (8,000 items and their stream records: on the session's engine they would slow every later test)
    sc_settings = fresh_sc_settings
    # GIVEN the legacy tables
    create_tables(sc_settings, with_sources=True)
    # WHEN 2,000 accounts and 6,000 repositories are seeded with 2% bad rows
    report = asyncio.run(seed(sc_settings, 2000, 6000, 0.02, 5))
    # THEN exactly those counts are in the legacy tables
    assert count(sc_settings, sc_settings.physical_name("sc-accounts")) == 2000
    assert count(sc_settings, sc_settings.physical_name("sc-repositories")) == 6000
    assert sum(report.bad.values()) == round(0.02 * 2000) + round(0.02 * 6000)


def test_cli_seed_against_missing_tables_is_one_line(local_dynamodb, capsys):
    # GIVEN an engine without the legacy tables / WHEN seeding / THEN exit 2, one line naming the table
    code = main(["--endpoint-url", local_dynamodb, "seed", "--accounts", "1", "--repos", "1"])
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "not found" in err[0]
