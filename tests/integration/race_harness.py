"""A harness that drives the mirror, the backfill's stale writes and the
application step by step, in any interleaving, against DynamoDB Local.

Application writes are real writes to the legacy tables; the stream records
they would produce are built here in Lambda's exact shape and handed to the
mirror when the test says so. That is what makes every race deterministic:
the test, not the scheduler, decides the order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from botocore.exceptions import ClientError

from shared.core import aws
from shared.core.codec import to_dynamodb_json, to_native, to_wire
from shared.core.definition import Item, SourceRef
from shared.core.settings import Settings
from shared.ops.tables import create_tables
from shared.protocol.apply import Applier, ApplyResult, sweep_tombstones
from shared.store.control import ControlStore, StaleWriterRegistry
from shared.streams.mirror import MirrorEngine
from shared.verify.convergence import ConvergenceResult, check_tables


class FaultyClient:
    """Delegates to an aiobotocore client; fails chosen calls with throttling (the
    next N of a method, or the first matching a predicate), and holds chosen
    calls back (a slow request, or one in botocore's retry back-off)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fail_next: dict[str, int] = {}
        self.failures = 0
        self.hold_when: Callable[[str, dict[str, Any]], bool] | None = None
        self.hold_s = 0.0
        self.released = asyncio.Event()
        self.held = 0
        self.fail_once_when: Callable[[str, dict[str, Any]], bool] | None = None

    def hold(self, when: Callable[[str, dict[str, Any]], bool], at_most_s: float) -> None:
        """Hold calls matching `when(name, kwargs)` until `release()`, or `at_most_s` of loop time."""
        self.hold_when, self.hold_s = when, at_most_s
        self.released = asyncio.Event()

    def release(self) -> None:
        self.released.set()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.hold_when is not None and self.hold_when(name, kwargs):
                self.held += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.released.wait(), self.hold_s)
            if self.fail_once_when is not None and self.fail_once_when(name, kwargs):
                self.fail_once_when = None
            elif self.fail_next.get(name, 0) > 0:
                self.fail_next[name] -= 1
            else:
                return await attr(*args, **kwargs)
            self.failures += 1
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "injected"},
                 "ResponseMetadata": {"HTTPStatusCode": 400}},
                name,
            )

        return call


class RaceHarness:
    def __init__(self, settings: Settings, stale_path: str = "put") -> None:
        self.settings = settings
        self.stale_path = stale_path  # how `stale_write` writes: "put" or "insert"
        create_tables(settings, with_sources=True)
        self.sync = aws.dynamodb(settings)
        self.engine = MirrorEngine(settings)
        self.loop = self.engine.loop
        applier = self.run(self.engine._ensure_applier())
        self.faults = FaultyClient(applier.client)
        applier.client = self.faults
        self.definition = self.engine.definition
        # The mirror's one-off "started at" record is not what these tests are
        # about; mark it done so injected faults hit the records' own writes.
        self.engine._start_recorded.update(s.name for s in self.definition.sources)
        self.backfill = Applier(settings, self.definition, applier.client.inner, ControlStore(
            applier.client.inner, settings.control_table))
        self.registry = StaleWriterRegistry(applier.client.inner, settings.control_table)
        self.sequence = 0

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        self.engine.close()

    # ------------------------------------------------------------ application
    def _source_get(self, table: str, key: dict[str, str]) -> Item | None:
        item = self.sync.get_item(
            TableName=self.settings.physical_name(table), Key=to_wire(key), ConsistentRead=True
        ).get("Item")
        return to_native(item) if item else None

    def _record(self, table: str, key: dict[str, str], old: Item | None, new: Item | None) -> dict[str, Any]:
        self.sequence += 1
        body: dict[str, Any] = {
            "Keys": to_dynamodb_json(key),
            "SequenceNumber": f"{self.sequence:021d}",
            "ApproximateCreationDateTime": int(time.time()),
            "StreamViewType": "NEW_AND_OLD_IMAGES",
            "SizeBytes": 100,
        }
        if old is not None:
            body["OldImage"] = to_dynamodb_json(old)
        if new is not None:
            body["NewImage"] = to_dynamodb_json(new)
        physical = self.settings.physical_name(table)
        return {
            "eventID": uuid.uuid4().hex,
            "eventName": "INSERT" if old is None else ("REMOVE" if new is None else "MODIFY"),
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1",
            "eventSourceARN": f"arn:aws:dynamodb:us-east-1:000000000000:table/{physical}/stream/2026-01-01T00:00:00",
            "dynamodb": body,
        }

    def put(self, table: str, item: Item) -> dict[str, Any]:
        """The application writes `item`; returns the stream record it produced."""
        key_attrs = self.definition.source(table).key_attrs
        key = {a: item[a] for a in key_attrs}
        old = self._source_get(table, key)
        self.sync.put_item(TableName=self.settings.physical_name(table), Item=to_wire(item))
        return self._record(table, key, old, item)

    def delete(self, table: str, key: dict[str, str]) -> dict[str, Any]:
        old = self._source_get(table, key)
        self.sync.delete_item(TableName=self.settings.physical_name(table), Key=to_wire(key))
        return self._record(table, key, old, None)

    # ----------------------------------------------------------------- mirror
    def mirror(self, records: list[dict[str, Any]]) -> list[str]:
        """Hand one batch to the mirror handler logic; returns the failed sequence numbers."""
        try:
            response = self.engine.handle({"Records": records})
        except BatchProcessingError:
            # Every record failed: the function errors and Lambda retries the whole batch.
            return [r["dynamodb"]["SequenceNumber"] for r in records]
        return [f["itemIdentifier"] for f in response.get("batchItemFailures", [])]

    @staticmethod
    def before_next_call(owner: Any, name: str, action: Callable[[], Awaitable[Any]]) -> None:
        """Run `action` inside the next call of `owner.name`, right before the call itself."""
        original = getattr(owner, name)

        async def action_first(*args: Any, **kwargs: Any) -> Any:
            setattr(owner, name, original)
            await action()
            return await original(*args, **kwargs)

        setattr(owner, name, action_first)

    async def apply_batch(self, records: list[dict[str, Any]]) -> None:
        """Apply a batch from inside another one (a `before_next_call` action); it must succeed."""
        assert not await self.engine._apply_records(records)

    def apply_before_next_waiter_registers(self, record: dict[str, Any]) -> None:
        """Apply `record` inside the mirror's next collision, right between its
        failed put and its registration as a waiter (the tightest interleaving)."""
        self.before_next_call(self.engine.applier.control, "waiter_add", lambda: self.apply_batch([record]))

    def mirror_until_done(self, records: list[dict[str, Any]], max_rounds: int = 20) -> int:
        """Deliver like Lambda: on failure, redeliver from the lowest failed record on."""
        rounds = 0
        while records and rounds < max_rounds:
            rounds += 1
            failed = set(self.mirror(records))
            if not failed:
                return rounds
            first = min(i for i, r in enumerate(records) if r["dynamodb"]["SequenceNumber"] in failed)
            records = records[first:]
        assert not records or rounds < max_rounds, "records kept failing"
        return rounds

    # --------------------------------------------------------------- backfill
    def start_backfill(self) -> None:
        """Register as a stale writer and wait out the fence, as the backfill does."""
        self.run(self.registry.register("race-backfill", "backfill", lease_s=600))
        time.sleep(self.settings.stale_writer_refresh_s + self.settings.consistency_margin_s)

    def read(self, table: str, key: dict[str, str]) -> tuple[Item | None, float]:
        """An eventually consistent read, like a scan page, stamped with its time."""
        read_at = time.time()
        item = self.sync.get_item(TableName=self.settings.physical_name(table), Key=to_wire(key)).get("Item")
        return (to_native(item) if item else None), read_at

    def stale_write(self, table: str, image: Item, read_at: float, path: str | None = None) -> ApplyResult:
        """The backfill's write of `image`, by `path` (default `self.stale_path`): "put", one
        conditional put per target (`write_stale`), or "insert", the batched INSERTs with their
        fallback (`write_stale_batch`, the default write mode's)."""
        ref = self.definition.source(table).ref(image)
        if (path or self.stale_path) == "insert":
            return self.run(self.backfill.write_stale_batch([(ref, image)], read_at))[0]
        return self.run(self.backfill.write_stale(ref, image, read_at))

    def finish_backfill(self) -> int:
        self.run(self.registry.deregister("race-backfill"))
        return self.sweep(older_than_s=0)

    def sweep(self, older_than_s: float) -> int:
        return self.run(sweep_tombstones(self.settings, self.definition, self.backfill.client,
                                         older_than_s=older_than_s))

    # ------------------------------------------------------------------ state
    def target(self, pk: str, sk: str) -> Item | None:
        item = self.sync.get_item(
            TableName=self.settings.target_table, Key={"PK": {"S": pk}, "SK": {"S": sk}}, ConsistentRead=True
        ).get("Item")
        return to_native(item) if item else None

    def live(self, pk: str, sk: str) -> Item | None:
        """The target item at a key, treating a tombstone as absent."""
        item = self.target(pk, sk)
        return None if item is None or item.get("entity") == "_dynashift_tombstone" else item

    def target_keys(self) -> set[tuple[str, str]]:
        items = self.sync.scan(TableName=self.settings.target_table, ConsistentRead=True)["Items"]
        return {(i["PK"]["S"], i["SK"]["S"]) for i in items}

    def quarantine(self) -> dict[SourceRef, str]:
        entries = self.run(self.backfill.control.quarantine_list())
        return {e.ref: e.reason for e in entries}

    def converged(self) -> ConvergenceResult:
        return check_tables(self.settings)
