"""`enable-streams` with moto, the `sam deploy` line, and the example samconfig.toml."""

from __future__ import annotations

import re
import shlex
import shutil
import tomllib
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from shared.cli.main import main
from shared.core.definition import get_definition
from shared.core.errors import ConfigError, StoreError, UsageError
from shared.core.settings import PROJECT_ROOT, Settings, load_settings
from shared.ops.streams_setup import (
    StreamResult,
    deploy_overrides,
    enable_streams,
    sam_deploy_command,
    write_samconfig,
)
from shared.ops.tables import load_template

LEGACY = ("sc-accounts", "sc-repositories")


def ddb() -> Any:
    return boto3.client("dynamodb", region_name="us-east-1")


def create_legacy(name: str, key: str, stream_view: str | None = None) -> None:
    extra = {"StreamSpecification": {"StreamEnabled": True, "StreamViewType": stream_view}} if stream_view else {}
    ddb().create_table(TableName=name, AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                       KeySchema=[{"AttributeName": key, "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST",
                       **extra)


def stream_of(name: str) -> tuple[str | None, str | None]:
    table = ddb().describe_table(TableName=name)["Table"]
    spec = table.get("StreamSpecification") or {}
    return (spec.get("StreamViewType") if spec.get("StreamEnabled") else None), table.get("LatestStreamArn")


@pytest.fixture
def settings() -> Iterator[Settings]:
    with mock_aws():
        yield load_settings()


def test_enables_new_and_old_images_and_is_idempotent(settings):
    # GIVEN legacy tables without streams
    create_legacy("sc-accounts", "accountId")
    create_legacy("sc-repositories", "repoId")
    # WHEN enabling
    first = enable_streams(settings, sleep=lambda _s: None)
    # THEN both stream NEW_AND_OLD_IMAGES, and the results carry the tables' stream ARNs
    assert [(r.table, r.outcome) for r in first] == [("sc-accounts", "enabled"), ("sc-repositories", "enabled")]
    for result in first:
        view, arn = stream_of(result.physical)
        assert view == "NEW_AND_OLD_IMAGES" and arn == result.stream_arn
        assert f":table/{result.physical}/stream/" in result.stream_arn
    # WHEN enabling again / THEN nothing changes and it says so
    again = enable_streams(settings, sleep=lambda _s: None)
    assert [(r.outcome, r.stream_arn) for r in again] == [("already enabled", r.stream_arn) for r in first]


def test_a_stream_with_another_view_type_is_refused_before_anything_changes(settings, capsys):
    # GIVEN sc-accounts without a stream, sc-repositories with a KEYS_ONLY stream
    create_legacy("sc-accounts", "accountId")
    create_legacy("sc-repositories", "repoId", "KEYS_ONLY")
    # WHEN enabling through the CLI / THEN exit 2 with one line naming the table and the view type
    assert main(["enable-streams"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "sc-repositories" in err[0] and "KEYS_ONLY" in err[0]
    # AND the other table was left alone
    assert stream_of("sc-accounts") == (None, None)
    assert stream_of("sc-repositories")[0] == "KEYS_ONLY"


def test_a_missing_legacy_table_is_one_line(settings, capsys):
    create_legacy("sc-accounts", "accountId")
    assert main(["enable-streams"]) == 2
    err = capsys.readouterr().err
    assert "legacy table sc-repositories (sc-repositories) not found" in err
    with pytest.raises(StoreError):
        enable_streams(settings)


def test_cli_prints_the_sam_deploy_line_with_the_stream_arns(settings, capsys, monkeypatch):
    # GIVEN physical names that differ from the logical ones
    monkeypatch.setenv("DYNASHIFT_TABLE_NAMES", '{"sc-accounts": "prod-accounts", "sc-repositories": "prod-repos"}')
    create_legacy("prod-accounts", "accountId")
    create_legacy("prod-repos", "repoId")
    assert main(["enable-streams"]) == 0
    out = capsys.readouterr().out
    region, overrides = printed_deploy_line(out)
    # THEN the line names exactly the template's parameters, with the real ARNs
    assert overrides == {
        "AccountsTableName": "prod-accounts", "AccountsStreamArn": stream_of("prod-accounts")[1],
        "RepositoriesTableName": "prod-repos", "RepositoriesStreamArn": stream_of("prod-repos")[1],
        "BackupBucketName": "BACKUP_BUCKET_NAME", "BackupPrefix": "dynashift-backups", "AlarmEmail": "ALARM_EMAIL",
    }
    assert region == "us-east-1"


def printed_deploy_line(out: str) -> tuple[str, dict[str, str]]:
    """The region and the parameter overrides of the `sam deploy` line enable-streams printed."""
    line = next(line.strip() for line in out.splitlines() if line.strip().startswith("sam deploy"))
    words = shlex.split(line)
    assert words[:3] == ["sam", "deploy", "--region"] and words[4] == "--parameter-overrides", line
    return words[3], dict(word.split("=", 1) for word in words[5:])


def required_parameters() -> set[str]:
    return {name for name, spec in load_template()["Parameters"].items() if "Default" not in spec}


def test_printed_line_carries_every_required_parameter_of_the_template(settings, capsys, monkeypatch):
    # GIVEN legacy tables, a backup bucket in the settings, and a region
    monkeypatch.setenv("DYNASHIFT_BACKUP_BUCKET", "radiant-assets")
    monkeypatch.setenv("DYNASHIFT_REGION", "us-east-1")
    create_legacy("sc-accounts", "accountId")
    create_legacy("sc-repositories", "repoId")
    # WHEN enable-streams runs (its main path, against moto), with an alarm address
    assert main(["enable-streams", "--alarm-email", "ops@example.com"]) == 0
    out = capsys.readouterr().out
    region, overrides = printed_deploy_line(out)
    parameters = load_template()["Parameters"]
    # THEN every parameter of template.yaml without a default is on the line, and only template parameters
    assert required_parameters() <= set(overrides)
    assert set(overrides) <= set(parameters)
    assert overrides["BackupBucketName"] == "radiant-assets"
    assert overrides["BackupPrefix"] == "dynashift-backups"
    assert overrides["AlarmEmail"] == "ops@example.com" and "AlarmTopicArn" not in overrides
    assert region == "us-east-1"
    # AND every value passes its parameter's AllowedPattern: CloudFormation takes the line as printed
    # (but the stream ARNs: moto's stream labels have microseconds, AWS's milliseconds)
    for name, value in overrides.items():
        pattern = None if name.endswith("StreamArn") else parameters[name].get("AllowedPattern")
        assert pattern is None or re.fullmatch(pattern, value), (name, value)
    # AND no placeholder is left to replace, and the build comes first
    assert "placeholder" not in out
    assert "make sam-build" in out


def test_unknown_values_are_placeholders_the_template_refuses(settings):
    # GIVEN no backup bucket and no alarm subscriber
    results = [StreamResult("sc-accounts", "sc-accounts", "arn:a", "enabled"),
               StreamResult("sc-repositories", "sc-repositories", "arn:r", "enabled")]
    overrides = dict(deploy_overrides(settings, results))
    parameters = load_template()["Parameters"]
    # THEN they are placeholders that fail the AllowedPattern (sam deploy stops at once)
    for name in ("BackupBucketName", "AlarmEmail"):
        assert not re.fullmatch(parameters[name]["AllowedPattern"], overrides[name]), name
    # AND an alarm topic replaces the e-mail
    with_topic = dict(deploy_overrides(settings, results, alarm_topic_arn="arn:aws:sns:us-east-1:123456789012:ops"))
    assert with_topic["AlarmTopicArn"].endswith(":ops") and "AlarmEmail" not in with_topic


def test_write_samconfig_updates_the_deploy_parameters_and_keeps_the_rest(settings, capsys, monkeypatch, tmp_path):
    # GIVEN a copy of the repository's samconfig.toml, and legacy tables with physical names
    monkeypatch.setenv("DYNASHIFT_TABLE_NAMES", '{"sc-accounts": "prod-accounts", "sc-repositories": "prod-repos"}')
    monkeypatch.setenv("DYNASHIFT_BACKUP_BUCKET", "radiant-assets")
    monkeypatch.setenv("DYNASHIFT_REGION", "us-east-1")
    create_legacy("prod-accounts", "accountId")
    create_legacy("prod-repos", "repoId")
    config = tmp_path / "samconfig.toml"
    shutil.copy(PROJECT_ROOT / "samconfig.toml", config)
    before = tomllib.loads(config.read_text())
    # WHEN enable-streams writes it
    assert main(["enable-streams", "--alarm-email", "ops@example.com", "--write-samconfig", str(config)]) == 0
    out = capsys.readouterr().out
    after = tomllib.loads(config.read_text())
    deploy = after["default"]["deploy"]["parameters"]
    # THEN the parameters are the printed line's, and the region is the settings' region
    region, printed = printed_deploy_line(out)
    written = dict(word.split("=", 1) for word in shlex.split(deploy["parameter_overrides"]))
    assert written == printed and required_parameters() <= set(written)
    assert deploy["region"] == region == "us-east-1"
    # AND every other setting and the comments stay
    assert {k: v for k, v in deploy.items() if k not in ("region", "parameter_overrides")} == {
        k: v for k, v in before["default"]["deploy"]["parameters"].items() if k != "parameter_overrides"}
    assert after["default"]["build"] == before["default"]["build"]
    assert "Deployable by construction" in config.read_text()
    # AND writing again changes nothing
    text = config.read_text()
    write_samconfig(config, list(written.items()), "us-east-1")
    assert config.read_text() == text


def test_write_samconfig_without_a_path_creates_samconfig_toml_here(settings, capsys, monkeypatch, tmp_path):
    create_legacy("sc-accounts", "accountId")
    create_legacy("sc-repositories", "repoId")
    monkeypatch.chdir(tmp_path)
    assert main(["enable-streams", "--write-samconfig"]) == 0
    deploy = tomllib.loads((tmp_path / "samconfig.toml").read_text())["default"]["deploy"]["parameters"]
    # THEN a deployable configuration: built template, region, every required parameter
    assert deploy["template_file"] == ".aws-sam/build/template.yaml"
    assert deploy["region"] == "us-east-1" and "CAPABILITY_IAM" in deploy["capabilities"]
    assert required_parameters() <= set(dict(w.split("=", 1) for w in shlex.split(deploy["parameter_overrides"])))
    # AND the placeholders are named on the console
    assert "BackupBucketName, AlarmEmail" in capsys.readouterr().out


def test_alarm_email_and_topic_together_are_refused(settings, capsys):
    assert main(["enable-streams", "--alarm-email", "a@b.co", "--alarm-topic-arn",
                 "arn:aws:sns:us-east-1:123456789012:ops"]) == 2
    assert "--alarm-email and --alarm-topic-arn" in capsys.readouterr().err


def test_sam_line_adds_non_default_target_and_control_names_and_checks_the_template():
    settings = load_settings(target_table="main-v2")
    results = [StreamResult("sc-accounts", "sc-accounts", "arn:a", "enabled"),
               StreamResult("sc-repositories", "sc-repositories", "arn:r", "enabled")]
    line = sam_deploy_command(settings, results)
    assert "TargetTableName=main-v2" in line and "ControlTableName" not in line
    # GIVEN a template that lacks a parameter / THEN the gap is named instead of a line sam would reject
    template = load_template()
    del template["Parameters"]["RepositoriesStreamArn"]
    with pytest.raises(ConfigError, match="RepositoriesStreamArn"):
        sam_deploy_command(settings, results, template)


def test_every_parameter_we_print_is_in_the_template():
    parameters = load_template()["Parameters"]
    for source in get_definition("sc").sources:
        assert source.stack_parameters is not None, source.name
        name_param, arn_param = source.stack_parameters
        assert name_param in parameters and arn_param in parameters


def test_waits_until_the_table_is_active_again():
    # GIVEN sc-accounts reports UPDATING twice after UpdateTable (as AWS does)
    class FakeClient:
        def __init__(self) -> None:
            # describes of sc-accounts: first read, before the update, then three after it
            self.statuses = {"sc-accounts": ["ACTIVE", "ACTIVE", "UPDATING", "UPDATING", "ACTIVE"]}
            self.streaming: set[str] = set()

        def describe_table(self, TableName: str) -> dict:  # noqa: N803 (boto3's casing)
            queue = self.statuses.get(TableName, ["ACTIVE"])
            table = {"TableName": TableName, "TableStatus": queue.pop(0) if len(queue) > 1 else queue[0]}
            if TableName in self.streaming:
                table["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
                table["LatestStreamArn"] = f"arn:aws:dynamodb:us-east-1:123456789012:table/{TableName}/stream/x"
            return {"Table": table}

        def update_table(self, TableName: str, **kwargs: Any) -> None:  # noqa: N803
            self.streaming.add(TableName)

    sleeps: list[float] = []
    results = enable_streams(load_settings(), client=FakeClient(), sleep=sleeps.append, clock=lambda: 0.0)
    # THEN it polled sc-accounts, with backoff, until ACTIVE, before reporting its ARN
    assert sleeps == [0.5, 1.0]
    assert [(r.outcome, r.stream_arn.rsplit("/", 3)[-3]) for r in results] == [
        ("enabled", "sc-accounts"), ("enabled", "sc-repositories")]


def test_refusal_is_a_usage_error(settings):
    create_legacy("sc-accounts", "accountId", "NEW_IMAGE")
    create_legacy("sc-repositories", "repoId")
    with pytest.raises(UsageError, match="NEW_IMAGE"):
        enable_streams(settings)


def test_samconfig_example_is_valid_and_matches_the_template():
    config = tomllib.loads((PROJECT_ROOT / "samconfig.toml").read_text())
    deploy = config["default"]["deploy"]["parameters"]
    assert deploy["stack_name"] and deploy["confirm_changeset"] is True
    assert "CAPABILITY_IAM" in deploy["capabilities"]
    overrides = dict(word.split("=", 1) for word in shlex.split(deploy["parameter_overrides"]))
    parameters = load_template()["Parameters"]
    assert set(overrides) <= set(parameters)
    assert {"AccountsStreamArn", "RepositoriesStreamArn"} <= set(overrides)
    # AND it is deployable by construction: no region placeholder (SAM uses the usual AWS chain),
    # stream ARN placeholders the template refuses, and only the built template is deployed
    assert "region" not in deploy
    for name in ("AccountsStreamArn", "RepositoriesStreamArn"):
        assert not re.fullmatch(parameters[name]["AllowedPattern"], overrides[name]), name
    assert deploy["template_file"] == ".aws-sam/build/template.yaml"


def test_a_migration_without_stack_parameters_gets_a_line_naming_the_gap():
    # GIVEN the toy migration, whose definition names no template.yaml parameters
    settings = load_settings(migration="tests.toy_migration:DEFINITION")
    results = [StreamResult("toy-users", "toy-users", "arn:u", "enabled")]
    # WHEN the deploy line's parameters are asked for / THEN one error names the table and the field
    with pytest.raises(ConfigError, match=r"toy-users .*stack_parameters"):
        deploy_overrides(settings, results)
