"""Turning on the legacy tables' streams, and the `sam deploy` line that wires them to the mirror.

The mirror needs NEW_AND_OLD_IMAGES on every legacy table (the old image is
how a rename, a transfer or a removed team id finds the target items to
remove). `enable_streams`:

* reads every table first and refuses, before changing anything, a table
  whose stream already has another view type: a table has one stream, and
  replacing it would cut off whoever reads it now, so that is the operator's
  call, not ours;
* leaves a table that already has NEW_AND_OLD_IMAGES alone (idempotent);
* otherwise enables the stream (UpdateTable) and waits until the table is
  ACTIVE again and reports its stream ARN.

`deploy_overrides` turns the ARNs and the settings into the stack's
parameters: every parameter of template.yaml without a default (the stream
ARNs, BackupBucketName), BackupPrefix, the alarm subscriber (AlarmEmail or
AlarmTopicArn: the template's Rules require one) and non-default table names.
A value dynashift cannot know (no backup_bucket set, no alarm subscriber
given) is a placeholder that fails the template's AllowedPattern, so `sam
deploy` stops at once and names it. `sam_deploy_command` prints them as the
exact `sam deploy --region ... --parameter-overrides ...` line; the parameter
names are checked against template.yaml's Parameters, so a renamed parameter
fails loudly instead of printing a line sam would reject.

`write_samconfig` writes the same values (parameter_overrides and region) into
the `[default.deploy.parameters]` table of a samconfig.toml (`enable-streams
--write-samconfig`), changing only those two lines of an existing file (its
comments and other settings stay), or creating a minimal one.
"""

from __future__ import annotations

import json
import re
import shlex
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.core import aws
from shared.core.definition import get_definition
from shared.core.errors import ConfigError, StoreError, TransientError, UsageError
from shared.core.settings import Settings

VIEW_TYPE = "NEW_AND_OLD_IMAGES"

TARGET_PARAMETER = "TargetTableName"
CONTROL_PARAMETER = "ControlTableName"
BUCKET_PARAMETER = "BackupBucketName"
PREFIX_PARAMETER = "BackupPrefix"
ALARM_EMAIL_PARAMETER = "AlarmEmail"
ALARM_TOPIC_PARAMETER = "AlarmTopicArn"
# Placeholders for what dynashift cannot know: each fails the template's
# AllowedPattern, so CloudFormation refuses the deploy before changing anything.
BUCKET_PLACEHOLDER = "BACKUP_BUCKET_NAME"
ALARM_EMAIL_PLACEHOLDER = "ALARM_EMAIL"
SAMCONFIG_SECTION = "default.deploy.parameters"


@dataclass(frozen=True)
class StreamResult:
    table: str  # logical
    physical: str
    stream_arn: str
    outcome: str  # "enabled" or "already enabled"


def enable_streams(settings: Settings, *, client: Any = None, sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic, timeout_s: float = 900.0,
                   on_progress: Callable[[str], None] | None = None) -> list[StreamResult]:
    """Make sure every legacy table streams NEW_AND_OLD_IMAGES; returns one result per table."""
    client = client or aws.dynamodb(settings)
    definition = get_definition(settings.migration)
    tables = [(s.name, settings.physical_name(s.name)) for s in definition.sources]
    described = {physical: _describe(client, physical, logical) for logical, physical in tables}
    for logical, physical in tables:  # refuse before changing anything
        view = _view_type(described[physical])
        if view not in (None, VIEW_TYPE):
            raise UsageError(
                f"{logical} ({physical}) already streams {view}, not {VIEW_TYPE}, and a table has one stream: "
                f"after checking nobody reads it, disable it (aws dynamodb update-table --table-name {physical} "
                "--stream-specification StreamEnabled=false) and run enable-streams again"
            )
    results = []
    for logical, physical in tables:
        if _view_type(described[physical]) == VIEW_TYPE:
            results.append(StreamResult(logical, physical, described[physical]["LatestStreamArn"], "already enabled"))
            continue
        if on_progress:
            on_progress(f"enabling the stream of {physical}")
        _wait_active(client, physical, logical, sleep, clock, timeout_s)  # UpdateTable refuses an UPDATING table
        outcome = "enabled"
        try:
            client.update_table(TableName=physical,
                                StreamSpecification={"StreamEnabled": True, "StreamViewType": VIEW_TYPE})
        except Exception as exc:
            # someone enabled it meanwhile (ValidationException on AWS/Local, ResourceInUse on moto)?
            if aws.error_code(exc) not in ("ValidationException", "ResourceInUseException"):
                raise aws.translate(exc, f"enable the stream of {physical}") from exc
            view = _view_type(_describe(client, physical, logical))
            if view != VIEW_TYPE:
                raise aws.translate(exc, f"enable the stream of {physical}") from exc
            outcome = "already enabled"
        if on_progress:
            on_progress(f"waiting for {physical} to be ACTIVE")
        table = _wait_active(client, physical, logical, sleep, clock, timeout_s)
        if _view_type(table) != VIEW_TYPE or not table.get("LatestStreamArn"):
            raise StoreError(f"{physical}: UpdateTable succeeded but the table reports no {VIEW_TYPE} stream")
        results.append(StreamResult(logical, physical, table["LatestStreamArn"], outcome))
    return results


def deploy_overrides(settings: Settings, results: list[StreamResult], template: dict[str, Any] | None = None,
                     *, alarm_email: str | None = None, alarm_topic_arn: str | None = None) -> list[tuple[str, str]]:
    """The stack's parameters for these streams: every required one, with placeholders where unknown."""
    from shared.ops.tables import load_template

    parameters = (template or load_template()).get("Parameters", {})
    definition = get_definition(settings.migration)
    overrides: list[tuple[str, str]] = []
    for result in results:
        # The template's parameters per legacy table are the migration definition's (SourceTable).
        stack_parameters = definition.source(result.table).stack_parameters
        if stack_parameters is None:
            raise ConfigError(f"migration {definition.name} names no template.yaml parameters for legacy table "
                              f"{result.table} (SourceTable.stack_parameters): its stack needs a template of its own")
        name_param, arn_param = stack_parameters
        overrides += [(name_param, result.physical), (arn_param, result.stream_arn)]
    overrides.append((BUCKET_PARAMETER, settings.backup_bucket or BUCKET_PLACEHOLDER))
    overrides.append((PREFIX_PARAMETER, settings.backup_prefix))
    if alarm_topic_arn:
        overrides.append((ALARM_TOPIC_PARAMETER, alarm_topic_arn))
    else:
        overrides.append((ALARM_EMAIL_PARAMETER, alarm_email or ALARM_EMAIL_PLACEHOLDER))
    for param, value in ((TARGET_PARAMETER, settings.target_table), (CONTROL_PARAMETER, settings.control_table)):
        if param not in parameters or parameters[param].get("Default") != value:
            overrides.append((param, value))
    missing = [p for p, _ in overrides if p not in parameters]
    if missing:
        raise ConfigError(f"template.yaml has no parameter {', '.join(missing)}: update the template or dynashift")
    given = {p for p, _ in overrides}
    required = [p for p, spec in parameters.items() if "Default" not in spec and p not in given]
    if required:
        raise ConfigError(f"dynashift does not know template.yaml's required parameter {', '.join(required)}: "
                          "update dynashift")
    return overrides


def placeholders(overrides: list[tuple[str, str]]) -> list[str]:
    """The parameters still holding a placeholder (to fill in before `sam deploy`)."""
    return [p for p, v in overrides if v in (BUCKET_PLACEHOLDER, ALARM_EMAIL_PLACEHOLDER)]


def sam_deploy_command(settings: Settings, results: list[StreamResult], template: dict[str, Any] | None = None,
                       *, alarm_email: str | None = None, alarm_topic_arn: str | None = None) -> str:
    """The `sam deploy --region ... --parameter-overrides ...` line for these stream ARNs."""
    overrides = deploy_overrides(settings, results, template, alarm_email=alarm_email,
                                 alarm_topic_arn=alarm_topic_arn)
    return (f"sam deploy --region {shlex.quote(settings.effective_region)} --parameter-overrides "
            + " ".join(shlex.quote(f"{p}={v}") for p, v in overrides))


def samconfig_overrides(overrides: list[tuple[str, str]]) -> str:
    """parameter_overrides as samconfig.toml spells it: Name="value" pairs, space-separated."""
    return " ".join(f"{p}={json.dumps(v)}" for p, v in overrides)


_SECTION_LINE = re.compile(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$")

NEW_SAMCONFIG = """# SAM CLI configuration written by `dynashift enable-streams --write-samconfig`.
# Deploy what `make sam-build` built (template_file), never the project directory.
version = 0.1

[default.deploy.parameters]
stack_name = "dynashift"
template_file = ".aws-sam/build/template.yaml"
resolve_s3 = true
s3_prefix = "dynashift"
capabilities = "CAPABILITY_IAM"
confirm_changeset = true
fail_on_empty_changeset = false
"""


def write_samconfig(path: Path, overrides: list[tuple[str, str]], region: str) -> None:
    """Set parameter_overrides and region in `[default.deploy.parameters]` of `path` (created if absent).

    Only those two lines change (or are added at the top of the table):
    comments and every other setting stay. The result is parsed back and
    checked before it replaces the file.
    """
    values = {"region": region, "parameter_overrides": samconfig_overrides(overrides)}
    text = path.read_text() if path.exists() else NEW_SAMCONFIG
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}): fix it, or write another file") from None
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if (m := _SECTION_LINE.match(line)) and m.group(1).strip() == SAMCONFIG_SECTION), None)
    if start is None:
        lines += ["", f"[{SAMCONFIG_SECTION}]"]
        start = len(lines) - 1
    end = next((i for i in range(start + 1, len(lines)) if _SECTION_LINE.match(lines[i])), len(lines))
    for key, value in values.items():
        line = f"{key} = {json.dumps(value)}"
        at = next((i for i in range(start + 1, end) if re.match(rf"^\s*{key}\s*=", lines[i])), None)
        if at is None:
            lines.insert(start + 1, line)
            end += 1
        else:
            lines[at] = line
    result = "\n".join(lines) + "\n"
    written = tomllib.loads(result)["default"]["deploy"]["parameters"]
    if any(written.get(key) != value for key, value in values.items()):
        raise ConfigError(f"{path}: could not update [{SAMCONFIG_SECTION}] safely (a multi-line value?); edit it by hand")
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(result)
    staging.replace(path)


def _view_type(table: dict[str, Any]) -> str | None:
    spec = table.get("StreamSpecification") or {}
    return spec.get("StreamViewType") if spec.get("StreamEnabled") else None


def _describe(client: Any, physical: str, logical: str) -> dict[str, Any]:
    try:
        return client.describe_table(TableName=physical)["Table"]
    except Exception as exc:
        if aws.error_code(exc) == "ResourceNotFoundException":
            raise StoreError(f"legacy table {logical} ({physical}) not found: check table_names in the settings") from exc
        raise aws.translate(exc, f"describe {physical}") from exc


def _wait_active(client: Any, physical: str, logical: str, sleep: Callable[[float], None],
                 clock: Callable[[], float], timeout_s: float) -> dict[str, Any]:
    deadline = clock() + timeout_s
    delay = 0.5
    while True:
        table = _describe(client, physical, logical)
        if table.get("TableStatus") == "ACTIVE":
            return table
        if clock() > deadline:
            raise TransientError(f"{physical} is still {table.get('TableStatus')} after {timeout_s:.0f} s")
        sleep(delay)
        delay = min(delay * 2, 10.0)
