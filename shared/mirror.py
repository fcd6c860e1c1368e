"""The forward mirror: one DynamoDB Streams batch in, target writes out.

Design:

* A batch (Lambda's event, or the local runner's identical event) is parsed
  into *chains*: the records of one source item, in stream order. Only a
  chain's last clean image is written (coalescing: each target key is written
  once per batch, with its newest value), and earlier images only say which
  keys may have to go. The write protocol itself is `shared.apply`.
* Chains that can touch a common target key (a transfer, a rename onto a
  freed name, a collision) are put in one *lane* and applied one after the
  other in stream order; different lanes run concurrently (bounded by
  `mirror_concurrency`). This keeps per-key order while using the engine's
  parallelism.
* Outcomes are per record: a chain that hit a transient fault fails all of
  its records, and every later chain of the same lane too, so the stream
  (Lambda, or the runner) redelivers them in order. Bad data never fails a
  record: it is quarantined by the applier.
* Powertools' `BatchProcessor` builds the partial batch response. Its
  per-record template method is kept: `_prepare` applies the coalesced batch
  once, and the record handler only reports each record's outcome.

* Mode gate: the flag (`shared.mode`) is read strongly once per batch. The
  forward mirror applies only in `old` and while freezing towards `new`;
  otherwise every record is reported processed and nothing is written (those
  records were written by reverse replication). Why this cannot lose or echo
  a write is explained in `shared.mode`.

The engine owns one event loop and one aiobotocore client for its lifetime
(a Lambda container, or a runner process), created lazily on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from shared.apply import Applier, ApplyResult, gather_settled
from shared.aws import aio_dynamodb, error_code, is_transient
from shared.codec import from_stream_image
from shared.control import ControlStore, QuarantineEntry, StaleWriterRegistry, StaleWriterWatch
from shared.definition import Item, MigrationDefinition, SourceRef, TargetKey, get_definition
from shared.errors import TransientError
from shared.mode import forward_applies, read_mode_async
from shared.receipts import acknowledge
from shared.settings import Settings


@dataclass
class Chain:
    ref: SourceRef
    records: list[dict[str, Any]] = field(default_factory=list)
    first_index: int = 0

    def images(self) -> list[Item | None]:
        """[first OldImage, NewImage of each record...] as native items."""
        first = self.records[0]["dynamodb"]
        images: list[Item | None] = [from_stream_image(first["OldImage"]) if "OldImage" in first else None]
        for record in self.records:
            body = record["dynamodb"]
            images.append(from_stream_image(body["NewImage"]) if "NewImage" in body else None)
        return images


@dataclass
class BatchStats:
    records: int = 0
    chains: int = 0
    applied: int = 0
    written: int = 0
    removed: int = 0
    skipped: int = 0
    quarantined: int = 0
    cleared: int = 0
    woken: int = 0
    failed_records: int = 0
    mode_skipped: int = 0  # records not applied because the mode belongs to reverse replication
    lag_ms: list[float] = field(default_factory=list)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)


def table_from_arn(arn: str) -> str:
    """`arn:aws:dynamodb:r:a:table/NAME/stream/TS` -> NAME."""
    try:
        return arn.split(":table/", 1)[1].split("/", 1)[0]
    except IndexError:
        raise ValueError(f"not a DynamoDB stream ARN: {arn!r}") from None


class MirrorEngine:
    """Applies stream batches; one per process (Lambda container or runner)."""

    def __init__(self, settings: Settings, definition: MigrationDefinition | None = None) -> None:
        self.settings = settings
        self.definition = definition or get_definition(settings.migration)
        self.loop = asyncio.new_event_loop()
        self._stack: contextlib.AsyncExitStack | None = None
        self.applier: Applier | None = None
        self._start_recorded: set[str] = set()
        self.last_stats = BatchStats()
        physical = {settings.physical_name(s.name): s.name for s in self.definition.sources}
        self._logical_by_physical = physical

    # ------------------------------------------------------------- lifecycle
    async def _ensure_applier(self) -> Applier:
        if self.applier is None:
            self._stack = contextlib.AsyncExitStack()
            client = await self._stack.enter_async_context(
                aio_dynamodb(self.settings, pool=self.settings.mirror_concurrency * 2)
            )
            control = ControlStore(client, self.settings.control_table)
            self.watch = StaleWriterWatch(StaleWriterRegistry(client, self.settings.control_table),
                                          self.settings.stale_writer_refresh_s)
            self.applier = Applier(self.settings, self.definition, client, control,
                                   tombstone_source=self.watch.stale_writers_about)
        return self.applier

    async def _refresh_tombstone_mode(self, applier: Applier) -> None:
        """Tombstones only while a stale writer (backfill) may be about.

        The applier asks its `tombstone_source` (the registry watch) right
        before each removal; this per-batch call only surfaces a registry
        failure early, as a transient fault of the whole batch.
        """
        await applier.tombstones_now()

    def close(self) -> None:
        if self._stack is not None:
            self.loop.run_until_complete(self._stack.aclose())
            self._stack = None
            self.applier = None
        self.loop.close()

    # ---------------------------------------------------------------- entry
    def handle(self, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        """Lambda-compatible: returns the partial batch response."""
        processor = _CoalescingProcessor(self)
        return process_partial_response(
            event=event, record_handler=processor.record_outcome, processor=processor, context=context
        )

    def apply_records(self, records: list[dict[str, Any]]) -> set[str]:
        """Apply a batch and acknowledge it (`shared.receipts`); returns the sequence numbers that failed."""
        return self.loop.run_until_complete(self._apply_and_acknowledge(records))

    async def _apply_and_acknowledge(self, records: list[dict[str, Any]]) -> set[str]:
        failed = await self._apply_records(records)
        applier = await self._ensure_applier()
        failed = await acknowledge(applier.client, self.settings.control_table, records, failed)
        self.last_stats.failed_records = max(self.last_stats.failed_records, len(failed))
        return failed

    # ---------------------------------------------------------------- batch
    def _chains(self, records: list[dict[str, Any]]) -> OrderedDict[SourceRef, Chain]:
        chains: OrderedDict[SourceRef, Chain] = OrderedDict()
        for index, record in enumerate(records):
            physical = table_from_arn(record["eventSourceARN"])
            logical = self._logical_by_physical.get(physical, physical)
            source = self.definition.source(logical)
            keys = from_stream_image(record["dynamodb"]["Keys"])
            ref = source.ref(keys)
            chain = chains.get(ref)
            if chain is None:
                chain = chains[ref] = Chain(ref, first_index=index)
            chain.records.append(record)
        return chains

    def _lanes(
        self, chains: OrderedDict[SourceRef, Chain], entries: dict[SourceRef, QuarantineEntry]
    ) -> list[list[Chain]]:
        """Group chains that may touch a common target key (union-find)."""
        parent: dict[SourceRef, SourceRef] = {ref: ref for ref in chains}

        def find(ref: SourceRef) -> SourceRef:
            while parent[ref] != ref:
                parent[ref] = parent[parent[ref]]
                ref = parent[ref]
            return ref

        owner_of_key: dict[TargetKey, SourceRef] = {}
        for ref, chain in chains.items():
            keys: set[TargetKey] = set(entries[ref].held_keys) if ref in entries else set()
            for image in chain.images():
                if image is not None:
                    keys |= self.definition.candidate_keys(ref.table, image)
            for key in keys:
                other = owner_of_key.setdefault(key, ref)
                if other != ref:
                    parent[find(ref)] = find(other)
        lanes: dict[SourceRef, list[Chain]] = {}
        for ref, chain in chains.items():
            lanes.setdefault(find(ref), []).append(chain)
        return [sorted(lane, key=lambda c: c.first_index) for lane in lanes.values()]

    async def _apply_records(self, records: list[dict[str, Any]]) -> set[str]:
        applier = await self._ensure_applier()
        stats = BatchStats(records=len(records))
        now = time.time()
        for record in records:
            created = record["dynamodb"].get("ApproximateCreationDateTime")
            if created is not None:
                stats.lag_ms.append(max(0.0, (now - float(created)) * 1000))
        try:
            mode = await read_mode_async(applier.client, self.settings.control_table)
        except Exception as exc:
            if not is_transient(exc):
                raise
            stats.failed_records = len(records)
            self.last_stats = stats
            return {r["dynamodb"]["SequenceNumber"] for r in records}
        if not forward_applies(mode):
            stats.mode_skipped = len(records)
            self.last_stats = stats
            return set()
        chains = self._chains(records)
        stats.chains = len(chains)
        await self._record_start({c.ref.table for c in chains.values()}, records)
        try:
            await self._refresh_tombstone_mode(applier)
            entries = await applier.control.quarantine_get_many(chains)
        except Exception as exc:
            if not is_transient(exc):
                raise
            self.last_stats = stats
            stats.failed_records = len(records)
            return {r["dynamodb"]["SequenceNumber"] for r in records}
        failed: set[str] = set()
        semaphore = asyncio.Semaphore(self.settings.mirror_concurrency)

        async def run_lane(lane: list[Chain]) -> None:
            broken = False
            for chain in lane:
                if broken:
                    failed.update(r["dynamodb"]["SequenceNumber"] for r in chain.records)
                    continue
                try:
                    async with semaphore:
                        result = await applier.apply_change(chain.ref, chain.images(), entries.get(chain.ref))
                except Exception as exc:
                    if not (is_transient(exc) or isinstance(exc, TransientError)):
                        raise
                    broken = True
                    failed.update(r["dynamodb"]["SequenceNumber"] for r in chain.records)
                    continue
                self._count(stats, result)

        # Settled: a lane that raises must not leave the others' writes in flight to
        # resume in this loop's next batch, after their records were redelivered.
        await gather_settled(*(run_lane(lane) for lane in self._lanes(chains, entries)))
        stats.failed_records = len(failed)
        self.last_stats = stats
        return failed

    async def _record_start(self, tables: set[str], records: list[dict[str, Any]]) -> None:
        """Remember, once, since when the mirror covers each table (the backfill checks it)."""
        new = tables - self._start_recorded
        if not new or self.applier is None:
            return
        first = min(
            (float(r["dynamodb"].get("ApproximateCreationDateTime", time.time())) for r in records),
            default=time.time(),
        )
        for table in new:
            try:
                await self.applier.client.put_item(
                    TableName=self.settings.control_table,
                    Item={"PK": {"S": "MIRROR"}, "SK": {"S": table}, "started_at": {"N": repr(first)}},
                    ConditionExpression="attribute_not_exists(PK)",
                )
            except Exception as exc:
                if is_transient(exc):
                    continue  # recorded on a later batch; never fail records for this
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
            self._start_recorded.add(table)

    @staticmethod
    def _count(stats: BatchStats, result: ApplyResult) -> None:
        stats.applied += 1
        stats.written += result.written
        stats.removed += result.removed
        stats.skipped += result.skipped
        stats.woken += result.woken
        stats.cleared += int(result.cleared_quarantine)
        if result.quarantined is not None:
            stats.quarantined += 1
            reason = result.quarantined.reason
            stats.quarantine_reasons[reason] = stats.quarantine_reasons.get(reason, 0) + 1


class _CoalescingProcessor(BatchProcessor):
    """BatchProcessor whose `_prepare` applies the whole batch, coalesced."""

    def __init__(self, engine: MirrorEngine) -> None:
        super().__init__(event_type=EventType.DynamoDBStreams)
        self.engine = engine
        self.failed: set[str] = set()

    def _prepare(self) -> None:
        super()._prepare()
        self.failed = self.engine.apply_records(self.records)

    def record_outcome(self, record: DynamoDBRecord) -> None:
        sequence = record.dynamodb.sequence_number if record.dynamodb else None
        if sequence in self.failed:
            raise TransientError(f"record {sequence} hit a transient fault; the stream will retry it")
