"""`status` and `quarantine list|retry` on DynamoDB Local, through the CLI."""

from __future__ import annotations

import asyncio
import json

import pytest

from shared.cli.main import main
from shared.core import aws
from shared.core.codec import to_wire
from shared.cutover.gate import check_quarantine
from shared.sc.seed import seed
from shared.sim.local_lambda import run_forward_mirror
from tests.integration.helpers import make_tables

pytestmark = pytest.mark.integration


def cli(settings, *argv):
    """Run the CLI against the test's tables (the settings reach it through DYNASHIFT_* variables)."""
    return main(["--endpoint-url", settings.endpoint_url, *argv])


@pytest.fixture
def env(sc_settings, monkeypatch):
    monkeypatch.setenv("DYNASHIFT_TARGET_TABLE", sc_settings.target_table)
    monkeypatch.setenv("DYNASHIFT_CONTROL_TABLE", sc_settings.control_table)
    monkeypatch.setenv("DYNASHIFT_TABLE_NAMES", json.dumps(sc_settings.table_names))
    return sc_settings


def test_status_quarantine_list_and_retry(env, capsys, tmp_path):
    # GIVEN a migrated seed with bad rows, before any verify or backup
    make_tables(env)
    asyncio.run(seed(env, 20, 40, 0.1, 9))
    run_forward_mirror(env)
    capsys.readouterr()
    # WHEN status runs as JSON
    assert cli(env, "status", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    # THEN it shows the default mode, no verify and no backup yet, what each consumer acknowledged, the quarantine
    assert data["mode"] == "old" and data["verify"] is None and data["backup"] is None
    forward = [row for row in data["consumers"]["shards"] if row["direction"] == "forward"]
    assert {row["table"] for row in forward} == {env.physical_name("sc-accounts"), env.physical_name("sc-repositories")}
    assert all(row["confirmed"] is not None and row["pending"] == 0 for row in forward)
    assert data["quarantine"]["total"] == sum(data["quarantine"]["by_reason"].values()) > 0
    # AND its counts (streamed, reasons only) agree with the full listing, reason by reason
    assert cli(env, "quarantine", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    by_reason: dict[str, int] = {}
    for entry in listed:
        by_reason[entry["reason"]] = by_reason.get(entry["reason"], 0) + 1
    assert data["quarantine"]["by_reason"] == by_reason and data["quarantine"]["total"] == len(listed)
    # AND the cutover gate counts the same, refusing unless the operator accepts them
    refused, accepted = check_quarantine(env, accept=False), check_quarantine(env, accept=True)
    assert not refused.ok and refused.detail.startswith(f"{len(listed)} item(s) (")
    assert all(f"{n} {reason}" in refused.detail for reason, n in by_reason.items())
    assert accepted.ok and "accepted" in accepted.detail
    # WHEN verify runs (exit 0: converged) and a backup record and the mode exist
    assert cli(env, "verify", "--settle", "0", "--segments", "2") == 0
    client = aws.dynamodb(env)
    client.put_item(TableName=env.control_table, Item=to_wire({"PK": "MODE", "SK": "MODE", "mode": "freeze"}))
    client.put_item(TableName=env.control_table, Item=to_wire(
        {"PK": "BACKUP", "SK": "2026-01-02T03:04:05.000Z#sc-accounts#on-demand", "table": "sc-accounts",
         "kind": "on-demand", "created_at": 1767323045, "status": "AVAILABLE"}))
    capsys.readouterr()
    assert cli(env, "status", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    # THEN status shows them
    assert data["mode"] == "freeze"
    assert data["verify"]["ok"] is True and data["verify"]["missing"] == 0
    assert data["backup"]["kind"] == "on-demand" and data["backup"]["table"] == "sc-accounts"
    assert cli(env, "status") == 0
    screen = capsys.readouterr().out
    assert "mode: freeze" in screen and "last verify: ok" in screen and "last backup: on-demand" in screen
    # WHEN the quarantine is listed by reason
    assert cli(env, "quarantine", "list", "--json", "--reason", "invalid_email") == 0
    emails = json.loads(capsys.readouterr().out)
    assert emails and all(e["reason"] == "invalid_email" for e in emails)
    # AND one bad account's email is fixed at the source, without its stream record being applied
    fixed = next(e for e in emails if e["table"] == "sc-accounts")
    client.update_item(TableName=env.physical_name("sc-accounts"), Key=to_wire({"accountId": fixed["key"][0]}),
                       UpdateExpression="SET email = :e", ExpressionAttributeValues={":e": {"S": "ok@example.com"}})
    # THEN retry takes exactly that one out of quarantine
    assert cli(env, "quarantine", "retry", "--reason", "invalid_email") == 0
    out = capsys.readouterr().out
    assert f"retried {len(emails)}: 1 left quarantine" in out
    assert cli(env, "quarantine", "list", "--json", "--reason", "invalid_email") == 0
    assert len(json.loads(capsys.readouterr().out)) == len(emails) - 1
    # WHEN a target item disappears, THEN verify exits 1 and its JSON report says why
    profile = f"ACCOUNT#{fixed['key'][0]}"
    client.delete_item(TableName=env.target_table, Key=to_wire({"PK": profile, "SK": "PROFILE"}))
    with pytest.raises(SystemExit) as exited:
        cli(env, "verify", "--settle", "0", "--json-file", str(tmp_path / "v.json"))
    assert exited.value.code == 1
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["ok"] is False and report["missing"] == 1
    assert report["samples"]["missing"][0]["target_key"] == [profile, "PROFILE"]


def test_verify_on_a_missing_table_is_one_line_and_exit_2(env, capsys):
    # GIVEN no tables at all / WHEN verify runs / THEN exit 2 and one line naming the table
    assert cli(env, "verify", "--settle", "0") == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "not found" in lines[0]
