"""`dynashift mode | cutover | rollback | finalize` on DynamoDB Local, through the real CLI entry point."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from shared import aws
from shared.app_sim import ConsumerThread
from shared.apply import tombstone_item
from shared.cli import main
from shared.codec import to_wire
from shared.commands import create_tables
from shared.control import StaleWriterRegistry
from shared.cutover import read_mode
from shared.definition import get_definition
from shared.mode import Mode
from shared.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:No application metrics to publish")]


@pytest.fixture
def cli_settings(sc_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The test's tables, as the CLI sees them through DYNASHIFT_* variables."""
    env = {
        "DYNASHIFT_ENDPOINT_URL": sc_settings.endpoint_url,
        "DYNASHIFT_TARGET_TABLE": sc_settings.target_table,
        "DYNASHIFT_CONTROL_TABLE": sc_settings.control_table,
        "DYNASHIFT_TABLE_NAMES": json.dumps(sc_settings.table_names),
        "DYNASHIFT_MODE_CACHE_AGE_S": "0.5",
        "DYNASHIFT_CUTOVER_INFLIGHT_GRACE_S": "0.1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    settings = load_settings()
    create_tables(settings, with_sources=True)
    return settings


@pytest.fixture
def mirrors(cli_settings: Settings) -> Iterator[None]:
    consumers = [ConsumerThread(cli_settings, d).start() for d in ("forward", "reverse")]
    yield
    for consumer in consumers:
        consumer.stop()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_mode_shows_the_flag_and_is_set_by_hand_only_with_force(
    cli_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "mode")
    assert code == 0 and "mode: old" in out
    # WHEN set without --force THEN refused in one line, exit 2, flag unchanged
    code, _, err = run(capsys, "mode", "set", "new")
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    assert read_mode(cli_settings).mode == Mode.OLD
    # WHEN set with --force THEN written (even old -> new, which the protocol forbids)
    code, out, _ = run(capsys, "mode", "set", "new", "--force")
    assert code == 0 and "no drain was done" in out
    state = read_mode(cli_settings)
    assert state.mode == Mode.NEW and state.extra["step"] == "forced"
    code, out, _ = run(capsys, "mode")
    assert "mode: new" in out and "set by hand" in out


def test_the_gate_names_every_failing_check(cli_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN no verify result, no backups (DynamoDB Local), and a legacy write no mirror consumed
    aws.dynamodb(cli_settings).put_item(
        TableName=cli_settings.physical_name("sc-accounts"),
        Item=to_wire({"accountId": "a1", "email": "a@b.c", "createdAt": 1}),
    )
    code, _, err = run(capsys, "cutover", "--max-lag", "1")
    # THEN refused, with each reason in one line, and the mode untouched
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "no verify result yet" in err and "DynamoDB Local has no backups" in err
    assert "forward mirror lag: did not catch up" in err
    assert read_mode(cli_settings).mode == Mode.OLD


def record_clean_verify(settings: Settings) -> None:
    aws.dynamodb(settings).put_item(
        TableName=settings.control_table,
        Item={"PK": {"S": "VERIFY"}, "SK": {"S": "LAST"}, "ok": {"BOOL": True},
              "finished_at": {"N": str(round(time.time(), 3))},
              # what a full `dynashift verify` records: every table, every item
              "tables": {"L": [{"S": "sc-accounts"}, {"S": "sc-repositories"}]}, "sample": {"N": "1"}},
    )


@pytest.mark.timeout(240)
def test_cutover_then_finalize_sweeps_leftovers_and_never_rolls_back(
    cli_settings: Settings, mirrors: None, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = cli_settings
    record_clean_verify(settings)
    # WHEN the cutover runs from the command line
    code, out, err = run(capsys, "cutover", "--skip-backup-check", "--max-lag", "30")
    # THEN it passes the gate, switches, and prints the measured freeze window
    assert code == 0, err
    assert "gate: verify: clean" in out and "cutover done: mode is new" in out and "freeze window" in out
    assert read_mode(settings).mode == Mode.NEW
    # GIVEN a leftover tombstone in sc-main, and a backfill still registered
    definition = get_definition(settings.migration)
    client = aws.dynamodb(settings)
    tomb = tombstone_item(definition, ("ACCOUNT#gone", "PROFILE"), time.time())
    client.put_item(TableName=settings.target_table, Item=to_wire(tomb))

    async def register(writer: str, *, remove: bool = False) -> None:
        async with aws.aio_dynamodb(settings) as aio:
            registry = StaleWriterRegistry(aio, settings.control_table)
            await (registry.deregister(writer) if remove else registry.register(writer, "backfill", 60))

    import asyncio

    asyncio.run(register("worker-1"))
    # WHEN finalizing THEN refused while the backfill is registered
    code, _, err = run(capsys, "finalize", "--yes")
    assert code == 1 and "backfill is still registered" in err
    asyncio.run(register("worker-1", remove=True))
    # WHEN finalizing again THEN the tombstone is swept, reverse replication stopped, commands printed
    code, out, err = run(capsys, "finalize", "--yes")
    assert code == 0, err
    assert "1 tombstone(s) swept" in out and "update-event-source-mapping" in out
    assert f"aws dynamodb delete-table --table-name {settings.physical_name('sc-accounts')}" in out
    assert "Item" not in client.get_item(TableName=settings.target_table, Key=to_wire({"PK": "ACCOUNT#gone",
                                                                                        "SK": "PROFILE"}))
    state = read_mode(settings)
    assert state.extra["reverse_replication"] == "stopped" and state.extra.get("finalized_at")
    # AND the legacy tables are still there, and a rollback is refused
    client.describe_table(TableName=settings.physical_name("sc-accounts"))
    code, _, err = run(capsys, "rollback")
    assert code == 1 and "finalized" in err
    assert read_mode(settings).mode == Mode.NEW
