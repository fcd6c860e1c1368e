"""What every stream engine shares: Lambda's batch contract around one apply step.

`MirrorEngine` (legacy streams -> target) and `ReverseEngine` (target stream
-> legacy tables) differ in what they do with a batch; they do it inside the
same frame, which lives here:

* **Entry.** `handle(event, context)` is what a Lambda handler calls: it
  runs powertools' `BatchProcessor` over the stream event and returns the
  partial batch response (`batchItemFailures`), so Lambda (or the local
  runner) redelivers from the first failed record, in order.
* **One apply per batch.** The processor's `_prepare` hands the *whole*
  batch to the engine's `apply_records` at once (engines coalesce records
  per source item or per owner), then reports each record as failed exactly
  when its sequence number came back in the failed set. Only transient
  faults fail records; bad data is quarantined by the engine and never
  fails a record.
* **The loop.** `apply_records` runs the engine's coroutine
  `_apply_and_acknowledge` on `self.loop`, the engine's event loop (one per
  process for the reverse engine, one per thread for the forward one): the
  handlers are synchronous, as Lambda calls them.

Each subclass provides `loop`, `_apply_and_acknowledge(records) -> failed
sequence numbers` (apply, then acknowledge in `shared.store.receipts`),
`close()`, and `last_stats`, the last batch's counts with `log_fields()` and
`metrics()`.

`EngineSlot` is the rest of a handler module: one engine per container,
built on first use from the settings (or handed in by the local runner), and
the batch's log line and EMF metrics published through the handler's
powertools Logger and Metrics.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from shared.core.errors import TransientError


class StreamEngine:
    """The frame of a stream engine: Lambda's batch contract around `_apply_and_acknowledge`."""

    loop: asyncio.AbstractEventLoop
    last_stats: Any  # the last batch's counts: log_fields() and metrics()

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
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


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
