"""Exact drain of a stream consumer, per shard (cutover step 3).

A sentinel written to one key proves nothing about the other shards, so the
drain is measured per shard: a consumer (``forward``: the legacy tables'
streams; ``reverse``: sc-main's stream) is drained when, in every shard of
its streams, no record exists beyond the last one it fully applied.

* `consumer_progress` reads the consumer's checkpoints: the runner keeps
  ``CHECKPOINT#<stream arn>`` / ``<shard id>`` in the control table (the last
  sequence number fully applied, and whether the shard is finished). Every
  shard the stream currently lists appears, with checkpoint None until the
  consumer has applied something from it.
* `shard_ends` finds each shard's current last record by reading with an
  iterator of its own from the consumer's checkpoint (AFTER_SEQUENCE_NUMBER,
  or TRIM_HORIZON without one) until the shard has nothing more: a closed
  shard ends (no next iterator), an open one returns empty pages
  (`EMPTY_PAGES_AT_END` in a row, because real DynamoDB may return an empty
  page before later records). Reading from the checkpoint keeps this cheap:
  only the records not yet consumed are read. It is one more reader on the
  shard; DynamoDB allows two per shard, the consumer being the other, so no
  other stream reader may run against these streams during a cutover.
* Lineage: a shard split closes the parent and opens children, all listed by
  DescribeStream; each is measured on its own. A finished shard (the
  consumer read it to its end) is drained by definition, and a child nobody
  has read yet is measured from TRIM_HORIZON, so its records count. DynamoDB
  Local has one shard per table and never splits.

The protocol the cutover runs with these: set freeze, wait the application's
cache age, then `wait_drained(forward)` and after it `wait_drained(reverse)`
(freezing towards new; the other order towards old), then flip. During the
wait nobody writes the legacy tables any more (the application is frozen,
the reverse mirror skips), so the legacy shard ends are final; what the
forward mirror writes into sc-main meanwhile is then drained (skipped) by the
reverse consumer.

**In AWS (Lambda event source mappings)** the mapping keeps its checkpoints
to itself, and a stream event does not carry the shard id (only with
tumbling windows enabled, which this project does not use), so the handler
cannot record per-shard checkpoints. `consumer_progress` therefore only
knows what the local runner (`dynashift mirror run`) wrote: to drain exactly
in AWS, run the cutover with the local runners as the consumers (disable the
mappings for the switch), or enable tumbling windows on the mappings and
record ``shardId`` + last sequence number per invocation in the handler.
Neither is built yet; this is a known limitation. Against Lambda consumers
`is_drained` would wait until its timeout and then fail (never wrongly say
drained), because a shard with records and no checkpoint is not drained.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypedDict

from shared import aws
from shared.aws import error_code, translate
from shared.definition import get_definition
from shared.errors import DrainTimeout, StoreError, UsageError
from shared.settings import Settings

DIRECTIONS = ("forward", "reverse")
EMPTY_PAGES_AT_END = 2
MAX_PAGES = 100_000


class ShardProgress(TypedDict):
    checkpoint: str | None
    stream_arn: str
    finished: bool
    table: str


def consumer_tables(settings: Settings, direction: str) -> list[str]:
    """The physical tables whose streams the consumer reads."""
    if direction == "forward":
        return [settings.physical_name(s.name) for s in get_definition(settings.migration).sources]
    if direction == "reverse":
        return [settings.target_table]
    raise UsageError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")


def _stream_arn(dynamodb: Any, table: str) -> str:
    try:
        description = dynamodb.describe_table(TableName=table)["Table"]
    except Exception as exc:
        raise translate(exc, f"describe {table}") from exc
    arn = description.get("LatestStreamArn")
    if not arn or not (description.get("StreamSpecification") or {}).get("StreamEnabled"):
        raise StoreError(f"table {table} has no stream enabled")
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


def _checkpoints(dynamodb: Any, settings: Settings, arn: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {
        "TableName": settings.control_table,
        "KeyConditionExpression": "PK = :pk",
        "ExpressionAttributeValues": {":pk": {"S": f"CHECKPOINT#{arn}"}},
        "ConsistentRead": True,
    }
    while True:
        try:
            page = dynamodb.query(**kwargs)
        except Exception as exc:
            raise translate(exc, f"read checkpoints from {settings.control_table}") from exc
        for item in page["Items"]:
            found[item["SK"]["S"]] = item
        if "LastEvaluatedKey" not in page:
            return found
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def consumer_progress(
    settings: Settings, direction: str, *, dynamodb: Any = None, streams: Any = None
) -> dict[str, ShardProgress]:
    """Per shard of the consumer's streams: its checkpoint (None if nothing applied yet)."""
    dynamodb = dynamodb or aws.dynamodb(settings)
    streams = streams or aws.streams(settings)
    progress: dict[str, ShardProgress] = {}
    for table in consumer_tables(settings, direction):
        arn = _stream_arn(dynamodb, table)
        saved = _checkpoints(dynamodb, settings, arn)
        for shard in _shards(streams, arn):
            item = saved.get(shard["ShardId"], {})
            progress[shard["ShardId"]] = ShardProgress(
                checkpoint=item.get("sequence_number", {}).get("S"),
                stream_arn=arn,
                finished=bool(item.get("finished", {}).get("BOOL", False)),
                table=table,
            )
    return progress


def _read_to_end(streams: Any, arn: str, shard_id: str, after: str | None) -> str | None:
    """The last sequence number in the shard after `after` (`after` itself if none)."""
    def iterator(start_after: str | None) -> str:
        kwargs: dict[str, Any] = (
            {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": start_after}
            if start_after else {"ShardIteratorType": "TRIM_HORIZON"}
        )
        return streams.get_shard_iterator(StreamArn=arn, ShardId=shard_id, **kwargs)["ShardIterator"]

    try:
        next_iterator: str | None = iterator(after)
    except Exception as exc:
        if error_code(exc) != "TrimmedDataAccessException":
            raise translate(exc, f"get iterator for shard {shard_id}") from exc
        next_iterator = iterator(None)  # the checkpoint aged out: everything left is newer
    last, empty = after, 0
    for _ in range(MAX_PAGES):
        if next_iterator is None:
            return last  # closed shard, read to its end
        try:
            page = streams.get_records(ShardIterator=next_iterator, Limit=1000)
        except Exception as exc:
            raise translate(exc, f"read shard {shard_id}") from exc
        records = page.get("Records", [])
        next_iterator = page.get("NextShardIterator")
        if records:
            last, empty = records[-1]["dynamodb"]["SequenceNumber"], 0
            continue
        empty += 1
        if empty >= EMPTY_PAGES_AT_END:
            return last
    raise DrainTimeout(f"shard {shard_id} of {arn} did not end within {MAX_PAGES} pages")


def shard_ends(
    settings: Settings,
    direction: str,
    *,
    progress: dict[str, ShardProgress] | None = None,
    dynamodb: Any = None,
    streams: Any = None,
) -> dict[str, str | None]:
    """Per shard: the sequence number of its last record now (None: the shard has none)."""
    streams = streams or aws.streams(settings)
    progress = progress if progress is not None else consumer_progress(
        settings, direction, dynamodb=dynamodb, streams=streams
    )
    ends: dict[str, str | None] = {}
    for shard_id, state in progress.items():
        if state["finished"]:
            ends[shard_id] = state["checkpoint"]
        else:
            ends[shard_id] = _read_to_end(streams, state["stream_arn"], shard_id, state["checkpoint"])
    return ends


def _reached(state: ShardProgress, end: str | None) -> bool:
    if end is None or state["finished"]:
        return True
    return state["checkpoint"] is not None and int(state["checkpoint"]) >= int(end)


def is_drained(settings: Settings, direction: str, *, dynamodb: Any = None, streams: Any = None) -> bool:
    """True when the consumer has applied every record now in its streams, in every shard."""
    streams = streams or aws.streams(settings)
    progress = consumer_progress(settings, direction, dynamodb=dynamodb, streams=streams)
    ends = shard_ends(settings, direction, progress=progress, streams=streams)
    return all(_reached(progress[shard], end) for shard, end in ends.items())


def wait_drained(
    settings: Settings,
    direction: str,
    timeout: float,
    *,
    poll_s: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Any] = time.sleep,
) -> float:
    """Wait until `is_drained`; returns the seconds waited, raises DrainTimeout after `timeout`."""
    dynamodb = aws.dynamodb(settings)
    streams = aws.streams(settings)
    started = clock()
    while True:
        if is_drained(settings, direction, dynamodb=dynamodb, streams=streams):
            return clock() - started
        if clock() - started >= timeout:
            raise DrainTimeout(
                f"the {direction} consumer did not drain its streams within {timeout:g}s "
                "(is it running? dynashift mirror run --follow"
                + (" --direction reverse)" if direction == "reverse" else ")")
            )
        sleep(poll_s)


__all__ = ["ShardProgress", "consumer_progress", "consumer_tables", "is_drained", "shard_ends", "wait_drained"]
