"""StreamRunner's Lambda-like semantics, against in-memory fakes.

The runner mimics Lambda's event source mapping (see `shared.streams.runner`).
These tests drive it with a fake DynamoDB Streams client, a fake DynamoDB
client (the source table's description and the control table's checkpoints)
and a fake clock whose `sleep` advances time, so every run is fast and
deterministic. The handler is a scripted function that records each event.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from botocore.exceptions import ClientError

from shared.core.errors import StoreError, TransientError
from shared.core.settings import load_settings
from shared.streams import runner as stream_runner
from shared.streams.lambda_event import lambda_record
from shared.streams.runner import StreamRunner

TABLE = "accounts-src"
CONTROL = "ctl-test"
STREAM_ARN = f"arn:aws:dynamodb:us-east-1:123456789012:table/{TABLE}/stream/2024-06-01T00:00:00.000"
START = 1_717_243_200.0  # the fake clock's epoch (2024-06-01T12:00:00Z)


def client_error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"fake {code}"}}, operation)


# ------------------------------------------------------------------- fakes
class FakeClock:
    """`clock()` reads the time; `sleep()` advances it instead of waiting."""

    LIMIT_S = 3600.0  # a runner that never stops fails the test instead of hanging it

    def __init__(self) -> None:
        self.now = START
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)
        if self.now - START > self.LIMIT_S:
            raise AssertionError("runaway: the runner idles for an hour of fake time")


@dataclass
class FakeShard:
    shard_id: str
    parent_id: str | None
    records: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False


class FakeStreams:
    """DescribeStream (paged), GetShardIterator and GetRecords over in-memory shards.

    Sequence numbers are 21-digit strings, increasing across all shards.
    `expire_calls` holds the (1-based) GetRecords calls that raise
    ExpiredIteratorException; `before_get_records(n)` runs before call n.
    """

    MAX_CALLS = 2000  # a runner stuck in a loop fails the test instead of hanging it

    def __init__(self, log: list[tuple[Any, ...]], *, describe_page_size: int = 100, page_limit: int = 1000) -> None:
        self.log = log
        self.describe_page_size = describe_page_size
        self.page_limit = page_limit
        self.shards: dict[str, FakeShard] = {}
        self.iterators: dict[str, tuple[str, int]] = {}
        self.iterator_requests: list[tuple[str, str, str | None]] = []
        self.limits: list[int] = []
        self.get_records_calls = 0
        self.expire_calls: set[int] = set()
        self.before_get_records: Callable[[int], None] | None = None
        self._sequence = 100_000_000_000_000_000_000

    # -------------------------------------------------------------- setup
    def add_shard(self, shard_id: str, parent: str | None = None, *, closed: bool = False) -> None:
        self.shards[shard_id] = FakeShard(shard_id, parent, closed=closed)

    def put(
        self,
        shard_id: str,
        account_id: str = "a1",
        *,
        event: str = "MODIFY",
        new: dict[str, Any] | None = None,
        old: dict[str, Any] | None = None,
        created: datetime | None = None,
    ) -> str:
        """Append one record (as boto3's GetRecords returns it); returns its sequence number."""
        self._sequence += 1
        sequence = str(self._sequence)
        keys = {"accountId": {"S": account_id}}
        body: dict[str, Any] = {
            "ApproximateCreationDateTime": created or datetime.fromtimestamp(START - 5, UTC),
            "Keys": keys,
            "SequenceNumber": sequence,
            "SizeBytes": 64,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        }
        if event != "REMOVE":
            body["NewImage"] = new if new is not None else {**keys, "rev": {"N": sequence}}
        if event != "INSERT":
            body["OldImage"] = old if old is not None else {**keys, "rev": {"N": "0"}}
        self.shards[shard_id].records.append(
            {
                "eventID": f"ev-{sequence[-6:]}",
                "eventName": event,
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": body,
            }
        )
        return sequence

    def put_many(self, shard_id: str, count: int) -> list[str]:
        return [self.put(shard_id, f"a{i}") for i in range(count)]

    def close(self, shard_id: str) -> None:
        self.shards[shard_id].closed = True

    # ---------------------------------------------------------------- API
    def describe_stream(self, StreamArn: str, ExclusiveStartShardId: str | None = None) -> dict[str, Any]:
        assert StreamArn == STREAM_ARN
        ids = list(self.shards)
        start = ids.index(ExclusiveStartShardId) + 1 if ExclusiveStartShardId else 0
        page = ids[start : start + self.describe_page_size]
        shards = []
        for shard_id in page:
            shard = self.shards[shard_id]
            entry: dict[str, Any] = {"ShardId": shard_id, "SequenceNumberRange": {}}
            if shard.parent_id:
                entry["ParentShardId"] = shard.parent_id
            shards.append(entry)
        description: dict[str, Any] = {
            "StreamArn": StreamArn,
            "StreamStatus": "ENABLED",
            "StreamViewType": "NEW_AND_OLD_IMAGES",
            "TableName": TABLE,
            "Shards": shards,
        }
        if start + self.describe_page_size < len(ids):
            description["LastEvaluatedShardId"] = page[-1]
        return {"StreamDescription": description}

    def get_shard_iterator(
        self, StreamArn: str, ShardId: str, ShardIteratorType: str, SequenceNumber: str | None = None
    ) -> dict[str, Any]:
        assert StreamArn == STREAM_ARN
        shard = self.shards[ShardId]
        sequences = [r["dynamodb"]["SequenceNumber"] for r in shard.records]
        position = {
            "TRIM_HORIZON": lambda: 0,
            "LATEST": lambda: len(sequences),
            "AT_SEQUENCE_NUMBER": lambda: sequences.index(SequenceNumber),
            "AFTER_SEQUENCE_NUMBER": lambda: sequences.index(SequenceNumber) + 1,
        }[ShardIteratorType]()
        self.iterator_requests.append((ShardId, ShardIteratorType, SequenceNumber))
        self.log.append(("iterator", ShardId, ShardIteratorType, SequenceNumber))
        return {"ShardIterator": self._token(ShardId, position)}

    def get_records(self, ShardIterator: str, Limit: int = 1000) -> dict[str, Any]:
        self.get_records_calls += 1
        if self.get_records_calls > self.MAX_CALLS:
            raise AssertionError("runaway: the runner keeps calling GetRecords")
        self.limits.append(Limit)
        if self.before_get_records:
            self.before_get_records(self.get_records_calls)
        if self.get_records_calls in self.expire_calls:
            raise client_error("ExpiredIteratorException", "GetRecords")
        shard_id, position = self.iterators[ShardIterator]
        shard = self.shards[shard_id]
        page = shard.records[position : position + min(Limit, self.page_limit)]
        end = position + len(page)
        response: dict[str, Any] = {"Records": copy.deepcopy(page)}
        if not (shard.closed and end >= len(shard.records)):
            response["NextShardIterator"] = self._token(shard_id, end)
        return response

    def _token(self, shard_id: str, position: int) -> str:
        token = f"iter-{len(self.iterators)}"
        self.iterators[token] = (shard_id, position)
        return token


class FakeDynamoDB:
    """DescribeTable for the source table; Query/PutItem on the control table."""

    def __init__(self, log: list[tuple[Any, ...]], *, query_page_size: int = 100) -> None:
        self.log = log
        self.query_page_size = query_page_size
        self.table: dict[str, Any] = {
            "TableName": TABLE,
            "LatestStreamArn": STREAM_ARN,
            "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        }
        self.items: dict[tuple[str, str], dict[str, Any]] = {}

    def describe_table(self, TableName: str) -> dict[str, Any]:
        if TableName != TABLE:
            raise client_error("ResourceNotFoundException", "DescribeTable")
        return {"Table": copy.deepcopy(self.table)}

    def query(self, TableName: str, **kwargs: Any) -> dict[str, Any]:
        assert TableName == CONTROL
        assert kwargs["KeyConditionExpression"] == "PK = :pk"
        pk = kwargs["ExpressionAttributeValues"][":pk"]["S"]
        keys = sorted(k for k in self.items if k[0] == pk)
        if "ExclusiveStartKey" in kwargs:
            start = kwargs["ExclusiveStartKey"]
            keys = [k for k in keys if k > (start["PK"]["S"], start["SK"]["S"])]
        page = keys[: self.query_page_size]
        response: dict[str, Any] = {"Items": [copy.deepcopy(self.items[k]) for k in page]}
        if len(keys) > self.query_page_size:
            response["LastEvaluatedKey"] = {"PK": {"S": page[-1][0]}, "SK": {"S": page[-1][1]}}
        return response

    def put_item(self, TableName: str, Item: dict[str, Any], **conditional: Any) -> dict[str, Any]:
        assert TableName == CONTROL
        if Item["PK"]["S"].startswith("DRAINPOS#"):
            # The drain's baseline, recorded by a `--from latest` start.
            self.items[(Item["PK"]["S"], Item["SK"]["S"])] = copy.deepcopy(Item)
            self.log.append(("baseline", Item["SK"]["S"], Item["sequence_number"]["S"]))
            return {}
        if Item["PK"]["S"] == "MIRROR":
            # The runner's record of when the mirror started (put only if absent).
            self.items.setdefault(("MIRROR", Item["SK"]["S"]), copy.deepcopy(Item))
            return {}
        self.items[(Item["PK"]["S"], Item["SK"]["S"])] = copy.deepcopy(Item)
        self.log.append(
            ("checkpoint", Item["SK"]["S"], Item.get("sequence_number", {}).get("S"), Item["finished"]["BOOL"])
        )
        return {}

    def checkpoint(self, shard_id: str) -> tuple[str | None, bool] | None:
        """(sequence number, finished) saved for a shard, or None."""
        item = self.items.get((f"CHECKPOINT#{STREAM_ARN}", shard_id))
        if item is None:
            return None
        return item.get("sequence_number", {}).get("S"), item["finished"]["BOOL"]


Script = Callable[[int, list[dict[str, Any]]], list[str] | BaseException | None]


class Handler:
    """Records every event; `script(call, records)` returns failed sequence numbers or an exception to raise."""

    def __init__(self, log: list[tuple[Any, ...]], script: Script | None = None) -> None:
        self.log = log
        self.script = script
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.events.append(copy.deepcopy(event))
        self.log.append(("deliver", self.sequences(event)))
        outcome = self.script(len(self.events), event["Records"]) if self.script else None
        if isinstance(outcome, BaseException):
            raise outcome
        return {"batchItemFailures": [{"itemIdentifier": s} for s in outcome or []]}

    @staticmethod
    def sequences(event: dict[str, Any]) -> list[str]:
        return [r["dynamodb"]["SequenceNumber"] for r in event["Records"]]

    @property
    def batches(self) -> list[list[str]]:
        return [self.sequences(e) for e in self.events]

    @property
    def delivered(self) -> list[str]:
        return [s for batch in self.batches for s in batch]


class World:
    """One fake stream, one fake control table, one clock, shared by every runner of a test."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.clock = FakeClock()
        self.streams = FakeStreams(self.log)
        self.dynamodb = FakeDynamoDB(self.log)

    def handler(self, script: Script | None = None) -> Handler:
        return Handler(self.log, script)

    def runner(self, handler: Handler, *, batch_size: int = 100, window_s: float = 0.0, **kwargs: Any) -> StreamRunner:
        settings = load_settings(mirror_batch_size=batch_size, mirror_batching_window_s=window_s, control_table=CONTROL)
        return StreamRunner(
            settings,
            handler,
            source_tables=[TABLE],
            clock=self.clock,
            streams_client=self.streams,
            dynamodb_client=self.dynamodb,
            **kwargs,
        )


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    w = World()
    # The runner's idle polls and backoffs advance the fake clock instead of waiting.
    monkeypatch.setattr(stream_runner, "time", SimpleNamespace(sleep=w.clock.sleep, time=w.clock))
    return w


def fail_once(call: int, failed: Callable[[list[dict[str, Any]]], list[str] | BaseException]) -> Script:
    """A script that fails delivery number `call` as `failed(records)` says, and accepts every other."""
    return lambda n, records: failed(records) if n == call else None


def seq(record: dict[str, Any]) -> str:
    return record["dynamodb"]["SequenceNumber"]


# ------------------------------------------------------------ 1. event shape
def test_events_have_exactly_lambdas_shape(world: World) -> None:
    # GIVEN an INSERT whose image holds binary values at the top level, in a
    # set, nested in a map and in a list, and a MODIFY with an old image
    world.streams.add_shard("shardId-1")
    created = datetime(2024, 6, 1, 11, 59, 58, 900_000, tzinfo=UTC)
    image = {
        "accountId": {"S": "a1"},
        "avatar": {"B": b"\x89PNG\x00\xff"},
        "keys": {"BS": [b"k1", b"\x00k2"]},
        "settings": {"M": {"icon": {"B": b"ico"}, "theme": {"S": "dark"}}},
        "history": {"L": [{"B": b"h1"}, {"N": "7"}]},
        "n": {"N": "1.5"},
    }
    insert = world.streams.put("shardId-1", event="INSERT", new=image, created=created)
    modify = world.streams.put("shardId-1", event="MODIFY", old=image, new={"accountId": {"S": "a1"}})
    handler = world.handler()

    # WHEN the runner delivers them
    world.runner(handler).run()

    # THEN each record has exactly the keys Lambda's records have
    [event] = handler.events
    assert list(event) == ["Records"]
    first, second = event["Records"]
    assert set(first) == {
        "eventID",
        "eventName",
        "eventVersion",
        "eventSource",
        "awsRegion",
        "eventSourceARN",
        "dynamodb",
    }
    assert first["eventSource"] == "aws:dynamodb"
    assert first["eventSourceARN"] == STREAM_ARN
    assert first["awsRegion"] == "us-east-1"
    assert first["eventVersion"] == "1.1"
    assert (first["eventName"], second["eventName"]) == ("INSERT", "MODIFY")
    assert first["eventID"] != second["eventID"]
    assert set(first["dynamodb"]) == {
        "ApproximateCreationDateTime",
        "Keys",
        "NewImage",
        "SequenceNumber",
        "SizeBytes",
        "StreamViewType",
    }
    assert "OldImage" in second["dynamodb"]
    assert (seq(first), seq(second)) == (insert, modify)
    assert first["dynamodb"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    # AND the creation time is a number of whole seconds, not a datetime
    stamp = first["dynamodb"]["ApproximateCreationDateTime"]
    assert type(stamp) is int and stamp == int(created.timestamp())
    # AND binary values are base64 text, wherever they sit
    b64 = lambda raw: base64.b64encode(raw).decode()
    new = first["dynamodb"]["NewImage"]
    assert new["avatar"] == {"B": b64(b"\x89PNG\x00\xff")}
    assert new["keys"] == {"BS": [b64(b"k1"), b64(b"\x00k2")]}
    assert new["settings"] == {"M": {"icon": {"B": b64(b"ico")}, "theme": {"S": "dark"}}}
    assert new["history"] == {"L": [{"B": b64(b"h1")}, {"N": "7"}]}
    assert second["dynamodb"]["OldImage"]["avatar"] == {"B": b64(b"\x89PNG\x00\xff")}
    # AND the event is plain JSON, as Lambda's is, and powertools reads it
    assert json.loads(json.dumps(event)) == event
    record = DynamoDBRecord(first)
    assert record.dynamodb is not None
    assert record.dynamodb.sequence_number == insert
    assert record.dynamodb.approximate_creation_date_time == int(created.timestamp())


def test_lambda_record_keeps_ttl_identity_and_leaves_the_raw_record_alone() -> None:
    # GIVEN a TTL delete as GetRecords returns it (bytes, a datetime, userIdentity)
    identity = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    raw = {
        "eventID": "e1",
        "eventName": "REMOVE",
        "dynamodb": {
            "ApproximateCreationDateTime": datetime(2024, 6, 1, tzinfo=UTC),
            "Keys": {"id": {"B": b"\x01"}},
            "OldImage": {"id": {"B": b"\x01"}},
            "SequenceNumber": "1",
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
        "userIdentity": identity,
    }
    before = copy.deepcopy(raw)

    # WHEN it is shaped for the handler
    record = lambda_record(raw, STREAM_ARN, "eu-west-1")

    # THEN userIdentity is kept, missing fields get Lambda's values, and the raw record is untouched
    assert record["userIdentity"] == identity
    assert (record["eventVersion"], record["awsRegion"]) == ("1.1", "eu-west-1")
    assert record["dynamodb"]["Keys"] == {"id": {"B": "AQ=="}}
    assert raw == before


# --------------------------------------------------- 2. partial batch response
@pytest.mark.parametrize("k", [3, 1, 0])
def test_partial_batch_failure_redelivers_from_the_lowest_failed_record(world: World, k: int) -> None:
    # GIVEN six records in one batch, and a handler that reports record k and
    # a later one as failed (out of order) on the first delivery only
    world.streams.add_shard("shardId-1")
    seqs = world.streams.put_many("shardId-1", 6)
    handler = world.handler(fail_once(1, lambda records: [seq(records[k + 1]), seq(records[k])]))
    runner = world.runner(handler)

    # WHEN the runner runs
    report = runner.run()

    # THEN the next delivery starts at record k and carries every later record, in order
    assert handler.batches == [seqs, seqs[k:]]
    # AND it was positioned AT record k
    assert world.streams.iterator_requests[1] == ("shardId-1", "AT_SEQUENCE_NUMBER", seqs[k])
    # AND before it, the checkpoint was saved at record k-1 (and not at all when k is 0)
    first, redelivery = (i for i, entry in enumerate(world.log) if entry[0] == "deliver")
    saved_between = [e[2] for e in world.log[first:redelivery] if e[0] == "checkpoint"]
    assert saved_between == ([seqs[k - 1]] if k else [])
    assert world.dynamodb.checkpoint("shardId-1") == (seqs[-1], False)
    assert (report.failed_batches, report.redelivered, report.records) == (1, 6 - k, 6)


@pytest.mark.parametrize(
    "error",
    [
        BatchProcessingError("All records failed processing."),
        TransientError("throttled"),
        client_error("ProvisionedThroughputExceededException", "TransactWriteItems"),
    ],
    ids=["powertools-BatchProcessingError", "TransientError", "throttling-ClientError"],
)
def test_a_raising_handler_fails_the_whole_batch(world: World, error: Exception) -> None:
    # GIVEN six records read three at a time, and a handler that raises on the second batch once
    world.streams.add_shard("shardId-1")
    seqs = world.streams.put_many("shardId-1", 6)
    handler = world.handler(fail_once(2, lambda records: error))

    # WHEN the runner runs
    report = world.runner(handler, batch_size=3).run()

    # THEN the whole second batch is redelivered, from its first record, and nothing before it
    assert handler.batches == [seqs[:3], seqs[3:], seqs[3:]]
    assert world.streams.iterator_requests[1] == ("shardId-1", "AT_SEQUENCE_NUMBER", seqs[3])
    assert Counter(handler.delivered) == Counter(seqs + seqs[3:])
    assert (report.failed_batches, report.redelivered) == (1, 3)


def test_a_handler_bug_stops_the_runner_without_moving_the_checkpoint(world: World) -> None:
    # GIVEN a handler that raises something that is neither transient nor a batch failure
    world.streams.add_shard("shardId-1")
    seqs = world.streams.put_many("shardId-1", 4)
    handler = world.handler(fail_once(2, lambda records: ValueError("bug")))

    # WHEN the runner runs, two records a batch
    # THEN the error surfaces instead of being retried forever
    with pytest.raises(ValueError, match="bug"):
        world.runner(handler, batch_size=2).run()
    # AND the checkpoint stays after the last applied batch
    assert world.dynamodb.checkpoint("shardId-1") == (seqs[1], False)


# --------------------------------------------------------------- 3. checkpoints
def test_a_second_runner_resumes_after_the_checkpoint_and_skips_finished_shards(world: World) -> None:
    # GIVEN a closed shard and an open one, both read to the end by a first runner
    # (checkpoints are read back a page of one item at a time)
    world.dynamodb.query_page_size = 1
    world.streams.add_shard("shardId-closed", closed=True)
    world.streams.add_shard("shardId-open")
    closed = world.streams.put_many("shardId-closed", 3)
    opened = world.streams.put_many("shardId-open", 3)
    first = world.handler()
    world.runner(first).run()
    assert world.dynamodb.checkpoint("shardId-closed") == (closed[-1], True)
    assert world.dynamodb.checkpoint("shardId-open") == (opened[-1], False)
    # AND two more records written afterwards
    later = [world.streams.put("shardId-open", "b1"), world.streams.put("shardId-open", "b2")]
    world.streams.iterator_requests.clear()

    # WHEN a second runner runs on the same control table
    second = world.handler()
    world.runner(second).run()

    # THEN it delivers only the new records, resuming AFTER the saved sequence number
    assert second.delivered == later
    assert world.streams.iterator_requests == [("shardId-open", "AFTER_SEQUENCE_NUMBER", opened[-1])]
    # AND across both runs every record was delivered exactly once
    assert Counter(first.delivered + second.delivered) == Counter(closed + opened + later)


# ------------------------------------------------------------------- 4. lineage
def test_children_start_only_after_their_parent_is_finished(world: World) -> None:
    # GIVEN a closed parent (whose own parent is gone from the stream) and two
    # open children, described children first, one shard per page
    world.streams.describe_page_size = 1
    world.streams.add_shard("shardId-child-1", parent="shardId-parent")
    world.streams.add_shard("shardId-child-2", parent="shardId-parent")
    world.streams.add_shard("shardId-parent", parent="shardId-trimmed", closed=True)
    parent = world.streams.put_many("shardId-parent", 5)
    child_1 = world.streams.put_many("shardId-child-1", 2)
    child_2 = world.streams.put_many("shardId-child-2", 2)
    # AND a handler that fails the parent's second batch once
    handler = world.handler(fail_once(2, lambda records: [seq(records[0])]))

    # WHEN the runner reads two records a batch
    world.runner(handler, batch_size=2).run()

    # THEN the parent is delivered first, its failed batch redelivered before anything else
    assert handler.batches[:4] == [parent[0:2], parent[2:4], parent[2:4], parent[4:]]
    # AND no child record is delivered before every parent record
    delivered = handler.delivered
    last_parent = max(i for i, s in enumerate(delivered) if s in parent)
    first_child = min(i for i, s in enumerate(delivered) if s in child_1 + child_2)
    assert last_parent < first_child
    # AND the children's iterators are requested only once the parent's finish is saved
    finished_at = world.log.index(("checkpoint", "shardId-parent", parent[-1], True))
    child_iterators = [i for i, e in enumerate(world.log) if e[0] == "iterator" and e[1] != "shardId-parent"]
    assert len(child_iterators) == 2 and min(child_iterators) > finished_at
    # AND every record arrives, each shard in its own order
    assert [s for s in delivered if s in child_1] == child_1
    assert [s for s in delivered if s in child_2] == child_2
    assert set(delivered) == set(parent + child_1 + child_2)


# ---------------------------------------------------------- 5. expired iterator
def test_an_expired_iterator_is_reacquired_from_the_checkpoint(world: World) -> None:
    # GIVEN six records read two at a time, and a GetRecords call that finds its iterator expired
    world.streams.add_shard("shardId-1")
    seqs = world.streams.put_many("shardId-1", 6)
    world.streams.expire_calls = {2}
    handler = world.handler()

    # WHEN the runner runs
    report = world.runner(handler, batch_size=2).run()

    # THEN every record is delivered exactly once, in order
    assert handler.delivered == seqs
    assert Counter(handler.delivered) == Counter({s: 1 for s in seqs})
    # AND the iterator was re-acquired right after the checkpoint
    assert world.streams.iterator_requests == [
        ("shardId-1", "TRIM_HORIZON", None),
        ("shardId-1", "AFTER_SEQUENCE_NUMBER", seqs[1]),
    ]
    assert report.expired_iterators == 1


# ------------------------------------------------------------------- 6. batching
@pytest.mark.parametrize(("batch_size", "sizes"), [(1, [1] * 7), (3, [3, 3, 1]), (7, [7]), (50, [7])])
def test_mirror_batch_size_bounds_every_batch(world: World, batch_size: int, sizes: list[int]) -> None:
    # GIVEN seven records
    world.streams.add_shard("shardId-1")
    seqs = world.streams.put_many("shardId-1", 7)
    handler = world.handler()

    # WHEN the runner runs with mirror_batch_size set
    world.runner(handler, batch_size=batch_size).run()

    # THEN no batch is larger, and no GetRecords call asks for more
    assert [len(b) for b in handler.batches] == sizes
    assert handler.delivered == seqs
    assert max(world.streams.limits) <= batch_size


def test_the_batching_window_waits_without_spinning_to_fill_a_batch(world: World) -> None:
    # GIVEN a 1 s batching window, batches of 5, pages of at most 2 records,
    # three records now and two more arriving while the runner waits
    world.streams.page_limit = 2
    world.streams.add_shard("shardId-1")
    now = world.streams.put_many("shardId-1", 3)
    later: list[str] = []

    def arrive(call: int) -> None:
        if call == 5:
            later.extend(world.streams.put_many("shardId-1", 2))

    world.streams.before_get_records = arrive
    handler = world.handler()

    # WHEN the runner runs
    world.runner(handler, batch_size=5, window_s=1.0).run()

    # THEN the first batch holds all five records
    assert handler.batches[0] == now + later
    # AND while waiting it slept between empty polls instead of calling GetRecords in a hot loop
    assert world.clock.slept and max(world.clock.slept) <= stream_runner.IDLE_POLL_S
    assert world.streams.get_records_calls < 20


def test_the_batching_window_delivers_a_partial_batch_when_it_ends(world: World) -> None:
    # GIVEN a 1 s batching window, batches of 5 and only three records
    world.streams.add_shard("shardId-1")
    seqs = world.streams.put_many("shardId-1", 3)
    handler = world.handler()

    # WHEN the runner runs
    world.runner(handler, batch_size=5, window_s=1.0).run()

    # THEN the three records are delivered together once the window has passed
    assert handler.batches == [seqs]
    assert world.clock.now - START >= 1.0
    # AND with a bounded number of GetRecords calls (about four a second)
    assert world.streams.get_records_calls <= 12


def test_a_busy_shard_is_polled_at_lambdas_base_rate_of_four_a_second(world: World) -> None:
    # GIVEN a shard written at 40 records a second and a handler that takes 50 ms a batch
    world.streams.add_shard("shardId-1")
    written = {"at": world.clock.now, "carry": 0.0}
    polled_at: list[float] = []

    def write_since_last_poll(call: int) -> None:
        polled_at.append(world.clock.now)
        due = (world.clock.now - written["at"]) * 40 + written["carry"]
        world.streams.put_many("shardId-1", int(due))
        written["at"], written["carry"] = world.clock.now, due - int(due)

    world.streams.before_get_records = write_since_last_poll
    handler = world.handler(lambda call, records: world.clock.sleep(0.05))

    # WHEN the runner follows the stream for 5 s
    world.runner(handler, follow=True, max_seconds=5.0).run()

    # THEN polls are a quarter second apart, not back to back after each 50 ms batch
    gaps = [b - a for a, b in itertools.pairwise(polled_at)]
    assert gaps and min(gaps) >= stream_runner.POLL_INTERVAL_S - 1e-9
    # AND a batch holds about a quarter second of writes (10), not the 2 written during one handler call
    sizes = [len(b) for b in handler.batches[1:]]
    assert sizes and min(sizes) >= 9


# ------------------------------------------------------------ 7. --from latest
def test_from_latest_without_a_checkpoint_starts_after_the_end_it_records_as_the_drain_baseline(
    world: World,
) -> None:
    # GIVEN old records, and new ones written after the runner positioned itself
    # (the baseline read takes GetRecords calls 1 to 3: one page, two empty ones)
    world.streams.add_shard("shardId-1")
    old = world.streams.put_many("shardId-1", 3)
    new: list[str] = []
    world.streams.before_get_records = lambda call: (
        new.extend(world.streams.put_many("shardId-1", 2)) if call == 4 else None
    )
    handler = world.handler()

    # WHEN the runner starts from latest
    world.runner(handler, start_from="latest").run()

    # THEN it read the shard from its start to find the end, started exactly after it
    assert world.streams.iterator_requests == [("shardId-1", "TRIM_HORIZON", None),
                                               ("shardId-1", "AFTER_SEQUENCE_NUMBER", old[-1])]
    # AND recorded that end as the drain's baseline (the records up to it are not its own)
    assert ("baseline", "shardId-1", old[-1]) in world.log
    # AND delivered only the new records
    assert handler.delivered == new


def test_from_latest_with_a_checkpoint_resumes_after_it(world: World) -> None:
    # GIVEN a shard read up to a checkpoint, and one record written since
    world.streams.add_shard("shardId-1")
    seqs = world.streams.put_many("shardId-1", 3)
    world.runner(world.handler()).run()
    newer = world.streams.put("shardId-1")
    world.streams.iterator_requests.clear()
    handler = world.handler()

    # WHEN a runner starts from latest
    world.runner(handler, start_from="latest").run()

    # THEN it resumes AFTER the checkpoint and misses nothing
    assert world.streams.iterator_requests == [("shardId-1", "AFTER_SEQUENCE_NUMBER", seqs[-1])]
    assert handler.delivered == [newer]


def test_from_latest_reads_a_shard_born_during_the_run_from_its_start(world: World) -> None:
    # GIVEN a runner following one shard from latest; the shard then receives
    # a record, closes (a split) and its two children receive records before
    # the runner first sees them
    world.streams.add_shard("shardId-parent")
    world.streams.put("shardId-parent")  # before the start: skipped (the baseline read ends after it)
    written: list[str] = []

    def split(call: int) -> None:
        if call == 4:  # the runner's first poll: the baseline read took calls 1 to 3
            written.append(world.streams.put("shardId-parent", "p"))
            world.streams.close("shardId-parent")
            for child in ("shardId-child-1", "shardId-child-2"):
                world.streams.add_shard(child, parent="shardId-parent")
                written.append(world.streams.put(child, child))

    world.streams.before_get_records = split
    handler = world.handler()

    # WHEN the runner runs
    world.runner(handler, start_from="latest").run()

    # THEN the children are read from TRIM_HORIZON and none of their records is lost
    assert sorted(handler.delivered) == sorted(written)
    assert ("shardId-child-1", "TRIM_HORIZON", None) in world.streams.iterator_requests


def test_from_latest_reads_the_child_of_a_parent_a_previous_run_finished(world: World) -> None:
    # GIVEN a closed parent finished by a first run, which stopped before its child
    world.streams.add_shard("shardId-parent", closed=True)
    world.streams.add_shard("shardId-child", parent="shardId-parent")
    world.streams.put_many("shardId-parent", 2)
    child = world.streams.put_many("shardId-child", 2)
    first = world.runner(world.handler(lambda n, records: first.request_stop()))
    first.run()
    assert world.dynamodb.checkpoint("shardId-child") is None
    handler = world.handler()

    # WHEN a second run starts from latest
    world.runner(handler, start_from="latest").run()

    # THEN the child, which has no checkpoint yet, is read from its start
    assert handler.delivered == child


# ------------------------------------------------------------------- 8. stopping
def test_request_stop_from_the_handler_stops_after_that_batch(world: World) -> None:
    # GIVEN six records read two at a time by a following runner whose
    # handler asks it to stop during the second batch
    world.streams.add_shard("shardId-1")
    seqs = world.streams.put_many("shardId-1", 6)
    runner: StreamRunner | None = None

    def stop_on_second(call: int, records: list[dict[str, Any]]) -> None:
        if call == 2:
            assert runner is not None
            runner.request_stop()

    handler = world.handler(stop_on_second)
    runner = world.runner(handler, batch_size=2, follow=True)

    # WHEN it runs
    report = runner.run()

    # THEN it returned after the second batch, whose checkpoint was saved
    assert handler.batches == [seqs[0:2], seqs[2:4]]
    assert world.dynamodb.checkpoint("shardId-1") == (seqs[3], False)
    assert report.records == 4
    # AND a new runner picks up exactly the records that were not delivered
    rest = world.handler()
    world.runner(rest).run()
    assert rest.delivered == seqs[4:]


def test_without_follow_the_runner_stops_once_every_shard_is_drained(world: World) -> None:
    # GIVEN an open shard with three records
    world.streams.add_shard("shardId-1")
    seqs = world.streams.put_many("shardId-1", 3)
    handler = world.handler()

    # WHEN a runner without --follow runs
    report = world.runner(handler).run()

    # THEN it returns by itself once a poll finds nothing more, with every record delivered
    assert handler.delivered == seqs
    assert report.records == 3
    assert world.streams.get_records_calls == 2  # one batch, one empty poll


def test_with_follow_the_runner_keeps_polling_after_draining(world: World) -> None:
    # GIVEN an open shard that receives a record long after the runner has drained it
    world.streams.add_shard("shardId-1")
    first = world.streams.put("shardId-1")
    late: list[str] = []
    world.streams.before_get_records = lambda call: late.append(world.streams.put("shardId-1")) if call == 10 else None
    handler = world.handler()

    # WHEN a following runner runs for 5 (fake) seconds
    world.runner(handler, follow=True, max_seconds=5).run()

    # THEN it delivered the late record too
    assert handler.delivered == [first, *late]
    assert world.clock.now - START >= 5


# ------------------------------------------------------------- 9. no stream
@pytest.mark.parametrize(
    "table",
    [
        {"TableName": TABLE},
        {"TableName": TABLE, "LatestStreamArn": STREAM_ARN, "StreamSpecification": {"StreamEnabled": False}},
    ],
    ids=["never-enabled", "disabled"],
)
def test_a_table_without_a_stream_is_a_store_error_naming_it(world: World, table: dict[str, Any]) -> None:
    # GIVEN a source table whose stream is not enabled
    world.dynamodb.table = table
    handler = world.handler()

    # WHEN the runner starts
    # THEN it refuses with a StoreError naming the table, before reading anything
    with pytest.raises(StoreError, match=TABLE):
        world.runner(handler).run()
    assert handler.events == [] and world.streams.iterator_requests == []
