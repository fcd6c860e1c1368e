"""Backups and enable-streams on DynamoDB Local, which has no backups, PITR or exports, but does have streams."""

from __future__ import annotations

import json

import pytest

from shared.cli.main import main
from shared.core import aws
from shared.core.errors import NotSupportedHere
from shared.core.settings import Settings
from shared.ops.backup import BackupManager, BackupRecord, backup_gate_problems
from shared.ops.tables import create_tables

pytestmark = pytest.mark.integration


def use_in_cli(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """Point the CLI (which builds its own settings) at the test's engine and tables."""
    monkeypatch.setenv("DYNASHIFT_ENDPOINT_URL", settings.effective_endpoint or "")
    monkeypatch.setenv("DYNASHIFT_TABLE_NAMES", json.dumps(settings.table_names))
    monkeypatch.setenv("DYNASHIFT_TARGET_TABLE", settings.target_table)
    monkeypatch.setenv("DYNASHIFT_CONTROL_TABLE", settings.control_table)


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize(("kind", "operation"), [("on_demand", "CreateBackup"),
                                                 ("both", "DescribeContinuousBackups")])
def test_backup_create_on_dynamodb_local_says_so_in_one_line(sc_settings, monkeypatch, capsys, kind, operation):
    # GIVEN DynamoDB Local with the migration's tables
    create_tables(sc_settings, with_sources=True)
    use_in_cli(monkeypatch, sc_settings)
    # WHEN a backup is asked for
    code = main(["backup", "create", "--kind", kind, "--bucket", "some-bucket"])
    # THEN exit 2 and one line that says DynamoDB Local has none, naming the operation and the way out
    assert code == 2
    line = one_error_line(capsys)
    assert f"DynamoDB Local has no backups ({operation})" in line
    assert "--skip-backup-check" in line
    # AND nothing was recorded
    assert BackupManager(sc_settings).records() == []


def test_backup_list_and_prune_on_dynamodb_local_have_nothing_to_do(sc_settings, monkeypatch, capsys):
    create_tables(sc_settings, with_sources=True)
    use_in_cli(monkeypatch, sc_settings)
    assert main(["backup", "list"]) == 0
    assert "no backups recorded yet" in capsys.readouterr().out
    assert main(["backup", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["backup", "prune", "--yes"]) == 0
    assert "nothing is older than 7 days" in capsys.readouterr().out


def test_backup_gate_and_refresh_on_dynamodb_local(sc_settings):
    create_tables(sc_settings, with_sources=True)
    # GIVEN no backups / THEN the gate says in one line that DynamoDB Local has none
    problems = backup_gate_problems(sc_settings)
    assert len(problems) == 1 and "DynamoDB Local has no backups" in problems[0]
    # GIVEN an injected completed record (as the demo or a test may write) / THEN the gate passes on it
    manager = BackupManager(sc_settings)
    for _, physical in manager.legacy_tables():
        manager._put(BackupRecord(table=physical, kind="on_demand", arn=f"arn:injected:{physical}",
                                  created_at=manager.clock(), status="AVAILABLE"))
    assert backup_gate_problems(sc_settings) == []
    # AND refreshing an unfinished record there is one NotSupportedHere line, not a crash
    pending = BackupRecord(table="x-table", kind="export", arn="arn:pending", created_at=1.0, status="IN_PROGRESS")
    with pytest.raises(NotSupportedHere, match=r"DynamoDB Local has no backups \(DescribeExport\)"):
        manager.refresh(pending)


def create_without_stream(client, name: str, key: str, view: str | None = None) -> None:
    extra = {"StreamSpecification": {"StreamEnabled": True, "StreamViewType": view}} if view else {}
    client.create_table(TableName=name, AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": key, "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST",
                        **extra)


def test_enable_streams_on_dynamodb_local(sc_settings, monkeypatch, capsys):
    # GIVEN legacy tables created without streams
    client = aws.dynamodb(sc_settings)
    create_without_stream(client, sc_settings.physical_name("sc-accounts"), "accountId")
    create_without_stream(client, sc_settings.physical_name("sc-repositories"), "repoId")
    use_in_cli(monkeypatch, sc_settings)
    # WHEN enabling through the CLI
    assert main(["enable-streams"]) == 0
    out = capsys.readouterr().out
    # THEN both stream NEW_AND_OLD_IMAGES and the sam line carries their real ARNs
    arns = {}
    for logical in ("sc-accounts", "sc-repositories"):
        table = client.describe_table(TableName=sc_settings.physical_name(logical))["Table"]
        assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
        arns[logical] = table["LatestStreamArn"]
    sam_line = next(line for line in out.splitlines() if "sam deploy" in line)
    assert f"AccountsStreamArn={arns['sc-accounts']}" in sam_line
    assert f"RepositoriesStreamArn={arns['sc-repositories']}" in sam_line
    # WHEN run again / THEN it is idempotent
    assert main(["enable-streams"]) == 0
    assert out.count(": enabled") == 2 and capsys.readouterr().out.count("already enabled") == 2


def test_enable_streams_refuses_another_view_type_on_dynamodb_local(sc_settings, monkeypatch, capsys):
    client = aws.dynamodb(sc_settings)
    create_without_stream(client, sc_settings.physical_name("sc-accounts"), "accountId", "NEW_IMAGE")
    create_without_stream(client, sc_settings.physical_name("sc-repositories"), "repoId")
    use_in_cli(monkeypatch, sc_settings)
    assert main(["enable-streams"]) == 2
    assert "NEW_IMAGE" in one_error_line(capsys)
    repos = client.describe_table(TableName=sc_settings.physical_name("sc-repositories"))["Table"]
    assert not (repos.get("StreamSpecification") or {}).get("StreamEnabled")
