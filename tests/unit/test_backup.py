"""Backups with moto: create (on-demand + PITR export), records, latest, wait, prune, and the CLI's refusals.

moto implements CreateBackup/DescribeBackup/DeleteBackup, the PITR switch and
a partial ExportTableToPointInTime (one gzipped data file below
`<prefix>/AWSDynamoDB/<id>/data/`, no manifests, written by a thread).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from click.testing import CliRunner
from moto import mock_aws

from backfill.export import parse_source
from shared.cli import backup as backup_cli
from shared.cli.main import cli, main
from shared.core.errors import ConfigError, UsageError
from shared.core.settings import Settings, load_settings
from shared.ops.backup import (
    DAY_S,
    EXPORT,
    ON_DEMAND,
    BackupManager,
    BackupRecord,
    backup_gate_problems,
    latest_backups,
)
from shared.ops.tables import create_tables
from shared.store import keys

BUCKET = "dynashift-test-backups"
ACCOUNT = "123456789012"
NOW = round(time.time(), 3)  # "now" for the injected clocks; moto and the CLI use the real clock


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def settings(aws: None) -> Settings:
    settings = load_settings(backup_bucket=BUCKET)
    create_tables(settings, with_sources=True)
    s3().create_bucket(Bucket=BUCKET)
    return settings


def manager(settings: Settings, now: float = NOW) -> BackupManager:
    return BackupManager(settings, clock=lambda: now, sleep=lambda _s: None)


def ddb() -> Any:
    return boto3.client("dynamodb", region_name="us-east-1")  # the default session caches the client's model


def s3() -> Any:
    return boto3.client("s3", region_name="us-east-1")


def enable_pitr(*tables: str) -> None:
    client = ddb()
    for table in tables:
        client.update_continuous_backups(
            TableName=table, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
        )


def control_items(settings: Settings) -> list[dict]:
    return ddb().query(
        TableName=settings.control_table,
        KeyConditionExpression="PK = :pk",
        ExpressionAttributeValues={":pk": {"S": keys.BACKUP_PK}},
    )["Items"]


def aws_backups() -> list[dict]:
    return ddb().list_backups()["BackupSummaries"]


def s3_keys(prefix: str = "") -> list[str]:
    response = s3().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in response.get("Contents", [])]


def age_in_moto(record: BackupRecord, when: float) -> None:
    """Make AWS's own clock agree that an 'old' backup is old (moto stamps everything with the real now)."""
    from moto.dynamodb.models import dynamodb_backends
    from moto.s3.models import s3_backends

    moment = datetime.fromtimestamp(when, tz=UTC).replace(tzinfo=None)
    if record.kind == ON_DEMAND:
        dynamodb_backends[ACCOUNT]["us-east-1"].backups[record.arn].creation_date_time = moment
    else:
        bucket = s3_backends[ACCOUNT]["aws"].buckets[BUCKET]
        for key in s3_keys(record.s3_uri.split(BUCKET + "/", 1)[1] + "/"):
            bucket.keys[key].last_modified = moment


# ------------------------------------------------------------------- create
def test_export_without_pitr_is_refused_with_the_command_and_starts_nothing(settings):
    # GIVEN legacy tables without point-in-time recovery
    # WHEN a backup (both kinds) is asked for
    with pytest.raises(UsageError) as refused:
        manager(settings).start()
    # THEN one message names the tables and the exact command, and nothing was started or recorded
    message = str(refused.value)
    assert "point-in-time recovery is off for sc-accounts, sc-repositories" in message
    assert "aws dynamodb update-continuous-backups --table-name sc-accounts" in message
    assert "--enable-pitr" in message
    assert aws_backups() == [] and control_items(settings) == [] and s3_keys() == []


def test_create_makes_and_records_both_kinds_for_every_legacy_table(settings):
    # GIVEN tables without PITR / WHEN creating with enable_pitr and waiting
    m = manager(settings)
    records = m.wait(m.start(enable_pitr=True))
    # THEN per table one available on-demand backup and one completed export
    assert sorted((r.table, r.kind, r.status) for r in records) == [
        ("sc-accounts", EXPORT, "COMPLETED"), ("sc-accounts", ON_DEMAND, "AVAILABLE"),
        ("sc-repositories", EXPORT, "COMPLETED"), ("sc-repositories", ON_DEMAND, "AVAILABLE"),
    ]
    assert len(aws_backups()) == 2
    # AND each export lies in a prefix of its own below backup_prefix, where moto wrote its data
    for record in (r for r in records if r.kind == EXPORT):
        assert record.s3_uri.startswith(f"s3://{BUCKET}/dynashift-backups/{record.table}/")
        prefix = record.s3_uri.removeprefix(f"s3://{BUCKET}/")
        assert [k for k in s3_keys(prefix + "/") if "/AWSDynamoDB/" in k and k.endswith(".gz")]
    # AND the control items have the documented layout
    items = {i["SK"]["S"]: i for i in control_items(settings)}
    assert len(items) == 4
    for record in records:
        item = items[record.sk]
        assert record.sk.startswith(datetime.fromtimestamp(NOW, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S"))
        assert record.sk.endswith(f"#{record.table}#{record.kind}")
        assert item["table"]["S"] == record.table and item["kind"]["S"] == record.kind
        assert item["arn"]["S"] == record.arn and float(item["created_at"]["N"]) == NOW
        assert item["status"]["S"] == record.status
        assert ("s3_uri" in item) == (record.kind == EXPORT)


def test_on_demand_only_needs_no_bucket_and_no_pitr(aws):
    # GIVEN no backup_bucket and no PITR
    settings = load_settings()
    create_tables(settings, with_sources=True)
    # WHEN only on-demand backups are asked for / THEN they are made
    records = manager(settings).start([ON_DEMAND])
    assert {r.kind for r in records} == {ON_DEMAND} and len(aws_backups()) == 2
    # AND an export without a bucket is refused, naming the setting
    enable_pitr("sc-accounts", "sc-repositories")
    with pytest.raises(ConfigError, match="backup_bucket is not set"):
        manager(settings).start([EXPORT])


def test_a_missing_bucket_is_refused_before_anything_starts(aws):
    settings = load_settings(backup_bucket="no-such-bucket-here")
    create_tables(settings, with_sources=True)
    enable_pitr("sc-accounts", "sc-repositories")
    with pytest.raises(ConfigError, match="'no-such-bucket-here' does not exist"):
        manager(settings).start()
    assert aws_backups() == [] and control_items(settings) == []


def test_missing_legacy_table_is_one_clear_error(aws, capsys):
    settings = load_settings(backup_bucket=BUCKET)
    # GIVEN no tables at all / THEN the missing legacy table is named (the control table is not needed)
    assert main(["backup", "create", "--kind", "on_demand"]) == 2
    err = capsys.readouterr().err
    assert "legacy table sc-accounts" in err and "control table" not in err and "tables create" not in err
    # GIVEN only dynashift's own tables / THEN the missing legacy table is named
    create_tables(settings, with_sources=False)
    with pytest.raises(Exception, match="legacy table sc-accounts sc-accounts not found"):
        manager(settings).start([ON_DEMAND])


def test_failed_export_makes_the_cli_fail_with_the_reason(settings, monkeypatch, capsys):
    # GIVEN the bucket disappears after the check (moto then fails the export with S3NoSuchBucket)
    enable_pitr("sc-accounts", "sc-repositories")
    monkeypatch.setattr(BackupManager, "_require_bucket", lambda self, bucket: None)
    monkeypatch.setenv("DYNASHIFT_BACKUP_BUCKET", "vanished-bucket")
    # WHEN backing up through the CLI
    code = main(["backup", "create", "--kind", "export"])
    # THEN exit 1, one error line that says which exports failed and why, and no dry-run line
    captured = capsys.readouterr()
    assert code == 1
    errors = [line for line in captured.err.splitlines() if line.strip()]
    assert len(errors) == 1 and "2 of 2 backups did not complete" in errors[0] and "S3NoSuchBucket" in errors[0]
    assert "--dry-run" not in captured.out
    # AND the records say FAILED
    assert {i["status"]["S"] for i in control_items(load_settings())} == {"FAILED"}


def test_cli_create_prints_the_dry_run_line_for_each_export(settings, monkeypatch, capsys):
    monkeypatch.setenv("DYNASHIFT_BACKUP_BUCKET", BUCKET)
    assert main(["backup", "create", "--enable-pitr"]) == 0
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines() if "backfill run --dry-run" in line]
    assert len(lines) == 2
    exports = {r.table: r for r in BackupManager(load_settings(backup_bucket=BUCKET)).records() if r.kind == EXPORT}
    for table, line in zip(("sc-accounts", "sc-repositories"), lines, strict=True):
        # THEN the line is exactly the runbook's dry run for that table's export
        assert line == (f"dynashift backfill run --dry-run --source export:{exports[table].s3_uri} "
                        f"--table {table} --json-file dry-run-{table}.json")
        assert exports[table].s3_uri.startswith(f"s3://{BUCKET}/dynashift-backups/{table}/")
        # AND the backfill reads that source as the export's own S3 prefix
        location = parse_source(line.split("--source export:", 1)[1].split()[0])
        assert location.bucket == BUCKET and location.prefix.startswith(f"dynashift-backups/{table}/")


def test_no_wait_records_in_progress_and_list_refreshes(settings, monkeypatch, capsys):
    # GIVEN a record left IN_PROGRESS (as --no-wait or a crash leaves it)
    enable_pitr("sc-accounts", "sc-repositories")
    m = manager(settings)
    records = m.start([EXPORT])
    for record in records:  # as if AWS had not finished when we asked
        m._update_status(BackupRecord(**{**record.__dict__, "status": "IN_PROGRESS"}))
    assert {i["status"]["S"] for i in control_items(settings)} == {"IN_PROGRESS"}
    # WHEN listing / THEN unfinished records are re-read from AWS and stored
    assert main(["backup", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in listed] == ["COMPLETED", "COMPLETED"]
    assert {i["status"]["S"] for i in control_items(settings)} == {"COMPLETED"}
    assert {r.status for r in m.records()} == {"COMPLETED"}


# -------------------------------------------------------------------- latest
def test_latest_backups_is_the_newest_completed_per_table_and_kind(settings):
    enable_pitr("sc-accounts", "sc-repositories")
    m = manager(settings, NOW - 3600)
    old = m.wait(m.start())
    m.clock = lambda: NOW
    new = m.wait(m.start([ON_DEMAND]))
    # GIVEN a newer backup that failed (a record only)
    failed = BackupRecord(table="sc-accounts", kind=EXPORT, arn="arn:failed", created_at=NOW + 5, status="FAILED",
                          s3_uri=f"s3://{BUCKET}/dynashift-backups/sc-accounts/x")
    m._put(failed)
    latest = latest_backups(settings)
    # THEN on-demand: the newer ones; export: the older completed one, not the failed newer one
    assert {t: {k: r.arn for k, r in kinds.items()} for t, kinds in latest.items()} == {
        r.table: {ON_DEMAND: r.arn, EXPORT: next(o.arn for o in old if o.table == r.table and o.kind == EXPORT)}
        for r in new
    }
    assert latest_backups(settings, completed_only=False)["sc-accounts"][EXPORT].arn == "arn:failed"


def test_backup_gate_problems(settings):
    # GIVEN no backups / THEN one problem per legacy table
    problems = backup_gate_problems(settings, now=NOW)
    assert len(problems) == 2 and all("no completed backup" in p for p in problems)
    # GIVEN on-demand backups taken at NOW / THEN fresh passes, stale is named
    manager(settings).start([ON_DEMAND])
    assert backup_gate_problems(settings, now=NOW + 60) == []
    stale = backup_gate_problems(settings, now=NOW + settings.backup_max_age_s + 1)
    assert len(stale) == 2 and all("older than backup_max_age_s" in p for p in stale)


# ---------------------------------------------------------------------- wait
def test_wait_polls_with_backoff_until_final_and_reports_each_change(settings, monkeypatch):
    # GIVEN a backup AWS reports as CREATING twice before AVAILABLE
    statuses = iter(["CREATING", "CREATING", "AVAILABLE"])
    sleeps: list[float] = []
    m = BackupManager(settings, clock=lambda: NOW, sleep=sleeps.append)
    monkeypatch.setattr(m, "refresh", lambda r: BackupRecord(**{**r.__dict__, "status": next(statuses)}))
    record = BackupRecord(table="sc-accounts", kind=ON_DEMAND, arn="arn:x", created_at=NOW, status="CREATING")
    seen: list[str] = []
    # WHEN waiting
    final = m.wait([record], on_update=lambda r: seen.append(r.status), first_delay=1.0, max_delay=2.0)
    # THEN it polled until AVAILABLE, sleeping longer each time up to the cap
    assert [r.status for r in final] == ["AVAILABLE"]
    assert seen == ["CREATING", "CREATING", "AVAILABLE"]
    assert sleeps == [1.0, 1.5]


# --------------------------------------------------------------------- prune
def make_old_and_new(settings: Settings) -> tuple[list[BackupRecord], list[BackupRecord]]:
    enable_pitr("sc-accounts", "sc-repositories")
    old_clock = NOW - 10 * DAY_S
    m = manager(settings, old_clock)
    old = m.wait(m.start())
    for record in old:
        age_in_moto(record, old_clock)
    m.clock = lambda: NOW - DAY_S
    new = m.wait(m.start())
    return old, new


def test_prune_deletes_only_what_is_older_than_the_retention(settings):
    old, new = make_old_and_new(settings)
    m = manager(settings)
    cutoff, candidates = m.prune_candidates(7)
    assert {r.sk for r in candidates} == {r.sk for r in old}
    report = m.prune(candidates, cutoff)
    # THEN the old backups, export objects and records are gone
    assert sorted(report.backups_deleted) == sorted(r.arn for r in old if r.kind == ON_DEMAND)
    assert report.objects_deleted == 2 and report.records_removed == 4 and report.kept == []
    assert {b["BackupArn"] for b in aws_backups()} == {r.arn for r in new if r.kind == ON_DEMAND}
    for record in old:
        if record.kind == EXPORT:
            assert s3_keys(record.s3_uri.removeprefix(f"s3://{BUCKET}/")) == []
    # AND everything newer is untouched, tables included
    assert {i["SK"]["S"] for i in control_items(settings)} == {r.sk for r in new}
    for record in new:
        if record.kind == EXPORT:
            assert s3_keys(record.s3_uri.removeprefix(f"s3://{BUCKET}/") + "/")
    tables = ddb().list_tables()["TableNames"]
    assert {"sc-accounts", "sc-repositories"} <= set(tables)


def test_prune_keeps_what_aws_dates_within_the_retention(settings):
    # GIVEN records that claim to be old, but AWS's own dates say the backup and objects are new
    enable_pitr("sc-accounts", "sc-repositories")
    lying = manager(settings, NOW - 10 * DAY_S).start()
    m = manager(settings, time.time() + 60)  # moto dated the backups and objects with the real clock
    cutoff, candidates = m.prune_candidates(7)
    report = m.prune(candidates, cutoff)
    # THEN nothing is deleted, and each is reported as kept with the reason
    assert report.backups_deleted == [] and report.objects_deleted == 0 and report.records_removed == 0
    assert len(report.kept) == 4
    assert all("within the retention" in why or "newer than the retention" in why for _, why in report.kept)
    assert len(aws_backups()) == 2 and len(control_items(settings)) == len(lying)


def test_prune_never_touches_an_export_outside_backup_prefix(settings):
    s3().put_object(Bucket=BUCKET, Key="elsewhere/x/data.gz", Body=b"x")
    record = BackupRecord(table="sc-accounts", kind=EXPORT, arn="arn:e", created_at=NOW - 30 * DAY_S,
                          status="COMPLETED", s3_uri=f"s3://{BUCKET}/elsewhere/x")
    m = manager(settings)
    m._put(record)
    cutoff, candidates = m.prune_candidates(7)
    report = m.prune(candidates, cutoff)
    assert report.records_removed == 0 and "not below backup_prefix" in report.kept[0][1]
    assert s3_keys("elsewhere/") == ["elsewhere/x/data.gz"]


def test_prune_cli_refuses_without_yes_when_nobody_can_answer(settings, capsys):
    make_old_and_new(settings)
    # WHEN pruning without --yes and stdin is not a terminal (pytest's)
    code = main(["backup", "prune", "--retention-days", "7"])
    captured = capsys.readouterr()
    # THEN exit 2 with one line, after showing what it would delete; nothing is deleted
    assert code == 2
    assert [line for line in captured.err.splitlines() if line.strip()] == [
        "dynashift: error: backup prune: not confirmed and stdin is not a terminal; add --yes to delete"
    ]
    assert "to be deleted" in captured.out
    assert len(aws_backups()) == 4 and len(control_items(settings)) == 8
    # WHEN --yes / THEN the old ones go
    assert main(["backup", "prune", "--retention-days", "7", "--yes"]) == 0
    assert len(aws_backups()) == 2 and len(control_items(settings)) == 4


def test_prune_cli_asks_on_a_terminal_and_a_no_deletes_nothing(settings, monkeypatch):
    make_old_and_new(settings)
    monkeypatch.setattr(backup_cli, "stdin_is_interactive", lambda: True)
    result = CliRunner().invoke(cli, ["backup", "prune"], input="n\n")
    assert "delete these 4 backups?" in result.output
    assert result.exit_code != 0 and len(aws_backups()) == 4
    result = CliRunner().invoke(cli, ["backup", "prune"], input="y\n")
    assert result.exit_code == 0, result.output
    assert len(aws_backups()) == 2


def test_prune_with_nothing_old_says_so(settings, capsys):
    assert main(["backup", "prune", "--yes"]) == 0
    assert "nothing is older than 7 days" in capsys.readouterr().out


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    ("override", "named"),
    [({"backup_bucket": "Not_A_Bucket"}, "backup_bucket"), ({"backup_prefix": "//"}, "backup_prefix"),
     ({"backup_prefix": "a/../b"}, "backup_prefix"), ({"backup_retention_days": 0}, "backup_retention_days"),
     ({"backup_max_age_s": 0}, "backup_max_age_s")],
)
def test_bad_backup_settings_name_the_setting(override, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(**override)


def test_backup_prefix_is_normalised():
    assert load_settings(backup_prefix="/backups/prod/").backup_prefix == "backups/prod"


def test_retention_below_one_day_is_a_usage_error(capsys):
    assert main(["backup", "prune", "--retention-days", "0"]) == 2
    assert "--retention-days" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["backup"], ["backup", "create"], ["backup", "list"], ["backup", "prune"],
                                     ["enable-streams"]], ids=" ".join)
def test_every_backup_command_has_help(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage:" in out and len(out.splitlines()) > 3


# ------------------------------------------------- before the stack (issue 13)
def create_legacy_only() -> None:
    for name, key in (("sc-accounts", "accountId"), ("sc-repositories", "repoId")):
        ddb().create_table(TableName=name, AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                           KeySchema=[{"AttributeName": key, "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")


@pytest.fixture
def before_stack(aws: None, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Phase 2: the legacy tables and the bucket exist, the stack (control table included) does not."""
    create_legacy_only()
    s3().create_bucket(Bucket=BUCKET)
    s3().put_object(Bucket=BUCKET, Key="assets/logo.png", Body=b"the users' own object")
    monkeypatch.setenv("DYNASHIFT_BACKUP_BUCKET", BUCKET)
    return load_settings(backup_bucket=BUCKET)


def test_backup_create_and_list_work_without_the_control_table(before_stack, capsys):
    settings = before_stack
    # WHEN backing up through the CLI before the stack exists
    assert main(["backup", "create", "--enable-pitr"]) == 0
    out = capsys.readouterr().out
    # THEN the backups were made, the dry run is printed per table, and no table was created
    assert len(aws_backups()) == 2
    assert out.count("dynashift backfill run --dry-run --source export:") == 2
    assert set(ddb().list_tables()["TableNames"]) == {"sc-accounts", "sc-repositories"}
    # AND `backup list` finds them in AWS's own listings
    assert main(["backup", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted((r["table"], r["kind"], r["status"]) for r in listed) == [
        ("sc-accounts", EXPORT, "COMPLETED"), ("sc-accounts", ON_DEMAND, "AVAILABLE"),
        ("sc-repositories", EXPORT, "COMPLETED"), ("sc-repositories", ON_DEMAND, "AVAILABLE"),
    ]
    assert all(r["source"] == r["table"] for r in listed)
    # AND the cutover gate sees them too
    assert backup_gate_problems(settings) == []
    # AND the control table, created later by the stack, merges with the listings (no duplicates)
    create_tables(settings, with_sources=False)
    assert len(manager(settings).records()) == 4


def test_listings_ignore_backups_and_exports_that_are_not_ours(before_stack):
    settings = before_stack
    enable_pitr("sc-accounts", "sc-repositories")
    # GIVEN someone else's backup and export of a legacy table
    ddb().create_backup(TableName="sc-accounts", BackupName="nightly-sc-accounts")
    arn = ddb().describe_table(TableName="sc-accounts")["Table"]["TableArn"]
    ddb().export_table_to_point_in_time(TableArn=arn, S3Bucket=BUCKET, S3Prefix="elsewhere/sc-accounts",
                                        ExportFormat="DYNAMODB_JSON")
    # WHEN listing / THEN neither is listed (so prune never deletes them)
    assert manager(settings).records() == []


def test_prune_works_without_the_control_table(before_stack, monkeypatch):
    from moto.dynamodb.models.table_export import TableExport

    # moto's DescribeExport has no StartTime: give it one (AWS's date of the export), settable per export
    original = TableExport.response
    monkeypatch.setattr(TableExport, "response",
                        lambda self: {**original(self), "StartTime": getattr(self, "start_time", time.time())})
    settings = before_stack
    enable_pitr("sc-accounts", "sc-repositories")
    # GIVEN backups made 10 days ago (as AWS dates them) and new ones, no control table
    old = manager(settings, NOW - 10 * DAY_S).wait(manager(settings, NOW - 10 * DAY_S).start())
    from moto.dynamodb.models import dynamodb_backends

    for export in dynamodb_backends[ACCOUNT]["us-east-1"].table_exports.values():
        export.start_time = NOW - 10 * DAY_S
    for record in old:
        age_in_moto(record, NOW - 10 * DAY_S)
    aged = {r.arn: r for r in manager(settings).records()}
    new = manager(settings).wait(manager(settings).start())
    # WHEN pruning with a 7-day retention
    m = manager(settings)
    cutoff, candidates = m.prune_candidates(7)
    assert {r.arn for r in candidates} == {r.arn for r in old} == set(aged)
    report = m.prune(candidates, cutoff)
    # THEN the old backups and export objects are gone, the new ones and the users' objects stay
    assert len(report.backups_deleted) == 2 and report.objects_deleted == 2 and report.kept == []
    assert {b["BackupArn"] for b in aws_backups()} == {r.arn for r in new if r.kind == ON_DEMAND}
    assert s3_keys("assets/") == ["assets/logo.png"]
    # AND the pruned exports, still listed by AWS, are no longer shown
    assert {r.arn for r in manager(settings).records()} == {r.arn for r in new}
