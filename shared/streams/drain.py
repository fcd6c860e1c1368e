"""Exact drain and lag of a stream consumer, per shard, whoever runs it (cutover step 3).

A sentinel written to one key proves nothing about the other shards, so the
drain is measured per shard: a consumer (``forward``: the legacy tables'
streams; ``reverse``: sc-main's stream) is drained when every record now in
every shard of its streams has been consumed.

The consumer may be Lambda's event source mapping, which keeps its
checkpoints to itself, or the local runner (`dynashift mirror run`). Both
run the same handler, and the handler writes *receipts*: the event ids of
the records it consumed (`shared.store.receipts`). The drain never needs the
consumer's checkpoint:

* **A reader of its own.** For each shard DescribeStream lists, the drain
  reads the records itself (GetShardIterator + GetRecords; DynamoDB allows
  two readers per shard, the consumer being the other, so no third reader
  may run against these streams during a cutover).
* **Confirmed position.** Per shard it keeps ``DRAINPOS#<stream arn>`` /
  ``<shard id>`` in the control table: the sequence number through which
  every record has a receipt (and ``finished`` once a closed shard is
  confirmed to its end). It reads from there (AFTER_SEQUENCE_NUMBER, or
  TRIM_HORIZON without one), so each record is read about once, however often
  status, the gate and the drain ask.
* **Per record, not per batch.** Each record read is looked up in the
  receipts by its ``eventID``. This holds whatever the event source mapping
  does: with ParallelizationFactor above 1 batches of one shard run
  concurrently (order is kept per item only), a partial batch failure makes
  it redeliver from the lowest failed record, BisectBatchOnFunctionError
  splits a failing batch and retries the halves, and a record that exhausts
  MaximumRetryAttempts or MaximumRecordAgeInSeconds is discarded to the
  on-failure destination. In every case a record counts as consumed only
  once the handler has acknowledged it, so a discarded record keeps the
  drain from ever reporting drained (the switch times out and goes back,
  never flips with a record missing).
* **End of an open shard.** GetRecords may answer an empty page before later
  records, so an open shard's end is `EMPTY_PAGES_AT_END` empty pages in a
  row. During a freeze nobody writes the legacy tables, so their ends are
  final.
* **Baseline.** A local runner started with ``--from latest`` does not own
  the records before its start: it records a baseline position
  (`record_baseline`), found by reading the shard to its end, and starts
  exactly after it.
* **Lag.** The age of the oldest record without a receipt (now minus its
  ``ApproximateCreationDateTime``), 0 when every record has one.

Lineage needs no special case: every shard, parent or child, is measured on
its own; a shard trimmed from the stream is no longer listed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.core import aws
from shared.core.aws import error_code, translate
from shared.core.definition import get_definition
from shared.core.errors import DrainTimeout, StoreError, UsageError
from shared.core.settings import Settings
from shared.store import keys
from shared.store.receipts import receipted_ids

DIRECTIONS = ("forward", "reverse")
EMPTY_PAGES_AT_END = 2
MAX_PAGES = 100_000


@dataclass(frozen=True)
class StreamRecord:
    sequence_number: str
    event_id: str
    created_at: float | None


@dataclass
class ShardLag:
    """One shard as the drain sees it."""

    table: str
    stream_arn: str
    shard_id: str
    confirmed: str | None  # every record through this one has a receipt
    last_read: str | None  # the last record now in the shard (as far as read)
    pending: int  # records read without a receipt
    oldest_pending_at: float | None  # creation time of the first of them
    finished: bool  # closed and confirmed to its end
    counted_all: bool = True  # False: read only to the first record without a receipt (`pending` is a floor)

    @property
    def drained(self) -> bool:
        return self.pending == 0

    def lag_s(self, now: float) -> float:
        return 0.0 if self.oldest_pending_at is None else max(0.0, now - self.oldest_pending_at)

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"table": self.table, "stream_arn": self.stream_arn, "shard_id": self.shard_id,
                "confirmed": self.confirmed, "pending": self.pending, "pending_counted_all": self.counted_all,
                "lag_s": round(self.lag_s(now), 1), "finished": self.finished}


def consumer_tables(settings: Settings, direction: str) -> list[str]:
    """The physical tables whose streams the consumer reads."""
    if direction == "forward":
        return [settings.physical_name(s.name) for s in get_definition(settings.migration).sources]
    if direction == "reverse":
        return [settings.target_table]
    raise UsageError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")


def stream_arn_of(dynamodb: Any, table: str) -> str:
    try:
        description = dynamodb.describe_table(TableName=table)["Table"]
    except Exception as exc:
        raise translate(exc, f"describe {table}") from exc
    arn = description.get("LatestStreamArn")
    if not arn or not (description.get("StreamSpecification") or {}).get("StreamEnabled"):
        raise StoreError(f"table {table} has no stream enabled (run: dynashift enable-streams)")
    return arn


def _shards(streams: Any, arn: str) -> list[dict[str, Any]]:
    shards: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"StreamArn": arn}
    while True:
        try:
            description = streams.describe_stream(**kwargs)["StreamDescription"]
        except Exception as exc:
            raise translate(exc, f"describe stream {arn}") from exc
        shards.extend(description["Shards"])
        last = description.get("LastEvaluatedShardId")
        if not last:
            return shards
        kwargs["ExclusiveStartShardId"] = last


# ------------------------------------------------------------------ positions
def _position_key(arn: str, shard_id: str) -> dict[str, Any]:
    return keys.position(arn, shard_id)


def _positions(dynamodb: Any, settings: Settings, arn: str) -> dict[str, dict[str, Any]]:
    items = aws.query_items(dynamodb, f"read drain positions from {settings.control_table}",
                            TableName=settings.control_table, KeyConditionExpression="PK = :pk",
                            ExpressionAttributeValues={":pk": {"S": keys.position_pk(arn)}}, ConsistentRead=True)
    return {item["SK"]["S"]: {"sequence_number": item.get("sequence_number", {}).get("S"),
                              "finished": item.get("finished", {}).get("BOOL", False)} for item in items}


def _save_position(dynamodb: Any, settings: Settings, arn: str, shard_id: str, sequence: str,
                   finished: bool) -> None:
    """Move a shard's confirmed position forward (never back: concurrent measurers may race).

    Sequence numbers have up to 40 digits, more than a DynamoDB number holds,
    so the order is kept as the zero-padded string (`sequence_order`).
    """
    order = sequence.zfill(40)
    try:
        dynamodb.put_item(
            TableName=settings.control_table,
            Item={**_position_key(arn, shard_id), "sequence_number": {"S": sequence},
                  "sequence_order": {"S": order}, "finished": {"BOOL": finished},
                  "updated_at": {"N": repr(round(time.time(), 3))}},
            ConditionExpression="attribute_not_exists(PK) OR sequence_order < :seq OR "
                                "(sequence_order = :seq AND finished = :no)",
            ExpressionAttributeValues={":seq": {"S": order}, ":no": {"BOOL": False}},
        )
    except Exception as exc:
        if error_code(exc) == "ConditionalCheckFailedException":
            return
        raise translate(exc, "save a drain position") from exc


def record_baseline(settings: Settings, stream_arn: str, shard_id: str, sequence: str, *,
                    dynamodb: Any = None) -> None:
    """A consumer that starts after `sequence` does not own the records up to it."""
    _save_position(dynamodb or aws.dynamodb(settings), settings, stream_arn, shard_id, sequence, False)


# --------------------------------------------------------------------- reading
def read_shard(streams: Any, arn: str, shard_id: str, after: str | None,
               on_page: Callable[[list[StreamRecord]], bool] | None = None) -> tuple[list[StreamRecord], bool]:
    """The records after `after` to the shard's current end, and whether the shard is closed.

    `on_page`, if given, sees each non-empty page and may stop the read early
    by returning False (the records so far are returned, closed = False).
    """
    def iterator(start_after: str | None) -> str:
        kwargs: dict[str, Any] = (
            {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": start_after}
            if start_after else {"ShardIteratorType": "TRIM_HORIZON"}
        )
        return streams.get_shard_iterator(StreamArn=arn, ShardId=shard_id, **kwargs)["ShardIterator"]

    try:
        next_iterator: str | None = iterator(after)
    except Exception as exc:
        if error_code(exc) not in ("TrimmedDataAccessException", "ResourceNotFoundException") or not after:
            raise translate(exc, f"get iterator for shard {shard_id}") from exc
        next_iterator = iterator(None)  # the position aged out: everything left is newer
    records: list[StreamRecord] = []
    empty = 0
    for _ in range(MAX_PAGES):
        if next_iterator is None:
            return records, True
        try:
            page = streams.get_records(ShardIterator=next_iterator, Limit=1000)
        except Exception as exc:
            raise translate(exc, f"read shard {shard_id}") from exc
        raw = page.get("Records", [])
        next_iterator = page.get("NextShardIterator")
        if raw:
            empty = 0
            batch = [_record(r) for r in raw]
            records.extend(batch)
            if on_page is not None and not on_page(batch):
                return records, False
            continue
        empty += 1
        if empty >= EMPTY_PAGES_AT_END:
            return records, False
    raise DrainTimeout(f"shard {shard_id} of {arn} did not end within {MAX_PAGES} pages")


def _record(raw: dict[str, Any]) -> StreamRecord:
    body = raw["dynamodb"]
    created = body.get("ApproximateCreationDateTime")
    if created is not None and hasattr(created, "timestamp"):
        created = created.timestamp()
    return StreamRecord(body["SequenceNumber"], raw["eventID"], float(created) if created is not None else None)


def last_sequence(streams: Any, arn: str, shard_id: str) -> str | None:
    """The sequence number of the shard's last record now (None: it has none)."""
    records, _ = read_shard(streams, arn, shard_id, None)
    return records[-1].sequence_number if records else None


# ------------------------------------------------------------------ measuring
def measure(settings: Settings, direction: str, *, dynamodb: Any = None, streams: Any = None,
            stop_at_gap: bool = False, arns: dict[str, str] | None = None) -> list[ShardLag]:
    """Every shard of the consumer's streams: confirmed position, records pending, oldest pending.

    Advances the confirmed positions it finds. With `stop_at_gap`, a shard is
    read only until its first record without a receipt (enough to say "not
    drained" and the lag, cheaper than reading a long backlog to its end).
    `arns`, if given, keeps each table's stream ARN between calls (a wait's
    polls): the ARN changes only if the stream is switched off and on again.
    The shard list is read on every call, as a shard may split at any time.
    """
    dynamodb = dynamodb or aws.dynamodb(settings)
    streams = streams or aws.streams(settings)
    arns = {} if arns is None else arns
    shards: list[ShardLag] = []
    for table in consumer_tables(settings, direction):
        if table not in arns:
            arns[table] = stream_arn_of(dynamodb, table)
        arn = arns[table]
        positions = _positions(dynamodb, settings, arn)
        for shard in _shards(streams, arn):
            shards.append(_measure_shard(settings, dynamodb, streams, table, arn, shard["ShardId"],
                                         positions.get(shard["ShardId"]), stop_at_gap))
    return shards


def _measure_shard(settings: Settings, dynamodb: Any, streams: Any, table: str, arn: str, shard_id: str,
                   position: dict[str, Any] | None, stop_at_gap: bool) -> ShardLag:
    confirmed = (position or {}).get("sequence_number")
    if position and position.get("finished"):
        return ShardLag(table, arn, shard_id, confirmed, confirmed, 0, None, True)
    ids: set[str] = set()
    loaded_since: float | None = None

    def receipted(record: StreamRecord) -> bool:
        nonlocal ids, loaded_since
        since = record.created_at if record.created_at is not None else 0.0
        if loaded_since is None or since < loaded_since:
            ids = receipted_ids(dynamodb, settings.control_table, arn, since)
            loaded_since = since
        if record.event_id in ids:
            return True
        # A receipt may have landed since the ids were loaded: look once more.
        ids = receipted_ids(dynamodb, settings.control_table, arn, loaded_since)
        return record.event_id in ids

    new_confirmed = confirmed
    pending = 0
    oldest: float | None = None
    gap = False
    stopped = False

    def on_page(batch: list[StreamRecord]) -> bool:
        nonlocal new_confirmed, pending, oldest, gap, stopped
        for record in batch:
            if not gap and receipted(record):
                new_confirmed = record.sequence_number
                continue
            if not gap:
                gap = True
                oldest = record.created_at if record.created_at is not None else time.time()
                if stop_at_gap:
                    pending, stopped = pending + 1, True
                    return False
            pending += 0 if record.event_id in ids else 1
        return True

    records, closed = read_shard(streams, arn, shard_id, confirmed, on_page)
    last = records[-1].sequence_number if records else confirmed
    finished = closed and not gap
    if new_confirmed and (new_confirmed != confirmed or finished):
        _save_position(dynamodb, settings, arn, shard_id, new_confirmed, finished)
    return ShardLag(table, arn, shard_id, new_confirmed, last, pending, oldest, finished, counted_all=not stopped)


def is_drained(settings: Settings, direction: str, *, dynamodb: Any = None, streams: Any = None,
               arns: dict[str, str] | None = None) -> bool:
    """True when the consumer has acknowledged every record now in its streams, in every shard."""
    return all(s.drained for s in measure(settings, direction, dynamodb=dynamodb, streams=streams,
                                          stop_at_gap=True, arns=arns))


def lag_s(settings: Settings, direction: str, *, dynamodb: Any = None, streams: Any = None,
          now: float | None = None) -> float:
    """The age of the oldest record the consumer has not acknowledged (0 when drained)."""
    shards = measure(settings, direction, dynamodb=dynamodb, streams=streams, stop_at_gap=True)
    now = time.time() if now is None else now
    return max((s.lag_s(now) for s in shards), default=0.0)


def wait_drained(
    settings: Settings,
    direction: str,
    timeout: float,
    *,
    poll_s: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Any] = time.sleep,
    dynamodb: Any = None,
    streams: Any = None,
) -> float:
    """Wait until `is_drained`; returns the seconds waited, raises DrainTimeout after `timeout`.

    A cutover passes the clients it made before the freeze: making two
    clients here took 0.1-0.6 s of the freeze window, more than the drain.
    """
    dynamodb = dynamodb or aws.dynamodb(settings)
    streams = streams or aws.streams(settings)
    arns: dict[str, str] = {}
    started = clock()
    while True:
        try:
            if is_drained(settings, direction, dynamodb=dynamodb, streams=streams, arns=arns):
                return clock() - started
        except Exception as exc:
            if not aws.is_transient(exc):
                raise  # throttled reads (the consumer shares the shard's read limit) are retried
        if clock() - started >= timeout:
            raise DrainTimeout(
                f"the {direction} consumer did not acknowledge every record of its streams within {timeout:g}s "
                "(is it running? the stack's mapping, or dynashift mirror run --follow"
                + (" --direction reverse)" if direction == "reverse" else ")")
            )
        sleep(poll_s)


def wait_caught_up(settings: Settings, direction: str, timeout: float, *, poll_s: float = 0.25,
                   dynamodb: Any = None, streams: Any = None) -> bool:
    """Wait until the consumer has acknowledged every record that was in its streams at the call."""
    dynamodb = dynamodb or aws.dynamodb(settings)
    streams = streams or aws.streams(settings)
    arns: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    targets = {(s.stream_arn, s.shard_id): s.last_read
               for s in measure(settings, direction, dynamodb=dynamodb, streams=streams, arns=arns)}
    while True:
        shards = measure(settings, direction, dynamodb=dynamodb, streams=streams, stop_at_gap=True, arns=arns)
        if all(_reached(s, targets.get((s.stream_arn, s.shard_id))) for s in shards):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def _reached(shard: ShardLag, target: str | None) -> bool:
    if target is None or shard.finished or shard.pending == 0:
        return True
    return shard.confirmed is not None and int(shard.confirmed) >= int(target)


__all__ = ["ShardLag", "consumer_tables", "is_drained", "lag_s", "last_sequence", "measure", "read_shard",
           "record_baseline", "stream_arn_of", "wait_caught_up", "wait_drained"]
