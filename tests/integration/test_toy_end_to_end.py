"""A migration plugged in from outside the package runs through every engine.

The toy migration (`tests/toy_migration.py`, not part of dynashift) is named
by the settings alone, as "package.module:DEFINITION". Through the real CLI
entry point: tables, the forward mirror started after some history was
written, the backfill, verify, a cutover with reverse replication, a write
after it reaching the legacy table, and a rollback. Nothing of the sc
migration is involved.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

from shared.core import aws
from shared.core.settings import Settings, load_settings
from shared.cutover.operations import read_mode
from shared.ops.tables import create_tables
from shared.sim.app_sim import ConsumerThread
from shared.store.mode import Mode
from tests.conftest import drop_tables
from tests.integration.helpers import run_cli as run

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:No application metrics to publish")]

SPEC = "tests.toy_migration:DEFINITION"


@pytest.fixture
def toy_settings(local_dynamodb: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    suffix = uuid.uuid4().hex[:8]
    env = {
        "DYNASHIFT_MIGRATION": SPEC,
        "DYNASHIFT_ENDPOINT_URL": local_dynamodb,
        "DYNASHIFT_TARGET_TABLE": f"toy-main-{suffix}",
        "DYNASHIFT_CONTROL_TABLE": f"toy-control-{suffix}",
        "DYNASHIFT_TABLE_NAMES": json.dumps({"toy-users": f"toy-users-{suffix}"}),
        "DYNASHIFT_MODE_CACHE_AGE_S": "0.5",
        "DYNASHIFT_CUTOVER_INFLIGHT_GRACE_S": "0.1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    create_tables(settings, with_sources=True)
    yield settings
    drop_tables(settings)


def put_user(client, settings: Settings, user_id: str, nick: str) -> None:
    client.put_item(TableName=settings.physical_name("toy-users"),
                    Item={"userId": {"S": user_id}, "nick": {"S": nick}})


def target_nicks(client, settings: Settings) -> dict[str, str]:
    items = []
    for page in client.get_paginator("scan").paginate(TableName=settings.target_table, ConsistentRead=True):
        items += page["Items"]
    return {i["user_id"]["S"]: i["nick"]["S"] for i in items if i["PK"]["S"].startswith("USER#")}


@pytest.mark.timeout(300)
def test_the_toy_migration_runs_mirror_backfill_verify_cutover_and_rollback(
    toy_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = toy_settings
    client = aws.dynamodb(settings)
    # GIVEN history written before replication started
    for n in range(30):
        put_user(client, settings, f"u{n:03d}", f"nick-{n}")
    consumers = [ConsumerThread(settings, "forward", start_from="latest").start(),
                 ConsumerThread(settings, "reverse").start()]
    try:
        # AND live writes once the mirror runs: new users, a rename, a delete
        for n in range(30, 40):
            put_user(client, settings, f"u{n:03d}", f"nick-{n}")
        put_user(client, settings, "u005", "renamed")
        client.delete_item(TableName=settings.physical_name("toy-users"), Key={"userId": {"S": "u007"}})
        # WHEN the backfill copies the history
        code, _, err = run(capsys, "backfill", "run", "--segments", "2")
        assert code == 0, err
        # THEN verify finds both sides equal, and the target is exactly the transform of the source
        deadline = time.time() + 60
        while (code := run(capsys, "verify", "--settle", "1", "--segments", "2")[0]) != 0 and time.time() < deadline:
            time.sleep(1)
        assert code == 0, capsys.readouterr()
        expected = {f"u{n:03d}": f"nick-{n}" for n in range(40) if n != 7} | {"u005": "renamed"}
        assert target_nicks(client, settings) == expected
        # WHEN cut over
        code, out, err = run(capsys, "cutover", "--skip-backup-check", "--max-lag", "30")
        assert code == 0, err + out
        assert read_mode(settings).mode == Mode.NEW
        # AND the application, now on the target, writes a user
        client.put_item(TableName=settings.target_table,
                        Item={"PK": {"S": "USER#u100"}, "SK": {"S": "META"}, "user_id": {"S": "u100"},
                              "nick": {"S": "after-cutover"}})
        # THEN reverse replication writes it to the legacy table (the toy's reverse())
        deadline, legacy = time.time() + 60, None
        while legacy is None and time.time() < deadline:
            legacy = client.get_item(TableName=settings.physical_name("toy-users"), Key={"userId": {"S": "u100"}},
                                     ConsistentRead=True).get("Item")
            time.sleep(0.2)
        assert legacy == {"userId": {"S": "u100"}, "nick": {"S": "after-cutover"}}
        # AND a rollback returns to old, losing nothing
        code, out, err = run(capsys, "rollback", "--max-lag", "30")
        assert code == 0, err + out
        assert read_mode(settings).mode == Mode.OLD
    finally:
        for consumer in consumers:
            consumer.stop()
