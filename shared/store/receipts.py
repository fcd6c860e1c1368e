"""Consumer receipts: what a stream consumer has applied, told by the consumer itself.

Lambda's event source mapping keeps its checkpoints to itself, and its
events carry no shard id. The cutover still needs to know, per shard,
whether every record has been applied (`shared.streams.drain`). So the handler
tells it: after each batch, both mirror engines write one receipt per
stream ARN of the batch, naming the ``eventID`` of every record they
consumed (applied, quarantined, or skipped by the mode gate): everything
but the records they report as failed. ``eventID`` is, per the DynamoDB
Streams API reference, "a globally unique identifier for the event that was
recorded in this stream record", so a receipt names records exactly, across
shards, without needing the shard id.

Item: ``RECEIPT#<stream arn>`` / ``<processed-at ms, 13 digits>#<random>``,
attribute ``ids`` (a string set of event ids), ``expires_at`` (the control
table's TTL: two days, past the streams' 24 h retention, so a receipt lives
as long as its records can be read). A batch of more than `IDS_PER_ITEM`
records gets several items (an item holds at most 400 KB).

A receipt is written *after* the records were applied, so it never claims
more than is true. If writing it fails, the engine reports the whole batch
as failed: the stream redelivers it (at least once, in order; re-applying is
idempotent) and the receipt is written on the redelivery. A receipt written
twice is harmless.

Reading: `receipted_ids` loads the ids of receipts processed at or after a
time. A record's receipt is processed after the record was created, so the
drain asks from its oldest unconfirmed record's ``ApproximateCreationDateTime``
(rounded down to the second by DynamoDB) minus `CLOCK_MARGIN_S` for the skew
between Lambda's clock and DynamoDB's.

Cost: one control-table write per batch and stream, about 40 bytes per
record (0.04 write units per record at a batch of 100 records).

Usage: after its receipts, a batch adds its capacity units (`shared.core.capacity`)
to an hourly counter, ``USAGE#<direction>`` / ``<YYYY-MM-DDTHH>`` (one
UpdateItem ADD per batch, 1 write unit; TTL 8 days), which `status` sums
over the last 24 hours. The counter is a report, not a proof: a failure to
update it is logged and the batch stands.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

from shared.core.aws import is_transient, query_items, translate

logger = logging.getLogger(__name__)

RECEIPT_PREFIX = "RECEIPT#"
IDS_PER_ITEM = 4000  # ~40 bytes each: well under the 400 KB item limit
TTL_S = 2 * 86400
CLOCK_MARGIN_S = 10.0


def receipt_pk(stream_arn: str) -> str:
    return f"{RECEIPT_PREFIX}{stream_arn}"


def receipt_items(records: Iterable[dict[str, Any]], failed: set[str], now: float) -> list[dict[str, Any]]:
    """The control-table items acknowledging every record of a batch that did not fail."""
    by_stream: dict[str, list[str]] = {}
    for record in records:
        if record["dynamodb"]["SequenceNumber"] in failed or not record.get("eventID"):
            continue
        by_stream.setdefault(record["eventSourceARN"], []).append(record["eventID"])
    items = []
    millis = f"{round(now * 1000):013d}"
    for arn, ids in by_stream.items():
        for start in range(0, len(ids), IDS_PER_ITEM):
            chunk = sorted(set(ids[start:start + IDS_PER_ITEM]))
            items.append({
                "PK": {"S": receipt_pk(arn)},
                "SK": {"S": f"{millis}#{uuid.uuid4().hex[:12]}"},
                "ids": {"SS": chunk},
                "count": {"N": str(len(chunk))},
                "expires_at": {"N": str(int(now + TTL_S))},
            })
    return items


async def acknowledge(client: Any, table: str, records: list[dict[str, Any]], failed: set[str],
                      clock: Any = time.time) -> set[str]:
    """Write the batch's receipts; the failed set to report (every record, if a receipt could not be written)."""
    items = receipt_items(records, failed, clock())
    try:
        for item in items:
            await client.put_item(TableName=table, Item=item)
    except Exception as exc:
        if not is_transient(exc):
            raise translate(exc, f"write consumer receipts to {table}") from exc
        return {r["dynamodb"]["SequenceNumber"] for r in records}
    return failed


USAGE_PREFIX = "USAGE#"
USAGE_TTL_S = 8 * 86400


async def record_usage(client: Any, table: str, direction: str, usage: Any, records: int,
                       clock: Any = time.time) -> None:
    """Add a batch's capacity units to its direction's hourly counter (best effort)."""
    now = clock()
    try:
        await client.update_item(
            TableName=table,
            Key={"PK": {"S": f"{USAGE_PREFIX}{direction}"}, "SK": {"S": time.strftime("%Y-%m-%dT%H", time.gmtime(now))}},
            UpdateExpression="ADD read_units :r, write_units :w, records :n SET expires_at = :e",
            ExpressionAttributeValues={
                ":r": {"N": repr(round(usage.read_units, 3))},
                ":w": {"N": repr(round(usage.write_units, 3))},
                ":n": {"N": str(records)},
                ":e": {"N": str(int(now + USAGE_TTL_S))},
            },
        )
    except Exception as exc:  # a report, not a proof: never fail the batch for it
        logger.warning("could not add the batch's capacity units to the usage counter: %s", exc)


def usage_last_day(dynamodb: Any, table: str, direction: str, clock: Any = time.time) -> dict[str, float]:
    """Capacity units a mirror direction consumed over the last 24 hours (whole hours)."""
    since = time.strftime("%Y-%m-%dT%H", time.gmtime(clock() - 86400))
    items = query_items(dynamodb, f"read the mirror's usage from {table}", TableName=table,
                        KeyConditionExpression="PK = :pk AND SK >= :since",
                        ExpressionAttributeValues={":pk": {"S": f"{USAGE_PREFIX}{direction}"},
                                                   ":since": {"S": since}})
    totals = {"read_units": 0.0, "write_units": 0.0, "records": 0.0}
    for item in items:
        for name in totals:
            totals[name] += float(item.get(name, {}).get("N", 0))
    return totals


def receipted_ids(dynamodb: Any, table: str, stream_arn: str, since: float) -> set[str]:
    """Every event id receipted for `stream_arn` by a batch processed at or after `since` (minus the margin)."""
    start = f"{max(0, round((since - CLOCK_MARGIN_S) * 1000)):013d}"
    items = query_items(dynamodb, f"read consumer receipts from {table}", TableName=table,
                        KeyConditionExpression="PK = :pk AND SK >= :since",
                        ExpressionAttributeValues={":pk": {"S": receipt_pk(stream_arn)}, ":since": {"S": start}},
                        ProjectionExpression="ids", ConsistentRead=True)
    return {event_id for item in items for event_id in item.get("ids", {}).get("SS", [])}


__all__ = ["CLOCK_MARGIN_S", "acknowledge", "receipt_items", "receipt_pk", "receipted_ids", "record_usage",
           "usage_last_day"]
