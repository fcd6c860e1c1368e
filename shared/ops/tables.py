"""Tables built from one source of truth: `template.yaml`.

`table_specs()` reads the `AWS::DynamoDB::Table` resources of the SAM
template (with cfn-flip, which understands the CloudFormation short tags)
and turns their CloudFormation properties into DynamoDB API requests, so the
tables the CLI and the tests create cannot drift from the deployed ones.
The legacy source tables are not ours to deploy; for local use they are
built from the migration definition's key attributes, with streams on.

Creating a table that already exists is not an error. Table features
DynamoDB Local does not implement (point-in-time recovery) are skipped
there and reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfn_flip import load_yaml

from shared.core import aws
from shared.core.aws import error_code, translate
from shared.core.definition import MigrationDefinition, get_definition
from shared.core.errors import ConfigError
from shared.core.settings import PROJECT_ROOT, Settings

TEMPLATE_PATH = PROJECT_ROOT / "template.yaml"
TARGET_RESOURCE = "TargetTable"
CONTROL_RESOURCE = "ControlTable"


@dataclass
class TableSpec:
    """A CreateTable request plus the follow-up calls CreateTable cannot carry."""

    create: dict[str, Any]
    ttl_attribute: str | None = None
    point_in_time_recovery: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.create["TableName"]


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    try:
        return load_yaml(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _resolve(value: Any, names: dict[str, str]) -> Any:
    """Resolve `!Ref Parameter` to the configured table name."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        try:
            return names[value["Ref"]]
        except KeyError:
            raise ConfigError(f"template.yaml: no value for !Ref {value['Ref']}") from None
    return value


def spec_from_resource(properties: dict[str, Any], names: dict[str, str]) -> TableSpec:
    """Translate CloudFormation `AWS::DynamoDB::Table` properties to API calls."""
    create: dict[str, Any] = {
        "TableName": _resolve(properties["TableName"], names),
        "AttributeDefinitions": [dict(a) for a in properties["AttributeDefinitions"]],
        "KeySchema": [dict(k) for k in properties["KeySchema"]],
        "BillingMode": properties.get("BillingMode", "PAY_PER_REQUEST"),
    }
    gsis = properties.get("GlobalSecondaryIndexes")
    if gsis:
        create["GlobalSecondaryIndexes"] = [
            {
                "IndexName": g["IndexName"],
                "KeySchema": [dict(k) for k in g["KeySchema"]],
                "Projection": dict(g["Projection"]),
            }
            for g in gsis
        ]
    stream = properties.get("StreamSpecification")
    if stream:
        create["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
    sse = properties.get("SSESpecification")
    if sse:
        create["SSESpecification"] = {"Enabled": bool(sse.get("SSEEnabled"))}
    if "DeletionProtectionEnabled" in properties:
        create["DeletionProtectionEnabled"] = bool(properties["DeletionProtectionEnabled"])
    ttl = properties.get("TimeToLiveSpecification") or {}
    pitr = properties.get("PointInTimeRecoverySpecification") or {}
    return TableSpec(
        create=create,
        ttl_attribute=ttl.get("AttributeName") if ttl.get("Enabled") else None,
        point_in_time_recovery=bool(pitr.get("PointInTimeRecoveryEnabled")),
    )


def table_specs(settings: Settings, template: dict[str, Any] | None = None) -> dict[str, TableSpec]:
    """The target and control table, as `template.yaml` defines them."""
    template = template or load_template()
    names = {"TargetTableName": settings.target_table, "ControlTableName": settings.control_table}
    resources = template.get("Resources", {})
    specs = {}
    for logical in (TARGET_RESOURCE, CONTROL_RESOURCE):
        resource = resources.get(logical)
        if not resource or resource.get("Type") != "AWS::DynamoDB::Table":
            raise ConfigError(f"template.yaml has no AWS::DynamoDB::Table resource {logical}")
        specs[logical] = spec_from_resource(resource["Properties"], names)
    return specs


def source_specs(settings: Settings, definition: MigrationDefinition) -> list[TableSpec]:
    """Legacy tables for local use: string hash keys and NEW_AND_OLD_IMAGES streams."""
    specs = []
    for source in definition.sources:
        specs.append(
            TableSpec(
                create={
                    "TableName": settings.physical_name(source.name),
                    "AttributeDefinitions": [{"AttributeName": a, "AttributeType": "S"} for a in source.key_attrs],
                    "KeySchema": [
                        {"AttributeName": a, "KeyType": "HASH" if i == 0 else "RANGE"}
                        for i, a in enumerate(source.key_attrs)
                    ],
                    "BillingMode": "PAY_PER_REQUEST",
                    "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
                }
            )
        )
    return specs


def create_table(client: Any, spec: TableSpec, *, local: bool) -> str:
    """Create one table (idempotent). Returns 'created' or 'exists'."""
    try:
        client.create_table(**spec.create)
        outcome = "created"
    except Exception as exc:
        if error_code(exc) == "ResourceInUseException":
            outcome = "exists"
        else:
            raise translate(exc, f"create table {spec.name}") from exc
    _wait_active(client, spec.name)
    if spec.ttl_attribute:
        try:
            client.update_time_to_live(
                TableName=spec.name,
                TimeToLiveSpecification={"AttributeName": spec.ttl_attribute, "Enabled": True},
            )
        except Exception as exc:
            if error_code(exc) != "ValidationException":  # "TTL is already enabled"
                raise translate(exc, f"enable TTL on {spec.name}") from exc
    if spec.point_in_time_recovery:
        if local:
            spec.notes.append("point-in-time recovery skipped: DynamoDB Local has no backups")
        else:
            try:
                client.update_continuous_backups(
                    TableName=spec.name,
                    PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
                )
            except Exception as exc:
                raise translate(exc, f"enable point-in-time recovery on {spec.name}") from exc
    return outcome


def _wait_active(client: Any, name: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        table = client.describe_table(TableName=name)["Table"]
        if table["TableStatus"] == "ACTIVE":
            return
        time.sleep(0.5)
    raise ConfigError(f"table {name} did not become ACTIVE within {timeout_s:.0f}s")


def create_tables(settings: Settings, *, with_sources: bool) -> list[tuple[str, str, list[str]]]:
    """Create target + control (and optionally the legacy) tables; idempotent.
    Returns (name, outcome, notes) per table, for `dynashift tables create` to render."""
    client = aws.dynamodb(settings)
    specs = list(table_specs(settings).values())
    if with_sources:
        specs += source_specs(settings, get_definition(settings.migration))
    results = []
    for spec in specs:
        outcome = create_table(client, spec, local=settings.is_local)
        results.append((spec.name, outcome, spec.notes))
    return results
