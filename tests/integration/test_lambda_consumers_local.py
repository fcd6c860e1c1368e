"""The production path with Lambda-like consumers: they keep their checkpoints to themselves.

`tests.esm_consumer.EsmConsumer` stands in for each event source mapping:
the same handler, Lambda's delivery rules, no checkpoint and no start
record in the control table. The cutover's lag check and drain, and the
backfill's coverage check, must work from what dynashift can know on AWS:
the handler's receipts and the mapping's state.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from rich.console import Console

from backfill.run import BackfillRequest, run_backfill
from shared.cli.main import main
from shared.core import aws
from shared.core.settings import Settings, load_settings
from shared.cutover.protocol import CUTOVER, ROLLBACK
from shared.sc.seed import seed
from shared.sim.app_sim import SwitchRig
from shared.store.mode import Mode
from shared.streams import coverage
from shared.verify.convergence import check_tables
from tests.esm_consumer import EsmConsumer, FakeLambda
from tests.integration.helpers import make_tables

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:No application metrics to publish")]

FUNCTIONS = {"forward": "dynashift-mirror", "reverse": "dynashift-reverse-mirror"}


def control_items(settings: Settings, prefix: str) -> list[dict]:
    items = aws.dynamodb(settings).scan(TableName=settings.control_table)["Items"]
    return [i for i in items if i["PK"]["S"].startswith(prefix)]


@pytest.mark.timeout(900)
def test_cutover_rollback_and_cutover_again_with_lambda_like_consumers_lose_no_write(fresh_sc_settings):
    # GIVEN both mirrors run as event source mappings would (private checkpoints), and the application writes
    settings = load_settings(endpoint_url=fresh_sc_settings.endpoint_url, mode_cache_age_s=1.0,
                             cutover_inflight_grace_s=0.3, cutover_timeout_s=240.0, cutover_max_lag_s=240.0)
    consumers: list[EsmConsumer] = []

    def consumer(s: Settings, direction: str) -> EsmConsumer:
        consumers.append(EsmConsumer(s, direction, FUNCTIONS[direction]))
        return consumers[-1]

    with SwitchRig(settings, rate_per_s=30, seed=5, consumer=consumer) as rig:
        time.sleep(2)
        # WHEN switching over, back, and over again
        for which, target in ((CUTOVER, Mode.NEW), (ROLLBACK, Mode.OLD), (CUTOVER, Mode.NEW)):
            outcome = rig.switch(which)
            # THEN each switch completes through the receipts-based lag check and drain,
            # the authoritative side holds every acknowledged write, and nothing echoes
            assert outcome.outcome == "switched" and outcome.mode == target, outcome
            assert outcome.diff is not None and outcome.diff.ok, (which.op, outcome.diff.summary())
            assert outcome.echoes == [], outcome.echoes[:5]
            time.sleep(1)
        assert rig.app.stats.acknowledged_by_mode["old"] > 0 and rig.app.stats.acknowledged_by_mode["new"] > 0
    # AND the consumers never told the control table where they are: only receipts did
    assert control_items(settings, "CHECKPOINT#") == []
    assert control_items(settings, "RECEIPT#") and control_items(settings, "DRAINPOS#")


@pytest.fixture
def quiet_tables(fresh_sc_settings):
    """History written before replication started; nobody writes afterwards."""
    settings = load_settings(endpoint_url=fresh_sc_settings.endpoint_url, mirror_function=FUNCTIONS["forward"],
                             mirror_wait_s=60)
    make_tables(settings)
    asyncio.run(seed(settings, 60, 180, 0.0, 4))
    # The streams are enabled only now (as `enable-streams` does on a production table):
    # the history is in the tables, not in the streams.
    client = aws.dynamodb(settings)
    for source in ("sc-accounts", "sc-repositories"):
        table = settings.physical_name(source)
        client.update_table(TableName=table, StreamSpecification={"StreamEnabled": False})
        client.update_table(TableName=table, StreamSpecification={"StreamEnabled": True,
                                                                  "StreamViewType": "NEW_AND_OLD_IMAGES"})
    return settings


@pytest.mark.timeout(300)
def test_a_backfill_of_a_table_nobody_writes_starts_from_the_mappings_state(quiet_tables, monkeypatch):
    settings = quiet_tables
    # GIVEN the forward mapping enabled from TRIM_HORIZON, which never records a start (no write, no batch...)
    mapping = EsmConsumer(settings, "forward", FUNCTIONS["forward"])
    monkeypatch.setattr(coverage, "lambda_client", lambda s: FakeLambda(mapping))
    assert coverage.mirror_coverage(settings, "sc-accounts").since is None  # "Creating": not yet
    mapping.start()
    try:
        # WHEN the backfill runs (the history is in the stream: the mapping replays it too)
        code = run_backfill(settings, {}, BackfillRequest(table="all", segments=2), Console(quiet=True))
        assert code == 0
        # THEN it started on the mapping's state alone (the handler never had a batch to record a start)
        assert control_items(settings, "MIRROR") == []
        assert coverage.mirror_coverage(settings, "sc-accounts").detail.startswith("event source mapping")
    finally:
        mapping.stop()
    result = check_tables(settings)
    assert result.ok, result.summary()


@pytest.mark.timeout(300)
def test_a_backfill_started_right_after_mirror_run_follow_waits_for_it(quiet_tables, monkeypatch, capsys):
    settings = load_settings(endpoint_url=quiet_tables.endpoint_url, mirror_wait_s=60)
    for name, value in {"DYNASHIFT_ENDPOINT_URL": settings.endpoint_url, "DYNASHIFT_MIRROR_WAIT_S": "60",
                        "DYNASHIFT_TARGET_TABLE": settings.target_table,
                        "DYNASHIFT_CONTROL_TABLE": settings.control_table,
                        "DYNASHIFT_TABLE_NAMES": json.dumps(settings.table_names)}.items():
        monkeypatch.setenv(name, value)
    # GIVEN `mirror run --follow` just launched (its runner is still starting), and no mapping at all
    stop = threading.Event()
    from shared.sim.local_lambda import run_forward_mirror

    def start_late() -> None:  # the runner is slow to start: it has no iterator for 3 s
        time.sleep(3)
        run_forward_mirror(settings, follow=True, stop_event=stop)

    runner = threading.Thread(target=start_late, daemon=True)
    runner.start()
    try:
        # WHEN the backfill is launched from the CLI at once
        code = main(["backfill", "run", "--segments", "2"])
        captured = capsys.readouterr()
        out = captured.out + captured.err
        # THEN it waited for the runner instead of refusing (saying so), and finished
        assert code == 0, out
        assert "waiting for the mirror to cover" in out
    finally:
        stop.set()
        runner.join(60)
    result = check_tables(settings)
    assert result.ok, result.summary()


def test_without_any_mirror_the_backfill_refuses_after_its_bounded_wait_with_progress(quiet_tables, capsys):
    # GIVEN no mirror at all and a short wait
    settings = load_settings(endpoint_url=quiet_tables.endpoint_url, mirror_wait_s=1)
    printed: list[str] = []
    # WHEN the coverage is awaited / THEN one progress line, then a refusal that names the table
    with pytest.raises(Exception, match="does not cover sc-accounts"):
        asyncio.run(coverage.wait_for_coverage(settings, "sc-accounts", 1, progress=printed.append))
    assert printed and "waiting for the mirror to cover sc-accounts" in printed[0]


@pytest.mark.timeout(300)
def test_status_shows_the_lambda_consumers_and_what_they_acknowledged(quiet_tables, monkeypatch, capsys):
    settings = quiet_tables
    for name, value in {"DYNASHIFT_ENDPOINT_URL": settings.endpoint_url,
                        "DYNASHIFT_MIRROR_FUNCTION": FUNCTIONS["forward"],
                        "DYNASHIFT_REVERSE_MIRROR_FUNCTION": FUNCTIONS["reverse"]}.items():
        monkeypatch.setenv(name, value)
    # GIVEN both mappings running, and one legacy write they consumed
    mappings = [EsmConsumer(settings, d, FUNCTIONS[d]) for d in ("forward", "reverse")]
    monkeypatch.setattr(coverage, "lambda_client", lambda s: FakeLambda(*mappings))
    for mapping in mappings:
        mapping.start()
    try:
        aws.dynamodb(settings).put_item(TableName=settings.physical_name("sc-accounts"),
                                        Item={"accountId": {"S": "acct-new"}, "email": {"S": "new@example.com"},
                                              "createdAt": {"N": "1700000000"}})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # WHEN status is asked (JSON)
            assert main(["status", "--json"]) == 0
            data = json.loads(capsys.readouterr().out)
            shards = [s for s in data["consumers"]["shards"] if s["direction"] == "forward"]
            if any(s["confirmed"] for s in shards) and all(s["pending"] == 0 for s in shards):
                break
            time.sleep(1)
        assert main(["status"]) == 0
        human = capsys.readouterr().out
    finally:
        for mapping in mappings:
            mapping.stop()
    # THEN it names each mapping with its state, and each shard with what the consumer acknowledged
    states = {(m["direction"], m["table"]): m.get("state") for m in data["consumers"]["mappings"]}
    assert states == {("forward", settings.physical_name("sc-accounts")): "Enabled",
                      ("forward", settings.physical_name("sc-repositories")): "Enabled",
                      ("reverse", settings.target_table): "Enabled"}
    assert all(s["pending"] == 0 for s in shards) and any(s["confirmed"] for s in shards)
    # AND the human view shows them too
    assert "stream consumers" in human and "Enabled" in human and "TRIM_HORIZON" in human, human
