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

`sam_deploy_command` turns the ARNs into the exact `sam deploy
--parameter-overrides ...` line; the parameter names are checked against
template.yaml's Parameters, so a renamed parameter fails loudly instead of
printing a line sam would reject.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared import aws
from shared.definition import get_definition
from shared.errors import ConfigError, StoreError, TransientError, UsageError
from shared.settings import Settings

VIEW_TYPE = "NEW_AND_OLD_IMAGES"

# template.yaml parameters per legacy table of the sc migration: (table name, stream ARN).
SAM_PARAMETERS: dict[str, tuple[str, str]] = {
    "sc-accounts": ("AccountsTableName", "AccountsStreamArn"),
    "sc-repositories": ("RepositoriesTableName", "RepositoriesStreamArn"),
}
TARGET_PARAMETER = "TargetTableName"
CONTROL_PARAMETER = "ControlTableName"


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


def sam_deploy_command(settings: Settings, results: list[StreamResult],
                       template: dict[str, Any] | None = None) -> str:
    """The `sam deploy --parameter-overrides ...` line for these stream ARNs (and non-default table names)."""
    from shared.tables import load_template

    parameters = (template or load_template()).get("Parameters", {})
    overrides: list[tuple[str, str]] = []
    for result in results:
        try:
            name_param, arn_param = SAM_PARAMETERS[result.table]
        except KeyError:
            raise ConfigError(f"no template.yaml parameters are known for legacy table {result.table}") from None
        overrides += [(name_param, result.physical), (arn_param, result.stream_arn)]
    for param, value in ((TARGET_PARAMETER, settings.target_table), (CONTROL_PARAMETER, settings.control_table)):
        if param not in parameters or parameters[param].get("Default") != value:
            overrides.append((param, value))
    missing = [p for p, _ in overrides if p not in parameters]
    if missing:
        raise ConfigError(f"template.yaml has no parameter {', '.join(missing)}: update the template or dynashift")
    return "sam deploy --parameter-overrides " + " ".join(shlex.quote(f"{p}={v}") for p, v in overrides)


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
