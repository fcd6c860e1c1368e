"""`dynashift mode | cutover | rollback | finalize` on DynamoDB Local, through the real CLI entry point."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from shared.core import aws
from shared.core.codec import to_wire
from shared.core.definition import get_definition
from shared.core.settings import Settings, load_settings
from shared.cutover.operations import read_mode
from shared.ops.tables import create_tables
from shared.protocol.apply import tombstone_item
from shared.sim.app_sim import ConsumerThread
from shared.store.control import StaleWriterRegistry
from shared.store.mode import Mode
from tests.integration.helpers import one_line
from tests.integration.helpers import run_cli as run

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
    # AND --json says the same on stdout alone (for `mode` and for `mode set`)
    code, out, _ = run(capsys, "mode", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["mode"] == "new" and shown["version"] == 1 and shown["switch_in_progress"] is False
    assert shown["reason"] == "set by hand from old" and shown["extra"]["step"] == "forced"
    code, out, _ = run(capsys, "mode", "set", "freeze", "--towards", "old", "--force", "--json")
    written = json.loads(out)
    assert code == 0 and written["mode"] == "freeze" and written["towards"] == "old" and written["version"] == 2
    assert written["forced"] is True and written["drained"] is False and written["switch_in_progress"] is True


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
    assert "forward mirror lag: did not acknowledge every record" in err
    assert read_mode(cli_settings).mode == Mode.OLD
    # WHEN refused with --json THEN the same exit and line, and stdout holds the gate's findings
    code, out, err = run(capsys, "cutover", "--max-lag", "1", "--json")
    assert code == 1 and "refused by the gate" in one_line(err)
    refused = json.loads(out)
    assert refused["op"] == "cutover" and refused["outcome"] == "refused"
    assert refused["from_mode"] == refused["to_mode"] == "old" and refused["freeze_window_s"] is None
    assert refused["reason"].startswith("cutover refused by the gate")
    checks = {c["name"]: c for c in refused["gate"]}
    assert checks["verify"]["ok"] is False and "no verify result yet" in checks["verify"]["detail"]
    assert checks["quarantine"]["ok"] is True and checks["forward mirror lag"]["ok"] is False
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


@pytest.mark.timeout(240)
def test_every_switch_command_reports_json_on_stdout(
    cli_settings: Settings, mirrors: None, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = cli_settings
    record_clean_verify(settings)
    # WHEN the cutover runs with --json
    code, out, err = run(capsys, "cutover", "--skip-backup-check", "--max-lag", "30", "--json")
    # THEN stdout is one JSON object (no progress lines) with outcome, modes, freeze window and the gate
    assert code == 0, err
    switched = json.loads(out)
    assert switched["op"] == "cutover" and switched["outcome"] == "switched" and switched["resumed"] is False
    assert (switched["from_mode"], switched["to_mode"]) == ("old", "new")
    assert switched["freeze_window_s"] > 0 and switched["reason"] is None
    assert switched["timings"]["switched"] == switched["freeze_window_s"]
    assert {c["name"]: c["ok"] for c in switched["gate"]} == {
        "verify": True, "quarantine": True, "backup": True, "forward mirror lag": True, "reverse mirror lag": True}
    # WHEN rolled back with --json THEN the same shape, new -> old
    code, out, err = run(capsys, "rollback", "--max-lag", "30", "--json")
    assert code == 0, err
    back = json.loads(out)
    assert (back["op"], back["outcome"], back["from_mode"], back["to_mode"]) == ("rollback", "switched", "new", "old")
    assert back["freeze_window_s"] > 0 and [c["name"] for c in back["gate"]] == [
        "reverse mirror lag", "forward mirror lag"]
    # AND `mode --json` shows that last switch
    code, out, _ = run(capsys, "mode", "--json")
    shown = json.loads(out)
    assert shown["mode"] == "old" and shown["last_switch"]["op"] == "rollback"
    assert shown["last_switch"]["step"] == "switched" and shown["last_switch"]["freeze_window_s"] > 0
    # WHEN a resume finds nothing to do THEN it says so in JSON too
    code, out, _ = run(capsys, "cutover", "--resume", "--json")
    nothing = json.loads(out)
    assert code == 0 and nothing["outcome"] == "nothing" and nothing["from_mode"] == nothing["to_mode"] == "old"
    # WHEN cut over again, then finalized with --json
    assert run(capsys, "cutover", "--skip-backup-check", "--max-lag", "30", "--json")[0] == 0
    code, out, err = run(capsys, "finalize", "--yes", "--json")
    assert code == 0, err
    final = json.loads(out)
    assert final["outcome"] == "finalized" and final["mode"] == "new" and final["tombstones_swept"] == 0
    assert final["reverse_replication"] == "stopped"
    assert any("update-event-source-mapping" in line for line in final["commands"])
    code, out, _ = run(capsys, "finalize", "--yes", "--json")
    assert code == 0 and json.loads(out)["outcome"] == "already_finalized"
    # WHEN a rollback is refused (finalized) THEN exit 1, the JSON on stdout, one line on stderr
    code, out, err = run(capsys, "rollback", "--json")
    assert code == 1 and "finalized" in one_line(err)
    refused = json.loads(out)
    assert refused["outcome"] == "refused" and refused["from_mode"] == refused["to_mode"] == "new"
    assert "finalized" in refused["reason"] and refused["gate"] == []


@pytest.mark.parametrize("mode_set", [[], ["freeze", "--towards", "new"]], ids=["old", "freeze"])
def test_finalize_refuses_a_mode_other_than_new_before_asking(
    mode_set: list[str], cli_settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the mode old (or a freeze)
    if mode_set:
        assert run(capsys, "mode", "set", *mode_set, "--force")[0] == 0
    before = read_mode(cli_settings)

    def no_question(*args: object, **kwargs: object) -> bool:
        raise AssertionError("finalize asked for confirmation")

    monkeypatch.setattr("click.confirm", no_question)
    # WHEN finalize runs without --yes
    code, out, err = run(capsys, "finalize")
    # THEN exit 2 at once, one line naming the mode, nothing asked, printed or written
    assert code == 2 and out == ""
    line = one_line(err)
    assert "needs mode new" in line and f"the mode is {before.describe()}" in line
    assert read_mode(cli_settings) == before


REMOTE = "https://dynamodb.eu-west-1.amazonaws.com"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Any AWS client built or socket connected fails the test (and is recorded)."""
    import socket

    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise AssertionError("network used")

    monkeypatch.setattr("shared.core.aws.dynamodb", refuse)
    monkeypatch.setattr("shared.core.aws.aio_dynamodb", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_mode_set_force_refuses_a_remote_endpoint_without_any_call(
    no_network: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    # WHEN forced against a regional AWS endpoint without --allow-remote
    code, out, err = run(capsys, "--endpoint-url", REMOTE, "mode", "set", "new", "--force")
    # THEN exit 2, one line naming the endpoint and the way out, and no client was even built
    assert code == 2 and out == ""
    line = one_line(err)
    assert "mode set --force" in line and REMOTE in line and "--allow-remote" in line
    assert no_network == []


def test_mode_set_force_goes_ahead_remotely_with_allow_remote(
    no_network: list[object], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the flag write itself replaced (no AWS here)
    forced: list[tuple[object, ...]] = []

    def fake_force_mode(settings: Settings, mode: Mode, towards: Mode | None = None) -> object:
        from shared.store.mode import ModeState

        forced.append((settings.effective_endpoint, mode, towards))
        return ModeState(mode, towards, version=7, since=1.0, extra={"step": "forced"})

    monkeypatch.setattr("shared.cutover.operations.force_mode", fake_force_mode)
    # WHEN forced against AWS with --allow-remote THEN it writes
    code, out, err = run(capsys, "--endpoint-url", REMOTE, "mode", "set", "new", "--force", "--allow-remote",
                         "--json")
    assert code == 0, err
    assert forced == [(REMOTE, Mode.NEW, None)] and json.loads(out)["version"] == 7
    # AND without --force it is still refused for that reason first
    code, _, err = run(capsys, "--endpoint-url", REMOTE, "mode", "set", "new")
    assert code == 2 and "--force" in one_line(err)


COMMANDS = [["mode"], ["mode", "--json"], ["mode", "set", "new", "--force"], ["cutover", "--max-lag", "1"],
            ["cutover", "--json"], ["rollback"], ["finalize"], ["finalize", "--yes", "--json"]]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_an_unreachable_endpoint_is_one_line_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from shared.sim.local_engine import free_port

    code, out, err = run(capsys, "--endpoint-url", f"http://127.0.0.1:{free_port()}", *argv)
    assert code == 2, err
    assert "cannot reach endpoint" in one_line(err) and out == ""


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_a_missing_control_table_is_one_line_and_exit_2(
    argv: list[str], sc_settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN settings naming tables that do not exist
    monkeypatch.setenv("DYNASHIFT_ENDPOINT_URL", sc_settings.endpoint_url)
    monkeypatch.setenv("DYNASHIFT_CONTROL_TABLE", sc_settings.control_table)
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    line = one_line(err)
    assert "not found" in line and sc_settings.control_table in line and out == ""
