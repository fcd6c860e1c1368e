"""The exact drain: receipts from the handler, a reader of the drain's own (no AWS).

The consumer is whatever wrote the receipts (Lambda's mapping or the local
runner); these tests write receipts directly, as the handler would, and
check what the drain concludes per shard.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shared.core.errors import DrainTimeout
from shared.core.settings import load_settings
from shared.store.receipts import receipt_items
from shared.streams import drain

ARN = "arn:aws:dynamodb:us-east-1:000000000000:table/sc-accounts/stream/2026-12-03T00:00:00.000"
CREATED = 1_800_000_000.0


def seq(n: int) -> str:
    return f"{n:021d}"


def event_id(n: int) -> str:
    return f"event-{n}"


class FakeStreams:
    """Shards as lists of record numbers; closed shards end, open ones return empty pages."""

    def __init__(self, shards: dict[str, tuple[list[int], bool]], empty_before: int = 0) -> None:
        self.shards = shards
        self.empty_before = empty_before  # empty pages before the records (real DynamoDB may answer so)
        self.reads = 0

    def describe_stream(self, StreamArn: str, **_: Any) -> dict[str, Any]:  # noqa: N803
        shards = [{"ShardId": s} for s in self.shards] if StreamArn == ARN else []  # the other table's: empty
        return {"StreamDescription": {"Shards": shards}}

    def get_shard_iterator(self, StreamArn, ShardId, ShardIteratorType, SequenceNumber=None):  # noqa: N803
        numbers, _ = self.shards[ShardId]
        start = 0 if ShardIteratorType == "TRIM_HORIZON" else sum(1 for n in numbers if n <= int(SequenceNumber))
        return {"ShardIterator": f"{ShardId}|{start}|{self.empty_before}"}

    def get_records(self, ShardIterator, Limit):  # noqa: N803
        self.reads += 1
        shard, position, empties = ShardIterator.split("|")
        position, empties = int(position), int(empties)
        numbers, closed = self.shards[shard]
        if empties:
            return {"Records": [], "NextShardIterator": f"{shard}|{position}|{empties - 1}"}
        page = numbers[position: position + 2]
        records = [{"eventID": event_id(n), "dynamodb": {"SequenceNumber": seq(n),
                                                         "ApproximateCreationDateTime": CREATED + n}} for n in page]
        at_end = position + len(page) >= len(numbers)
        nxt = None if closed and at_end else f"{shard}|{position + len(page)}|0"
        return {"Records": records, "NextShardIterator": nxt}


class FakeControl:
    """The control table: DescribeTable of the source, receipts and drain positions."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}

    def describe_table(self, TableName: str) -> dict[str, Any]:  # noqa: N803
        arn = ARN if TableName == "sc-accounts" else ARN.replace("sc-accounts", TableName)
        return {"Table": {"LatestStreamArn": arn, "StreamSpecification": {"StreamEnabled": True}}}

    def query(self, TableName: str, KeyConditionExpression: str, ExpressionAttributeValues: dict, **_: Any):  # noqa: N803
        pk = ExpressionAttributeValues[":pk"]["S"]
        since = ExpressionAttributeValues.get(":since", {}).get("S", "")
        items = [copy.deepcopy(v) for (p, s), v in sorted(self.items.items()) if p == pk and s >= since]
        return {"Items": items}

    def put_item(self, TableName: str, Item: dict[str, Any], **conditional: Any) -> dict[str, Any]:  # noqa: N803
        key = (Item["PK"]["S"], Item["SK"]["S"])
        old = self.items.get(key)
        if old is not None and "sequence_order" in Item:
            if (old["sequence_order"]["S"], not old["finished"]["BOOL"]) >= (Item["sequence_order"]["S"],
                                                                             not Item["finished"]["BOOL"]):
                return {}  # the condition: a position only moves forward
        self.items[key] = copy.deepcopy(Item)
        return {}

    def acknowledge(self, *numbers: int, now: float = CREATED + 1000) -> None:
        """What the handler writes after a batch in which these records did not fail."""
        records = [{"eventID": event_id(n), "eventSourceARN": ARN, "dynamodb": {"SequenceNumber": seq(n)}}
                   for n in numbers]
        for item in receipt_items(records, set(), now):
            self.put_item("control", item)


@pytest.fixture
def settings():
    return load_settings(table_names={"sc-accounts": "sc-accounts"})


def measure(settings, control, streams, **kw):
    return {s.shard_id: s for s in drain.measure(settings, "forward", dynamodb=control, streams=streams, **kw)
            if s.table == "sc-accounts"}


def test_every_shard_is_measured_on_its_own_across_lineage(settings):
    # GIVEN a closed parent fully acknowledged, a closed parent half acknowledged,
    # an open child nobody acknowledged, and an empty open child
    streams = FakeStreams({"parent-done": ([1, 2, 3], True), "parent-half": ([4, 5, 6, 7, 8], True),
                           "child-new": ([9, 10], False), "child-empty": ([], False)})
    control = FakeControl()
    control.acknowledge(1, 2, 3, 4, 5)
    # WHEN the drain measures
    shards = measure(settings, control, streams)
    # THEN each shard's own records decide
    assert {s: v.drained for s, v in shards.items()} == {
        "parent-done": True, "parent-half": False, "child-new": False, "child-empty": True}
    assert shards["parent-half"].confirmed == seq(5) and shards["parent-half"].pending == 3
    assert shards["child-new"].confirmed is None and shards["child-new"].oldest_pending_at == CREATED + 9
    # AND the finished parent is recorded so: it is never read again
    reads = streams.reads
    assert measure(settings, control, streams)["parent-done"].finished
    assert streams.reads - reads == 7  # parent-half from 5 (2 pages), child-new (1 + 2 empty), child-empty (2 empty)


def test_a_later_record_acknowledged_before_an_earlier_one_does_not_drain_the_shard(settings):
    # GIVEN batches of one shard handled out of order (ParallelizationFactor > 1, or a
    # partial batch failure whose later records succeeded): 2 and 3 acknowledged, 1 not
    streams = FakeStreams({"s": ([1, 2, 3], False)})
    control = FakeControl()
    control.acknowledge(2, 3)
    # WHEN measured / THEN not drained, nothing confirmed, lag from record 1
    shard = measure(settings, control, streams)["s"]
    assert not shard.drained and shard.confirmed is None and shard.pending == 1
    assert shard.lag_s(CREATED + 11) == pytest.approx(10)
    # AND once record 1 is acknowledged (the retry), it is drained and confirmed to the end
    control.acknowledge(1)
    shard = measure(settings, control, streams)["s"]
    assert shard.drained and shard.confirmed == seq(3)


def test_a_record_discarded_by_the_mapping_keeps_the_drain_from_ever_succeeding(settings, monkeypatch):
    # GIVEN record 2 exhausted its retries and went to the on-failure queue: it never gets a receipt
    streams = FakeStreams({"s": ([1, 2, 3], False)})
    control = FakeControl()
    control.acknowledge(1, 3)
    monkeypatch.setattr(drain.aws, "dynamodb", lambda s: control)
    monkeypatch.setattr(drain.aws, "streams", lambda s: streams)
    clock = iter(range(100))
    # WHEN the cutover waits for the drain / THEN it times out instead of saying drained
    with pytest.raises(DrainTimeout, match="did not acknowledge every record"):
        drain.wait_drained(settings, "forward", 5, clock=lambda: next(clock), sleep=lambda s: None)


def test_an_empty_page_before_records_does_not_end_an_open_shard(settings):
    # GIVEN an open shard that answers one empty page before its records (real DynamoDB may)
    streams = FakeStreams({"s": ([11, 12, 13], False)}, empty_before=drain.EMPTY_PAGES_AT_END - 1)
    # WHEN read from nowhere / THEN the records behind the empty page are found
    records, closed = drain.read_shard(streams, ARN, "s", None)
    assert [r.sequence_number for r in records] == [seq(11), seq(12), seq(13)] and not closed
    assert drain.last_sequence(streams, ARN, "s") == seq(13)


def test_a_baseline_makes_the_records_before_a_consumers_start_not_its_own(settings):
    # GIVEN records 1-3 written before a `--from latest` consumer started after 3, and 4 acknowledged by it
    streams = FakeStreams({"s": ([1, 2, 3, 4], False)})
    control = FakeControl()
    drain.record_baseline(settings, ARN, "s", seq(3), dynamodb=control)
    control.acknowledge(4)
    # WHEN measured / THEN drained: only record 4 was the consumer's
    shard = measure(settings, control, streams)["s"]
    assert shard.drained and shard.confirmed == seq(4)


def test_positions_only_move_forward_when_measurers_race(settings):
    # GIVEN a position confirmed to 5 / WHEN a slower measurer saves 3 / THEN 5 stays
    control = FakeControl()
    drain.record_baseline(settings, ARN, "s", seq(5), dynamodb=control)
    drain.record_baseline(settings, ARN, "s", seq(3), dynamodb=control)
    assert control.items[(f"DRAINPOS#{ARN}", "s")]["sequence_number"]["S"] == seq(5)


def test_receipts_name_only_the_records_that_did_not_fail_and_split_large_batches():
    # GIVEN a batch of 9,000 records of which one failed
    records = [{"eventID": event_id(n), "eventSourceARN": ARN, "dynamodb": {"SequenceNumber": seq(n)}}
               for n in range(9000)]
    items = receipt_items(records, {seq(17)}, CREATED)
    # THEN every other record is named once, in items of at most 4,000 ids (an item holds 400 KB)
    ids = [i for item in items for i in item["ids"]["SS"]]
    assert len(ids) == 8999 and event_id(17) not in ids and len(items) == 3
    assert all(len(item["ids"]["SS"]) <= 4000 for item in items)
    assert all(int(item["expires_at"]["N"]) > CREATED + 86400 for item in items)  # outlives the stream's 24 h


class FakeAsyncControl:
    def __init__(self, fail_with: str | None = None) -> None:
        self.items: list[dict[str, Any]] = []
        self.fail_with = fail_with

    async def put_item(self, TableName: str, Item: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
        if self.fail_with:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": self.fail_with, "Message": "x"}}, "PutItem")
        self.items.append(Item)
        return {}


def batch(*numbers: int) -> list[dict[str, Any]]:
    return [{"eventID": event_id(n), "eventSourceARN": ARN, "dynamodb": {"SequenceNumber": seq(n)}} for n in numbers]


def test_a_batch_acknowledges_what_it_applied_and_never_a_failed_record():
    import asyncio

    from shared.store.receipts import acknowledge

    # GIVEN a batch in which record 2 hit a transient fault
    control = FakeAsyncControl()
    failed = asyncio.run(acknowledge(control, "control", batch(1, 2, 3), {seq(2)}))
    # THEN the failed set is reported unchanged and the receipt names 1 and 3 only
    assert failed == {seq(2)}
    assert [item["ids"]["SS"] for item in control.items] == [[event_id(1), event_id(3)]]


def test_a_receipt_that_cannot_be_written_fails_the_whole_batch_for_redelivery():
    import asyncio

    from shared.store.receipts import acknowledge

    # GIVEN the receipt write is throttled / THEN every record is reported failed (the stream redelivers,
    # re-applying is idempotent), so no applied record is ever left without a receipt
    failed = asyncio.run(acknowledge(FakeAsyncControl("ThrottlingException"), "control", batch(1, 2), set()))
    assert failed == {seq(1), seq(2)}
    # AND a non-transient failure is an error, not a silent loss
    with pytest.raises(Exception, match="write consumer receipts"):
        asyncio.run(acknowledge(FakeAsyncControl("AccessDeniedException"), "control", batch(1), set()))


def test_a_read_that_stops_at_the_first_gap_says_its_count_is_a_floor(settings):
    # GIVEN three records, none acknowledged
    streams = FakeStreams({"s": ([1, 2, 3], False)})
    # WHEN measured cheaply (to the first gap) / THEN one pending, marked as counted only so far
    cheap = measure(settings, FakeControl(), streams, stop_at_gap=True)["s"]
    assert cheap.pending == 1 and not cheap.counted_all and cheap.as_dict(CREATED)["pending_counted_all"] is False
    # AND a full read counts all three
    full = measure(settings, FakeControl(), streams)["s"]
    assert full.pending == 3 and full.counted_all


class CountingControl(FakeControl):
    def __init__(self) -> None:
        super().__init__()
        self.describes = 0

    def describe_table(self, TableName: str) -> dict[str, Any]:  # noqa: N803
        self.describes += 1
        return super().describe_table(TableName)


def test_a_wait_reads_each_tables_stream_arn_once_and_the_shard_list_on_every_poll(settings, monkeypatch):
    # GIVEN a shard whose last record gets its receipt only after three polls
    streams = FakeStreams({"s": ([1, 2], False)})
    control = CountingControl()
    control.acknowledge(1)
    polls = []

    def sleep(_s: float) -> None:
        polls.append(1)
        if len(polls) == 3:
            control.acknowledge(2)

    described = []
    original = streams.describe_stream
    monkeypatch.setattr(streams, "describe_stream", lambda **kw: described.append(1) or original(**kw))
    # WHEN the cutover waits for the drain with clients it made before the freeze
    drain.wait_drained(settings, "forward", 60, sleep=sleep, dynamodb=control, streams=streams)
    # THEN DescribeTable ran once per legacy table, DescribeStream on every poll (a shard may split)
    assert control.describes == len(drain.consumer_tables(settings, "forward"))
    assert len(described) == 4 * len(drain.consumer_tables(settings, "forward"))


def test_the_cutovers_waits_make_no_client_during_the_freeze(monkeypatch):
    # GIVEN the real ports, made before the gate
    from shared.cutover import aws_ports

    ports = aws_ports.AwsPorts(load_settings(endpoint_url="http://localhost:1"))
    made = []
    monkeypatch.setattr(drain.aws, "dynamodb", lambda *a, **k: made.append("dynamodb"))
    monkeypatch.setattr(drain.aws, "streams", lambda *a, **k: made.append("streams"))
    seen = []

    def is_drained(settings, direction, *, dynamodb, streams, arns):
        seen.append((dynamodb, streams))
        return True

    monkeypatch.setattr(drain, "is_drained", is_drained)
    monkeypatch.setattr(drain, "measure", lambda *a, dynamodb, streams, **k: seen.append((dynamodb, streams)) or [])
    # WHEN the freeze's drain and the gate's lag check run
    assert ports.wait_drained("forward", 5) and ports.wait_caught_up("reverse", 5)
    # THEN both used the clients the ports made up front, and made none of their own
    assert made == []
    assert seen and all(pair == (ports.dynamodb, ports.streams) for pair in seen)
