"""What every stream engine shares: the lifecycle, the mode gate, fault handling,
Lambda's batch contract, and the usage it reports. Subclasses only apply.

`MirrorEngine` (legacy streams -> target) and `ReverseEngine` (target stream
-> legacy tables) differ in what they do with a batch; they do it inside the
same frame, which lives here:

* **Entry.** `handle(event, context)` is what a Lambda handler calls: it
  runs powertools' `BatchProcessor` over the stream event and returns the
  partial batch response (`batchItemFailures`), so Lambda (or the local
  runner) redelivers from the first failed record, in order.
* **One apply per batch.** The processor's `_prepare` hands the *whole*
  batch to `apply_records` at once (engines coalesce records per source item
  or per owner), then reports each record as failed exactly when its
  sequence number came back in the failed set. Only transient faults fail
  records; bad data is quarantined by the engine and never fails a record.
* **Lifecycle.** One event loop and one aiobotocore client per thread that
  applies batches, made on first use (a Lambda container has one thread; the
  local runner delivers different shards' batches from threads of their
  own, as Lambda runs one execution environment per shard). `close()`
  releases them all, after reporting the usage not yet reported.
* **Mode gate.** The flag (`shared.store.mode`) is read strongly once per
  batch; `applies(mode)` says whether this engine writes in it. Otherwise
  every record is reported processed and nothing is written (why that
  cannot lose or echo a write: `shared.store.mode`). While the last batch
  applied, the flag is read together with the batch's first reads
  (`_prefetch`): one round trip, not two; nothing is written before the
  flag said yes, and what was read is dropped if it says no.
* **Faults.** A transient fault of the gate or the first reads fails the
  whole batch; within `_apply` the engine fails only the records that
  depend on what failed (`retryable` says which faults those are). Anything
  else is a bug or bad configuration, and raises.
* **Receipts and usage.** After the apply, the batch is acknowledged
  (`shared.store.receipts`), and its capacity units (counted under the
  engine's `component`) go to `last_stats` and, at most every
  `USAGE_FLUSH_S`, to the hourly usage counter, beside the receipts (the
  first batch at once, so it shows in `status`; nothing is dropped).

A subclass names its `component` and `direction`, and provides `applies`,
`_new_stats`, `_parse` (the batch's records grouped, before any read),
`_prefetch` (the first reads) and `_apply` (the writes; returns the failed
sequence numbers). Its stats have ``records``, ``failed_records``,
``mode_skipped`` and ``usage``, with `log_fields()` and `metrics()`.

`EngineSlot` is the rest of a handler module: one engine per container,
built on first use from the settings (or handed in by the local runner), and
the batch's log line and EMF metrics published through the handler's
powertools Logger and Metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from shared.core import capacity
from shared.core.aws import aio_dynamodb, is_transient
from shared.core.capacity import Usage
from shared.core.definition import MigrationDefinition, get_definition
from shared.core.errors import TransientError
from shared.core.settings import Settings
from shared.protocol.apply import gather_settled
from shared.store.mode import ModeState, read_mode_async
from shared.store.receipts import acknowledge, record_usage

USAGE_FLUSH_S = 5.0  # the usage counter is added to at most this often (see the module note)
_NOT_READ = object()


def retryable(exc: BaseException) -> bool:
    """A fault the stream's redelivery may cure (throttling, a 5xx, a timeout): fail the records, don't raise."""
    return is_transient(exc)


def sequences(records: list[dict[str, Any]]) -> set[str]:
    return {r["dynamodb"]["SequenceNumber"] for r in records}


@dataclass
class EngineState:
    """What one applying thread owns (see the module note)."""

    loop: asyncio.AbstractEventLoop
    last_stats: Any
    stack: contextlib.AsyncExitStack | None = None
    client: Any = None
    applies_seen: bool = True  # the last flag read let this engine apply
    unreported: Usage = field(default_factory=Usage)  # units not yet added to the usage counter
    unreported_records: int = 0
    usage_flushed_at: float = -math.inf


class StreamEngine:
    """The frame of a stream engine (module note); one per process (Lambda container or runner)."""

    component: str  # the capacity scope of its units
    direction: str  # its row in the hourly usage counter: "forward" or "reverse"
    state_type: type[EngineState] = EngineState

    def __init__(self, settings: Settings, definition: MigrationDefinition | None = None) -> None:
        self.settings = settings
        self.definition = definition or get_definition(settings.migration)
        self._local = threading.local()
        self._states: list[EngineState] = []
        self._states_lock = threading.Lock()

    # --------------------------------------------------------------- what a subclass provides
    def applies(self, mode: ModeState) -> bool:
        raise NotImplementedError

    def _new_stats(self, records: list[dict[str, Any]]) -> Any:
        raise NotImplementedError

    def _parse(self, records: list[dict[str, Any]], stats: Any) -> Any:
        """The batch's records grouped as the engine applies them (no I/O)."""
        raise NotImplementedError

    async def _prefetch(self, state: EngineState, batch: Any) -> Any:
        """The batch's first reads (a transient fault here fails the whole batch)."""
        raise NotImplementedError

    async def _apply(self, state: EngineState, batch: Any, prefetched: Any, stats: Any) -> set[str]:
        """Write the batch; returns the sequence numbers of the records that failed."""
        raise NotImplementedError

    def _connected(self, state: EngineState) -> None:
        """Build what this thread needs beside its client (called once the client is made)."""

    # --------------------------------------------------------------- lifecycle
    def _state(self) -> EngineState:
        state: EngineState | None = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = self.state_type(asyncio.new_event_loop(), self._new_stats([]))
            with self._states_lock:
                self._states.append(state)
        return state

    async def _connect(self) -> EngineState:
        state = self._state()
        if state.client is None:
            stack = contextlib.AsyncExitStack()
            state.client = await stack.enter_async_context(
                aio_dynamodb(self.settings, pool=self.settings.mirror_concurrency * 2)
            )
            state.stack = stack
            self._connected(state)
        return state

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._state().loop

    @property
    def client(self) -> Any:
        """This thread's client (None until its first batch)."""
        return self._state().client

    @property
    def last_stats(self) -> Any:
        """The stats of the last batch this thread applied."""
        return self._state().last_stats

    @last_stats.setter
    def last_stats(self, stats: Any) -> None:
        self._state().last_stats = stats

    def close(self) -> None:
        """Report the usage not yet reported, release every thread's client and loop (once no thread applies)."""
        with self._states_lock:
            states, self._states = self._states, []
        for state in states:
            if state.stack is not None:
                if state.unreported_records:
                    with contextlib.suppress(Exception):
                        state.loop.run_until_complete(self._flush_usage(state))
                state.loop.run_until_complete(state.stack.aclose())
                state.stack = None
                state.client = None
            state.loop.close()
        self._local = threading.local()

    # --------------------------------------------------------------- a batch
    def handle(self, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        """Lambda-compatible: returns the partial batch response."""
        processor = _WholeBatchProcessor(self)
        return process_partial_response(
            event=event, record_handler=processor.record_outcome, processor=processor, context=context
        )

    def apply_records(self, records: list[dict[str, Any]]) -> set[str]:
        """Apply a batch and acknowledge it (`shared.store.receipts`); returns the sequence numbers that failed."""
        return self.loop.run_until_complete(self._apply_and_acknowledge(records))

    async def _apply_and_acknowledge(self, records: list[dict[str, Any]]) -> set[str]:
        state = await self._connect()
        with capacity.scope(self.component) as usage:
            failed = await self._apply_records(records)
            receipts = acknowledge(state.client, self.settings.control_table, records, failed)
            if time.monotonic() - state.usage_flushed_at >= USAGE_FLUSH_S and state.unreported_records:
                # What earlier batches consumed, beside this batch's receipts (never fails the batch).
                failed, _ = await gather_settled(receipts, self._flush_usage(state))
            else:
                failed = await receipts
        stats = state.last_stats
        stats.failed_records = max(stats.failed_records, len(failed))
        stats.usage = usage
        state.unreported.add(usage)
        state.unreported_records += len(records)
        if state.usage_flushed_at == -math.inf:
            await self._flush_usage(state)  # the first batch shows up in `status` at once
        return failed

    async def _apply_records(self, records: list[dict[str, Any]]) -> set[str]:
        """The mode gate and the whole-batch faults around `_apply` (module note)."""
        state = await self._connect()
        stats = state.last_stats = self._new_stats(records)
        batch = self._parse(records, stats)
        control_table = self.settings.control_table
        try:
            prefetched: Any = _NOT_READ
            if state.applies_seen:
                # The flag rarely moves: read it with the batch's first reads.
                mode, prefetched = await gather_settled(
                    read_mode_async(state.client, control_table), self._prefetch(state, batch))
            else:
                mode = await read_mode_async(state.client, control_table)
            state.applies_seen = self.applies(mode)
            if not state.applies_seen:
                stats.mode_skipped = len(records)
                return set()
            if prefetched is _NOT_READ:
                prefetched = await self._prefetch(state, batch)
            failed = await self._apply(state, batch, prefetched, stats)
        except Exception as exc:
            if not retryable(exc):
                raise
            stats.failed_records = len(records)
            return sequences(records)
        stats.failed_records = len(failed)
        return failed

    async def _flush_usage(self, state: EngineState) -> None:
        """Add the units not yet reported to the hourly counter (best effort: `record_usage` never raises)."""
        usage, records = state.unreported, state.unreported_records
        state.unreported, state.unreported_records = Usage(), 0
        state.usage_flushed_at = time.monotonic()
        await record_usage(state.client, self.settings.control_table, self.direction, usage, records)


class _WholeBatchProcessor(BatchProcessor):
    """BatchProcessor whose `_prepare` applies the whole batch through the engine at once."""

    def __init__(self, engine: StreamEngine) -> None:
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


E = TypeVar("E", bound=StreamEngine)


class EngineSlot(Generic[E]):
    """A handler module's engine: one per container, and what it publishes per batch."""

    def __init__(self, build: Callable[[], E]) -> None:
        self._build = build
        self._engine: E | None = None

    def get(self) -> E:
        if self._engine is None:
            self._engine = self._build()
        return self._engine

    def use(self, engine: E | None) -> None:
        """Let the local runner hand in an engine built from its own settings (None: build again)."""
        self._engine = engine

    def handle(self, event: dict[str, Any], context: Any, *, logger: Any, metrics: Any, message: str) -> dict[str, Any]:
        """Apply the event's batch; log its counts and add its EMF metrics; the partial batch response."""
        from aws_lambda_powertools.metrics import MetricUnit

        engine = self.get()
        response = engine.handle(event, context)
        stats = engine.last_stats
        logger.info(message, extra=stats.log_fields())
        if os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() in ("1", "true"):
            # The local runner turns EMF off; powertools would still flush every
            # 100 values on its own, so don't hand it any.
            return response
        for name, unit, value in stats.metrics():
            metrics.add_metric(name=name, unit=MetricUnit[unit], value=value)
        return response


__all__ = ["EngineSlot", "StreamEngine"]
