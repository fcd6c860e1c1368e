"""The backfill under faults (issue 14): throttling slows it down only while it lasts, and a lost answer
(a 500 after the update landed) neither strands a claimed unit nor loses a completion.

No clock anywhere: the governor counts answers, and the fakes answer at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.hooks import HierarchicalEmitter

from backfill import worker as worker_module
from backfill.ratelimit import ThrottleGovernor
from backfill.units import JUST_READ_S, Unit, UnitStore, UnitView
from backfill.worker import WorkerOptions, run_worker
from shared.core.settings import load_settings

CEILING = 16


def answers(governor: ThrottleGovernor, count: int, throttled_share: float, rng: random.Random) -> list[int]:
    """Feed `count` answers, each throttled with probability `throttled_share`; the limit after each."""
    limits = []
    for _ in range(count):
        governor.record(rng.random() < throttled_share)
        limits.append(governor.limit)
    return limits


# ------------------------------------------------------------------------ the worker's client


def test_a_throttled_request_costs_the_worker_a_short_retry_not_its_speed(monkeypatch: pytest.MonkeyPatch):
    """Root cause of issue 14: botocore's adaptive retry mode cut the send rate of the worker's whole client
    (checkpoints and lease renewals too) at every throttled answer and regrew it over seconds, so 3% of throttled
    requests held the backfill at a fraction of its speed; and every retry waited up to a second (standard
    mode's base), while the page it belongs to, half of the worker's pipeline, waited for it."""
    random.seed(14)  # the jitter draws from the global generator: the same delays every run
    # GIVEN run_worker, with the client it opens kept and the work replaced by asking that client how it
    # answers throttling (no request is sent)
    opened: list[dict[str, Any]] = []
    delays: list[Any] = []
    real_aio_dynamodb = worker_module.aws.aio_dynamodb

    @contextlib.asynccontextmanager
    async def aio_dynamodb(settings: Any, **kwargs: Any):
        opened.append(kwargs)
        async with real_aio_dynamodb(settings, **kwargs) as client:
            yield client

    class Throttled:  # the HTTP side of a ThrottlingException answer
        def __init__(self) -> None:
            self.status_code, self.headers = 400, {}

    class AskTheClient:
        def __init__(self, settings: Any, options: Any, client: Any, owner: Any = None) -> None:
            self.client = client

        async def run(self) -> None:
            operation = self.client.meta.service_model.operation_model("PutItem")
            for attempt in (1, 2, 3):
                answers = await self.client.meta.events.emit(
                    "needs-retry.dynamodb.PutItem", attempts=attempt, operation=operation, caught_exception=None,
                    response=(Throttled(), {"Error": {"Code": "ThrottlingException"},
                                            "ResponseMetadata": {"HTTPStatusCode": 400}}),
                    endpoint=None, request_dict={"context": {}})
                delays.append(next((r for _, r in answers if r is not None), None))

    monkeypatch.setattr(worker_module.aws, "aio_dynamodb", aio_dynamodb)
    monkeypatch.setattr(worker_module, "Worker", AskTheClient)
    # WHEN a worker runs
    asyncio.run(run_worker(load_settings(endpoint_url="http://127.0.0.1:1"), WorkerOptions(tables=["sc-accounts"])))
    # THEN its client retries each request on its own (standard mode), with no client-wide rate limiter ...
    assert len(opened) == 1 and opened[0].get("retry_mode", "standard") == "standard"
    assert opened[0].get("max_attempts", 3) >= 5
    # ... soon: a random share of 50 ms, doubling per attempt (not of 1 s)
    assert all(delay is not None for delay in delays), delays
    assert [delay <= bound for delay, bound in zip(delays, (0.05, 0.1, 0.2), strict=True)] == [True] * 3, delays


# ---------------------------------------------------------------------------------- the governor


def test_the_back_off_recovers_after_throttling_stops():
    # GIVEN a governor that persistent throttling drove down to a write or two at a time
    governor = ThrottleGovernor(CEILING)
    answers(governor, 2_000, 0.5, random.Random(1))
    assert governor.limit <= 2 and governor.cuts >= 4
    # WHEN the table serves everything again
    limits = answers(governor, 300, 0.0, random.Random(2))
    # THEN the slots come back as soon as the throttles leave the window (50 answers), one more per round of
    # answers after that: all 16 after at most 50 + (1 + 2 + ... + 15) = 170 answers, and they stay
    assert limits == sorted(limits)
    assert limits[169:] == [CEILING] * 131
    assert limits[50] > 1


def test_sparse_throttling_keeps_the_writes_in_flight():
    # GIVEN a governor at full speed
    governor = ThrottleGovernor(CEILING)
    # WHEN 3% of 10,000 answers are throttled (a table working at its capacity)
    limits = answers(governor, 10_000, 0.03, random.Random(7))
    # THEN the writes in flight stay (nearly) all there
    assert sum(limits) / len(limits) >= 0.9 * CEILING
    assert min(limits) >= CEILING // 2


def test_persistent_throttling_halves_the_writes_in_flight():
    # GIVEN a governor at full speed
    governor = ThrottleGovernor(CEILING)
    # WHEN a quarter of the answers keep being throttled
    limits = answers(governor, 3_000, 0.25, random.Random(3))
    # THEN it backs off to a few writes at a time
    assert sum(limits[-1000:]) / 1000 <= 4
    assert governor.cuts >= 3


def test_one_burst_of_throttles_halves_once():
    # GIVEN a governor with a full window of served answers
    governor = ThrottleGovernor(CEILING)
    for _ in range(50):
        governor.record(False)
    # WHEN ten throttled answers arrive at once (one burst of writes in flight at the same moment)
    for _ in range(10):
        governor.record(True)
    # THEN the slots are halved once, not once per throttled answer
    assert governor.limit == CEILING // 2
    assert governor.cuts == 1


def test_slots_bound_the_writes_in_flight_and_reopen_when_the_limit_grows():
    async def scenario() -> tuple[int, int]:
        governor = ThrottleGovernor(4, window=4, threshold=0.5)
        for _ in range(8):  # two windows of throttles: 4 -> 2 -> 1
            governor.record(True)
        assert governor.limit == 1
        peak = 0
        release = asyncio.Event()

        async def write() -> None:
            nonlocal peak
            async with governor.slot():
                peak = max(peak, governor.in_flight)
                await release.wait()

        tasks = [asyncio.ensure_future(write()) for _ in range(3)]
        for _ in range(5):
            await asyncio.sleep(0)
        held_at_limit_1 = governor.in_flight
        governor.record(False)  # one served answer at limit 1: back to 2, a waiter goes in
        for _ in range(5):
            await asyncio.sleep(0)
        held_at_limit_2 = governor.in_flight
        release.set()
        await asyncio.gather(*tasks)
        assert peak == 2 and governor.in_flight == 0
        return held_at_limit_1, held_at_limit_2

    assert asyncio.run(scenario()) == (1, 2)


def test_only_the_answers_to_its_own_writes_count():
    # GIVEN a governor hooked to a client's events
    class Client:
        class meta:  # botocore's shape
            events = HierarchicalEmitter()

    governor = ThrottleGovernor(CEILING)
    governor.install(Client)

    def answer(code: str | None, status: int) -> None:
        parsed: dict[str, Any] = {"ResponseMetadata": {"HTTPStatusCode": status}}
        if code:
            parsed["Error"] = {"Code": code}
        Client.meta.events.emit("needs-retry.dynamodb.PutItem", response=(None, parsed), caught_exception=None,
                                attempts=1, operation=None, endpoint=None, request_dict={})

    async def scenario() -> None:
        answer("ThrottlingException", 400)  # outside any slot (a checkpoint, a renewal): not its business
        async with governor.slot():
            answer("ThrottlingException", 400)
            answer("ProvisionedThroughputExceededException", 400)
            answer("InternalServerError", 500)  # says nothing about capacity
            answer("ConditionalCheckFailedException", 400)  # served
            answer(None, 200)

    # WHEN answers arrive in and out of its slots
    asyncio.run(scenario())
    # THEN it counted the two throttles and the two served answers of its own writes, nothing else
    assert governor.throttled == 2
    assert list(governor._recent) == [True, True, False, False]


# ----------------------------------------------------------------- lost answers (500 after applying)


class LostAnswerClient:
    """A control table of one item where the first answer to an update is lost after it was applied,
    and botocore's retry then meets its own write (the condition fails, ALL_OLD comes back)."""

    def __init__(self, item: dict[str, Any]) -> None:
        self.item = item
        self.calls = 0

    async def update_item(self, **kw: Any) -> dict[str, Any]:
        self.calls += 1
        values = kw["ExpressionAttributeValues"]
        if self.calls == 1:  # the update lands ...
            for assignment in kw["UpdateExpression"].split("SET ", 1)[1].split(","):
                if "=" not in assignment:
                    continue  # the tail of if_not_exists(a, b)
                name, value = (part.strip() for part in assignment.split("=", 1))
                if value.startswith(("if_not_exists", "completions")):
                    continue
                self.item[kw["ExpressionAttributeNames"].get(name, name)] = values[value]
            # ... and its answer is lost; the retry finds the item changed by the first attempt
        error = {"Error": {"Code": "ConditionalCheckFailedException", "Message": "The conditional request failed"},
                 "ResponseMetadata": {"HTTPStatusCode": 400}}
        if kw.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD":
            error["Item"] = dict(self.item)
        raise ClientError(error, "UpdateItem")


def unit_item(**extra: Any) -> dict[str, Any]:
    item = {"PK": {"S": "BACKFILL#sc-accounts"}, "SK": {"S": "UNIT#00003"}, "kind": {"S": "segment"},
            "status": {"S": "pending"}, "read": {"N": "0"}, "written": {"N": "0"}, "skipped": {"N": "0"},
            "quarantined": {"N": "0"}, "completions": {"N": "0"}}
    item.update(extra)
    return item


def test_a_claim_whose_answer_was_lost_is_still_ours():
    # GIVEN a pending unit, and a claim whose update lands but whose answer is a 500 (retried, then refused)
    client = LostAnswerClient(unit_item())
    store = UnitStore(client, "control", clock=lambda: 1000.0)
    # WHEN the worker claims it
    unit = asyncio.run(store.claim_unit("sc-accounts", 3, "worker-a", 30.0))
    # THEN the claim is recognised as its own: the unit is not left leased to a worker that does not know it
    assert unit is not None and unit.owner == "worker-a" and unit.status == "running"


def test_someone_elses_claim_is_not_taken_for_ours():
    # GIVEN a unit another loop of the same worker claimed (same owner, another claim)
    item = unit_item(status={"S": "running"}, owner={"S": "worker-a"}, lease_until={"N": "2000.0"},
                     claim_id={"S": "another-claim"})

    class Refuses(LostAnswerClient):
        async def update_item(self, **kw: Any) -> dict[str, Any]:
            self.calls += 1  # never applies: the condition fails at once
            raise ClientError({"Error": {"Code": "ConditionalCheckFailedException"}, "Item": dict(self.item),
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, "UpdateItem")

    store = UnitStore(Refuses(item), "control", clock=lambda: 1000.0)
    # WHEN a second loop tries to claim it
    # THEN it does not get it: two loops never work one unit
    assert asyncio.run(store.claim_unit("sc-accounts", 3, "worker-a", 30.0)) is None


def test_a_completion_whose_answer_was_lost_counts_as_done():
    # GIVEN a running unit of worker-a, and a final checkpoint whose answer is lost after it landed
    item = unit_item(status={"S": "running"}, owner={"S": "worker-a"}, lease_until={"N": "2000.0"})
    client = LostAnswerClient(item)
    store = UnitStore(client, "control", clock=lambda: 1000.0)
    unit = Unit("sc-accounts", 3, "segment", status="running", owner="worker-a", read=40, written=39)
    # WHEN the worker completes it
    completed = asyncio.run(store.checkpoint(unit, "worker-a", done=True))
    # THEN it is done, and the worker knows it did it (not "lease lost")
    assert completed and unit.status == "done"
    assert client.item["status"] == {"S": "done"}


def test_a_waiter_cancelled_after_it_was_woken_passes_its_slot_on():
    async def scenario() -> list[str]:
        governor = ThrottleGovernor(1)
        got_in: list[str] = []

        async def write(name: str) -> None:
            async with governor.slot():
                got_in.append(name)

        held = governor.slot()
        await held.__aenter__()  # the one slot is taken
        first, second = asyncio.ensure_future(write("first")), asyncio.ensure_future(write("second"))
        await asyncio.sleep(0)  # both wait
        await held.__aexit__(None, None, None)  # frees it: `first` is woken ...
        first.cancel()  # ... and cancelled before it could run
        await asyncio.wait_for(second, 1)  # THEN `second` gets the slot instead of waiting forever
        assert governor.in_flight == 0
        return got_in

    assert asyncio.run(scenario()) == ["second"]


# ------------------------------------------------------- claims of one worker's unit loops


class UnitTable:
    """The control table's units of one table, in memory: Query by PK, conditional claims.
    Every call yields to the loop first, so concurrent claimers interleave as on a real engine."""

    def __init__(self, units: int) -> None:
        self.items = {f"UNIT#{n:05d}": unit_item(SK={"S": f"UNIT#{n:05d}"}) for n in range(units)}
        self.run = {"PK": {"S": "BACKFILL#sc-accounts"}, "SK": {"S": "RUN"}, "segments": {"N": str(units)},
                    "source": {"S": "scan"}, "write_mode": {"S": "insert"}, "created_at": {"N": "900"}}
        self.refused = 0
        self.queries = 0

    async def query(self, **kw: Any) -> dict[str, Any]:
        self.queries += 1
        await asyncio.sleep(0)
        return {"Items": [dict(self.run), *(dict(item) for item in self.items.values())]}

    async def update_item(self, **kw: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        item = self.items[kw["Key"]["SK"]["S"]]
        values = kw["ExpressionAttributeValues"]
        if item["status"]["S"] != "pending":
            self.refused += 1
            raise ClientError({"Error": {"Code": "ConditionalCheckFailedException"}, "Item": dict(item),
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, "UpdateItem")
        item.update(status={"S": "running"}, owner=values[":me"], lease_until=values[":until"],
                    claim_id=values[":claim"])
        return {"Attributes": dict(item)}


def test_unit_loops_of_one_worker_claim_different_units_without_refused_writes():
    # GIVEN 8 pending units and 8 unit loops of one worker claiming at the same moment
    table = UnitTable(8)
    store = UnitStore(table, "control", clock=lambda: 1000.0)

    async def claim_all() -> list[Any]:
        run = await store.load("sc-accounts")
        taken: set[str] = set()
        return await asyncio.gather(*(store.claim(run, "worker-a", 30.0, taken=taken) for _ in range(8)))

    units = asyncio.run(claim_all())
    # THEN each loop gets its own unit, and no claim was a refused (billed) conditional write
    assert sorted(u.number for u in units) == list(range(8))
    assert table.refused == 0


def test_a_worker_holds_no_more_units_than_it_can_work(monkeypatch: pytest.MonkeyPatch):
    # GIVEN 16 pending units and a worker with 8 unit loops for them (`units_in_flight`)
    table = UnitTable(16)
    table.meta = type("Meta", (), {"events": HierarchicalEmitter()})()
    worker = worker_module.Worker(load_settings(endpoint_url="http://127.0.0.1:1"),
                                  WorkerOptions(tables=["sc-accounts"], units_in_flight=8), table, owner="worker-a")
    worker.units = UnitStore(table, "control", clock=lambda: 1000.0)
    held: set[str] = set()
    most_held = 0

    async def process_unit(run: Any, unit: Unit) -> bool:  # one page at a time; then the unit is done
        nonlocal most_held
        held.add(unit.sk)
        most_held = max(most_held, len(held))
        await asyncio.sleep(0.01)
        held.discard(unit.sk)
        table.items[unit.sk]["status"] = {"S": "done"}
        return True

    monkeypatch.setattr(worker, "process_unit", process_unit)

    async def work() -> None:
        run = await worker.units.load("sc-accounts")
        await asyncio.gather(*(worker._unit_loop(run) for _ in range(8)))

    # WHEN its loops work the table
    asyncio.run(work())
    # THEN every unit was done, yet it never held more units than its page slots keep busy: the
    # others stay free for a second process (8 at once left one that began late nothing to do)
    assert worker.report.units_completed == 16
    assert most_held == worker_module.UNITS_HELD
    assert table.refused == 0


def test_the_unit_loops_of_one_worker_share_one_read_of_the_unit_list():
    # GIVEN 16 pending units and a worker whose 8 unit loops work them one after another
    table = UnitTable(16)
    table.meta = type("Meta", (), {"events": HierarchicalEmitter()})()
    worker = worker_module.Worker(load_settings(endpoint_url="http://127.0.0.1:1"),
                                  WorkerOptions(tables=["sc-accounts"], units_in_flight=8), table, owner="worker-a")
    worker.units = UnitStore(table, "control", clock=lambda: 1000.0)

    async def process_unit(run: Any, unit: Unit) -> bool:
        await asyncio.sleep(0.01)
        table.items[unit.sk]["status"] = {"S": "done"}
        unit.status = "done"  # as the completing checkpoint does
        return True

    worker.process_unit = process_unit  # type: ignore[method-assign]

    async def work() -> None:
        run = await worker.units.load("sc-accounts")
        await asyncio.gather(*(worker._unit_loop(run) for _ in range(8)))

    asyncio.run(work())
    # THEN every unit was done once, with no refused claim, and the list was read a few times, not
    # once per claim and once more per loop at its end (32 reads before the loops shared it)
    assert worker.report.units_completed == 16
    assert table.refused == 0
    assert table.queries <= 4, table.queries


def test_a_claim_refused_from_an_outdated_list_reads_it_again_and_takes_a_free_unit():
    # GIVEN a worker's shared copy of the list, read while units 0 and 1 were pending
    table = UnitTable(2)
    store = UnitStore(table, "control", clock=lambda: 1000.0)

    async def claim_after_another_worker() -> Any:
        run = await store.load("sc-accounts")
        view = UnitView(store, "sc-accounts")
        await view.units()
        # WHEN another worker takes unit 0 meanwhile, and this worker claims from its copy
        table.items["UNIT#00000"].update(status={"S": "running"}, owner={"S": "worker-b"},
                                         lease_until={"N": "1030"})
        return await store.claim(run, "worker-a", 30.0, taken=set(), view=view)

    unit = asyncio.run(claim_after_another_worker())
    # THEN the refused claim (unit 0) costs one write, and the claim goes on to unit 1
    assert unit is not None and unit.number == 1
    assert table.refused == 1


def test_a_worker_waits_for_units_another_worker_holds_instead_of_leaving():
    # GIVEN a table whose only unfinished unit another worker holds under a live lease, as this
    # worker's shared copy of the list, read a while ago, does not show yet
    table = UnitTable(1)
    store = UnitStore(table, "control", clock=lambda: 1000.0)

    async def claim_and_look() -> tuple[Any, list[Unit]]:
        run = await store.load("sc-accounts")
        view = UnitView(store, "sc-accounts", max_age_s=60.0)
        await view.units()
        table.items["UNIT#00000"].update(status={"S": "running"}, owner={"S": "worker-b"},
                                         lease_until={"N": "1030"})
        view._read_at -= 30.0  # type: ignore[operator]  # read 30 s ago
        claimed = await store.claim(run, "worker-a", 30.0, taken=set(), view=view)
        return claimed, await view.units(within_s=JUST_READ_S)

    claimed, current = asyncio.run(claim_and_look())
    # THEN the claim is refused once, the list is read again, and the exit check sees the other
    # worker's unit (so the unit loop waits for its lease instead of returning)
    assert claimed is None
    assert [(u.status, u.owner) for u in current] == [("running", "worker-b")]


def test_the_progress_display_reads_the_in_process_workers_copy_of_the_unit_list(monkeypatch: pytest.MonkeyPatch):
    # GIVEN a backfill of one table whose in-process worker shares its copy of the unit list, and a
    # display refreshing many times before the worker finishes
    from rich.console import Console

    from backfill import run as run_module

    table = UnitTable(4)
    store = UnitStore(table, "control", clock=lambda: 1000.0)

    @contextlib.asynccontextmanager
    async def aio_dynamodb(settings: Any, **kwargs: Any):
        yield table

    monkeypatch.setattr(run_module.aws, "aio_dynamodb", aio_dynamodb)
    monkeypatch.setattr(run_module, "PROGRESS_EVERY_S", 0.0)
    refreshes = iter([False] * 20 + [True])

    async def show() -> None:
        view = UnitView(store, "sc-accounts")
        await view.units()
        table.queries = 0
        await run_module._progress(load_settings(endpoint_url="http://127.0.0.1:1"), ["sc-accounts"],
                                   Console(quiet=True), lambda: next(refreshes), views=lambda: {"sc-accounts": view})

    asyncio.run(show())
    # THEN 21 refreshes read the table twice: once for the run, once for the final figures
    assert table.queries == 2
