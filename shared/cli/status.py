"""`dynashift status` and the quarantine operations: read the control table, say where things stand.

`gather` collects one screen's worth, each part read the cheapest way (a
GetItem or a Query; never a scan of a data table):

* the cutover mode: control item ``MODE`` / ``MODE``, attribute ``mode``;
  ``old`` when absent (the mode module owns the writes; only the raw item is
  read here);
* backfill progress per table (`backfill.run.status`);
* both stream consumers (`consumers`): the Lambda event source mappings of
  the configured functions, and per shard what the consumer acknowledged
  (`shared.streams.drain`), which holds for Lambda and the local runner alike;
* quarantine counts by reason (`ControlStore.quarantine_counts`: reasons
  only, streamed, so a quarantine of millions is counted, not loaded);
* the last verify result (`shared.verify.report.last_verify`);
* the last backup: items ``BACKUP`` / ``<ISO timestamp>...`` (written by the
  backup module), newest first; None when there is none yet;
* each mirror direction's capacity units over the last 24 hours (the hourly
  counters of `shared.store.receipts`), priced by `shared.core.capacity`. The backfill's
  units come with its rows.

`retry_quarantine` re-reads each quarantined source item strongly and
applies it again through the validated write (`Applier.apply_validated`):
for when a collision cleared or the transform was fixed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from shared.core import aws
from shared.core.aws import translate
from shared.core.codec import to_native
from shared.core.definition import get_definition
from shared.core.errors import StoreError
from shared.core.settings import Settings
from shared.protocol.apply import Applier
from shared.store import keys
from shared.store.control import ControlStore, StaleWriterRegistry, StaleWriterWatch
from shared.verify.differences import jsonable
from shared.verify.report import last_verify
from shared.verify.verifier import preflight

MODE_DEFAULT = "old"


def read_mode(client: Any, settings: Settings) -> str:
    try:
        response = client.get_item(TableName=settings.control_table, Key=keys.mode(),
                                   ConsistentRead=True)
    except Exception as exc:
        raise translate(exc, f"read the mode from {settings.control_table}") from exc
    item = response.get("Item") or {}
    return item.get("mode", {}).get("S", MODE_DEFAULT)


def consumers(settings: Settings, now: float, *, lambdas: Any = None) -> dict[str, Any]:
    """Both stream consumers as AWS or the local runner shows them.

    ``mappings``: per direction and stream, the Lambda event source mappings
    of the configured function (state, starting position, last processing
    result), or why they are not known. ``shards``: per shard, what the
    consumer has acknowledged (`shared.streams.drain.measure`: confirmed position,
    records pending, lag), which holds whoever consumes.
    """
    from shared.streams import coverage, drain

    dynamodb = aws.dynamodb(settings)
    streams = aws.streams(settings)
    functions = {"forward": settings.mirror_function, "reverse": settings.reverse_mirror_function}
    if lambdas is None and any(functions.values()):
        lambdas = coverage.lambda_client(settings)
    mappings: list[dict[str, Any]] = []
    shards: list[dict[str, Any]] = []
    for direction in drain.DIRECTIONS:
        for table in drain.consumer_tables(settings, direction):
            row: dict[str, Any] = {"direction": direction, "table": table, "function": functions[direction]}
            try:
                arn = drain.stream_arn_of(dynamodb, table)
            except StoreError as exc:
                mappings.append({**row, "note": str(exc)})
                continue
            if not functions[direction]:
                mappings.append({**row, "note": "function not configured (DYNASHIFT_"
                                 + ("MIRROR_FUNCTION" if direction == "forward" else "REVERSE_MIRROR_FUNCTION")
                                 + "): local runner, or unknown"})
            else:
                try:
                    found = coverage.event_source_mappings(lambdas, arn, functions[direction])
                    for mapping in found:
                        mappings.append({**row, "uuid": mapping.get("UUID"), "state": mapping.get("State"),
                                         "starting_position": mapping.get("StartingPosition"),
                                         "last_processing_result": mapping.get("LastProcessingResult")})
                    if not found:
                        mappings.append({**row, "note": "no event source mapping on this stream"})
                except Exception as exc:
                    mappings.append({**row, "note": f"mappings unknown: {translate(exc, 'list event source mappings')}"})
        try:
            measured = drain.measure(settings, direction, dynamodb=dynamodb, streams=streams, stop_at_gap=True)
        except StoreError as exc:
            shards.append({"direction": direction, "note": str(exc)})
            continue
        shards.extend({"direction": direction, **shard.as_dict(now)} for shard in measured)
    return {"mappings": mappings, "shards": shards}


def last_backup(client: Any, settings: Settings) -> dict[str, Any] | None:
    try:
        page = client.query(TableName=settings.control_table, KeyConditionExpression="PK = :pk",
                            ExpressionAttributeValues={":pk": {"S": "BACKUP"}}, ScanIndexForward=False, Limit=1,
                            ConsistentRead=True)
    except Exception as exc:
        raise translate(exc, "read the last backup") from exc
    items = page.get("Items", [])
    if not items:
        return None
    item = jsonable(to_native(items[0]))
    return {name: item.get(name) for name in ("SK", "table", "kind", "created_at", "status")}


async def quarantine_counts(settings: Settings) -> dict[str, int]:
    """Entries per reason, streamed without images: a large quarantine is counted, not loaded."""
    await asyncio.to_thread(preflight, settings, [settings.control_table])
    async with aws.aio_dynamodb(settings) as client:
        return await ControlStore(client, settings.control_table).quarantine_counts()


def gather(settings: Settings, clock: Any = time.time) -> dict[str, Any]:
    """Everything `dynashift status` shows, as plain data."""
    from backfill.run import status as backfill_status

    now = clock()
    client = aws.dynamodb(settings)
    by_reason = asyncio.run(quarantine_counts(settings))
    return {
        "at": now,
        "mode": read_mode(client, settings),
        "backfill": backfill_status(settings),
        "consumers": consumers(settings, now),
        "quarantine": {"total": sum(by_reason.values()), "by_reason": by_reason},
        "verify": last_verify(settings),
        "backup": last_backup(client, settings),
        "mirror_capacity": mirror_capacity(client, settings, now),
    }


def mirror_capacity(client: Any, settings: Settings, now: float) -> dict[str, dict[str, Any]]:
    """Each mirror direction's capacity units over the last 24 hours (`shared.store.receipts` counters), priced."""
    from shared.core import capacity
    from shared.store.receipts import usage_last_day

    out = {}
    for direction in ("forward", "reverse"):
        totals = usage_last_day(client, settings.control_table, direction, clock=lambda: now)
        usage = capacity.Usage(read_units=totals["read_units"], write_units=totals["write_units"])
        out[direction] = {**totals, "usd": capacity.price(usage, settings.effective_region)}
    return out


@dataclass
class RetryReport:
    retried: int = 0
    left: int = 0  # left quarantine
    deleted: int = 0  # the source item is gone: the mirror's REMOVE clears its entry
    still: dict[str, int] = field(default_factory=dict)


async def retry_quarantine(settings: Settings, reason: str | None = None) -> RetryReport:
    """Re-read each quarantined item (strongly) and apply it again, validated; report who left."""
    report = RetryReport()
    await asyncio.to_thread(preflight, settings, [settings.control_table])
    definition = get_definition(settings.migration)
    async with aws.aio_dynamodb(settings) as client:
        control = ControlStore(client, settings.control_table)
        watch = StaleWriterWatch(StaleWriterRegistry(client, settings.control_table), settings.stale_writer_refresh_s)
        applier = Applier(settings, definition, client, control, tombstone_source=watch.stale_writers_about)
        for entry in await control.quarantine_list(reason):
            report.retried += 1
            image, _ = await applier.read_source(entry.ref)
            if image is None:
                report.deleted += 1
                continue
            result = await applier.apply_validated(entry.ref, held=entry.held_keys)
            if result.quarantined is None and result.cleared_quarantine:
                report.left += 1
            else:
                why = result.quarantined.reason if result.quarantined else entry.reason
                report.still[why] = report.still.get(why, 0) + 1
    return report
