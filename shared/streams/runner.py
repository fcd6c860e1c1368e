"""The local stream runner: Lambda's event source mapping, on one machine.

`dynashift mirror run` (through `shared.sim.local_lambda`, which hands it the
Lambda handlers) polls the source tables' streams (DescribeStream,
GetShardIterator, GetRecords) and calls the *same* handler function Lambda
calls, with events of exactly Lambda's shape. It mimics the event source
mapping where correctness depends on it:

* **Lineage.** A shard is read only once its parent is finished (or gone
  from the stream), so per-item order holds across shard splits.
* **Start position.** A shard without a checkpoint starts at TRIM_HORIZON,
  or with `--from latest` right after its last record at the start (read to
  its end, and recorded as the drain's baseline, so that the cutover's drain
  knows those records are not this consumer's), but only if it existed when the runner
  started and no run has read its parent: a child born of a split is always
  read from its start, or the records written to it before its first poll
  would be lost.
* **Checkpoints.** Per shard, the sequence number of the last record fully
  applied is kept in the control table (`CHECKPOINT#<stream arn>` /
  `<shard id>`); a restarted runner resumes AFTER it. A finished shard is
  marked so its children may start. Under a steady stream of batches a
  shard's checkpoint is written at most every `CHECKPOINT_EVERY_S` (and
  whenever the runner goes idle, and before it returns, even on an error),
  not after every batch: the write was a round trip on every batch's path.
  Only a restart after a crash sees an older checkpoint, and redelivers
  (at least once, in order, as after any crash; re-applying is idempotent).
  The consumer's receipts, not these checkpoints, are what the cutover's
  drain trusts. A finish and a checkpoint before a redelivery are written
  at once.
* **Partial batch responses.** With `batchItemFailures`, the checkpoint moves
  to just before the lowest failed record and the batch is redelivered from
  there, in order, after a backoff, exactly as Lambda does. A handler that
  raises fails the whole batch the same way.
* **Expired iterators** (or trimmed data) are re-acquired from the
  checkpoint.
* **Batching.** Up to `mirror_batch_size` records per call, waiting at most
  `mirror_batching_window_s` to fill a batch. Each shard is polled at most
  four times a second (`POLL_INTERVAL_S`), Lambda's documented base rate
  ("Lambda polls shards in your DynamoDB stream for records at a base rate of
  4 times per second"), also while records keep coming: a batch that took
  less than a quarter of a second is followed by a poll a quarter of a
  second after its own, so at a modest write rate a batch holds that much of
  the stream, as on AWS, not the few records a hot loop would find.
* **Shards at once** (``parallel_shards``, the forward mirror's runner): as
  Lambda runs one invocation per shard at a time (ParallelizationFactor 1)
  but every shard at the same time, each round polls and delivers every
  eligible shard from a thread of its own and waits for all of them; a
  shard's batches stay strictly one after the other. The handler must then
  be callable from several threads (`shared.streams.mirror.MirrorEngine` keeps a
  loop and a client per thread). The reverse runner delivers one shard after
  the other.
* **Stopping.** SIGINT/SIGTERM stop it after the current batch. Without
  `--follow` it stops by itself once every shard is drained.

Every `SWEEP_EVERY_S`, and before it exits, it sweeps tombstones old enough
that no stale writer can need them (see `shared.protocol.apply`), through
`shared.streams.sweeper.TombstoneSweeper` (a thread of its own, never the
polling loop). Its checkpoints are `shared.streams.checkpoints`; the events
it builds are `shared.streams.lambda_event`'s.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.core import aws
from shared.core.aws import error_code, translate
from shared.core.definition import MigrationDefinition, get_definition
from shared.core.errors import StoreError, UsageError
from shared.core.settings import Settings
from shared.store import keys
from shared.streams.checkpoints import CheckpointStore
from shared.streams.lambda_event import LocalContext, lambda_record
from shared.streams.sweeper import TombstoneSweeper

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
IDLE_POLL_S = 0.25
POLL_INTERVAL_S = 0.25  # at most four polls a second per shard, also while busy (module note)
MAX_BACKOFF_S = 5.0
DESCRIBE_EVERY_S = 10.0
SWEEP_EVERY_S = 5.0
CHECKPOINT_EVERY_S = 1.0


@dataclass
class ShardState:
    stream_arn: str
    shard_id: str
    parent_id: str | None
    checkpoint: str | None = None
    finished: bool = False
    iterator: str | None = None
    drained: bool = False  # last poll returned nothing
    at_latest: bool = False  # no checkpoint yet: start at LATEST, not TRIM_HORIZON
    failures: int = 0
    retry_at: float = 0.0
    next_poll_at: float = 0.0  # a quarter second after the start of its last poll (POLL_INTERVAL_S)
    saved: str | None = None  # the checkpoint last written to the control table
    saved_at: float = -float("inf")


@dataclass
class RunnerReport:
    batches: int = 0
    records: int = 0
    redelivered: int = 0
    failed_batches: int = 0
    expired_iterators: int = 0
    shards_finished: int = 0
    tombstones_swept: int = 0
    transient_faults: int = 0  # outages survived in follow mode
    lag_ms: list[float] = field(default_factory=list)


class StreamRunner:
    def __init__(
        self,
        settings: Settings,
        handler: Handler,
        *,
        follow: bool = False,
        start_from: str = "trim-horizon",
        definition: MigrationDefinition | None = None,
        sweeper: Callable[[float], int] | None = None,
        last_tombstone_at: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.time,
        max_seconds: float | None = None,
        on_batch: Callable[[RunnerReport], None] | None = None,
        source_tables: list[str] | None = None,
        record_mirror_start: bool = True,
        streams_client: Any = None,
        dynamodb_client: Any = None,
        parallel_shards: bool = False,
    ) -> None:
        if start_from not in ("trim-horizon", "latest"):
            raise UsageError(f"--from must be trim-horizon or latest, not {start_from!r}")
        self.settings = settings
        self.handler = handler
        self.follow = follow
        self.start_from = start_from
        self.definition = definition or get_definition(settings.migration)
        self.sweeper = sweeper
        self.last_tombstone_at = last_tombstone_at or (lambda: 0.0)
        self.clock = clock
        self.max_seconds = max_seconds
        self.on_batch = on_batch
        self.source_tables = source_tables or [settings.physical_name(s.name) for s in self.definition.sources]
        # The forward mirror records since when it covers each legacy table (the
        # backfill checks it); the reverse runner reads sc-main and records nothing.
        self.record_mirror_start = record_mirror_start
        # Injectable so unit tests can hand in fakes; default: clients from the settings.
        self.streams = streams_client if streams_client is not None else aws.streams(settings)
        self.dynamodb = dynamodb_client if dynamodb_client is not None else aws.dynamodb(settings)
        self.checkpoints = CheckpointStore(self.dynamodb, settings.control_table, clock)
        self.shards: dict[str, ShardState] = {}
        self.report = RunnerReport()
        self.stop_requested = threading.Event()
        self.ready = threading.Event()  # set once every shard has an iterator
        self._last_describe = 0.0
        self._last_sweep = 0.0
        self._sweep_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._sweeping: concurrent.futures.Future[int] | None = None
        self.parallel_shards = parallel_shards
        self._shard_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # the report, from the shards' threads
        self._discover_lock = threading.RLock()
        self._discovered = False
        self._start_recorded: set[str] = set()

    # ---------------------------------------------------------------- control
    def request_stop(self, *_: Any) -> None:
        self.stop_requested.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)

    # ------------------------------------------------------------ checkpoints
    def _load_checkpoints(self, stream_arn: str) -> dict[str, dict[str, Any]]:
        return self.checkpoints.load(stream_arn)

    def _save_checkpoint(self, shard: ShardState) -> None:
        self.checkpoints.save(shard.stream_arn, shard.shard_id, sequence=shard.checkpoint, finished=shard.finished,
                              parent_id=shard.parent_id)
        shard.saved, shard.saved_at = shard.checkpoint, self.clock()

    def _flush_checkpoints(self) -> None:
        """Write every checkpoint that moved since it was last written."""
        for shard in list(self.shards.values()):
            if shard.checkpoint and shard.checkpoint != shard.saved and not shard.finished:
                self._save_checkpoint(shard)

    def _record_start(self) -> bool:
        """Once every shard has an iterator, the mirror covers each table from now on.

        True once every table's start is recorded. In follow mode a transient
        fault only postpones a table's record to the next loop (the backfill
        refuses to start until it exists, so it must not be skipped).
        """
        physical_to_logical = {self.settings.physical_name(s.name): s.name for s in self.definition.sources}
        for table in self.source_tables:
            if table in self._start_recorded:
                continue
            try:
                self.dynamodb.put_item(
                    TableName=self.settings.control_table,
                    Item={**keys.mirror_start(physical_to_logical.get(table, table)),
                          "started_at": {"N": repr(round(self.clock(), 3))}},
                    ConditionExpression="attribute_not_exists(PK)",
                )
            except Exception as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    if self.follow and aws.is_transient(exc):
                        self.report.transient_faults += 1
                        return False
                    raise translate(exc, "record mirror start") from exc
            self._start_recorded.add(table)
        return True

    # ---------------------------------------------------------------- shards
    def _stream_arn(self, table: str) -> str:
        try:
            description = self.dynamodb.describe_table(TableName=table)["Table"]
        except Exception as exc:
            raise translate(exc, f"describe {table}") from exc
        arn = description.get("LatestStreamArn")
        spec = description.get("StreamSpecification") or {}
        if not arn or not spec.get("StreamEnabled"):
            raise StoreError(f"table {table} has no stream enabled (run: dynashift enable-streams)")
        return arn

    def _discover(self) -> None:
        with self._discover_lock:
            self._discover_locked()

    def _discover_locked(self) -> None:
        for table in self.source_tables:
            arn = self._stream_arn(table)
            checkpoints = self._load_checkpoints(arn)
            kwargs: dict[str, Any] = {"StreamArn": arn}
            while True:
                try:
                    description = self.streams.describe_stream(**kwargs)["StreamDescription"]
                except Exception as exc:
                    raise translate(exc, f"describe stream of {table}") from exc
                for shard in description["Shards"]:
                    shard_id = shard["ShardId"]
                    if shard_id in self.shards:
                        continue
                    state = ShardState(arn, shard_id, shard.get("ParentShardId"))
                    # `--from latest` applies to the shards that exist when the
                    # runner starts fresh. A shard born later (a split, a
                    # rollover), or whose parent a run already read, is read from
                    # its start, as Lambda does: LATEST would skip the records
                    # written to it before its first poll.
                    state.at_latest = (
                        self.start_from == "latest"
                        and not self._discovered
                        and not (state.parent_id and state.parent_id in checkpoints)
                    )
                    saved = checkpoints.get(shard_id)
                    if saved:
                        state.checkpoint = saved.get("sequence_number", {}).get("S")
                        state.finished = saved.get("finished", {}).get("BOOL", False)
                    self.shards[shard_id] = state
                last = description.get("LastEvaluatedShardId")
                if not last:
                    break
                kwargs["ExclusiveStartShardId"] = last
        self._discovered = True
        self._last_describe = self.clock()

    def _eligible(self, shard: ShardState) -> bool:
        if shard.finished:
            return False
        parent = self.shards.get(shard.parent_id) if shard.parent_id else None
        return parent is None or parent.finished

    def _iterator(self, shard: ShardState) -> str | None:
        if shard.checkpoint:
            kwargs = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": shard.checkpoint}
        elif shard.at_latest:
            # Not LATEST, whose position is unknown: read the shard to its end,
            # record that end as the drain's baseline (the records up to it are
            # not this consumer's), and start exactly after it.
            from shared.streams import drain

            end = drain.last_sequence(self.streams, shard.stream_arn, shard.shard_id)
            if end is None:
                kwargs = {"ShardIteratorType": "TRIM_HORIZON"}
            else:
                drain.record_baseline(self.settings, shard.stream_arn, shard.shard_id, end, dynamodb=self.dynamodb)
                kwargs = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": end}
                # Positioned: a later re-acquisition resumes after the baseline, never skips again.
                shard.checkpoint, shard.at_latest = end, False
        else:
            kwargs = {"ShardIteratorType": "TRIM_HORIZON"}
        try:
            return self.streams.get_shard_iterator(StreamArn=shard.stream_arn, ShardId=shard.shard_id, **kwargs)[
                "ShardIterator"
            ]
        except Exception as exc:
            if error_code(exc) in ("TrimmedDataAccessException", "ResourceNotFoundException") and shard.checkpoint:
                # The checkpoint fell off the 24 h window: everything left is
                # newer, so read all of it (never LATEST, which would skip it).
                shard.checkpoint = None
                shard.at_latest = False
                return self._iterator(shard)
            raise translate(exc, f"get iterator for shard {shard.shard_id}") from exc

    # ------------------------------------------------------------------ loop
    def run(self) -> RunnerReport:
        try:
            report = self._run()
            self._flush_checkpoints()
            return report
        except BaseException:
            with contextlib.suppress(Exception):  # what was applied stays applied; the error is the news
                self._flush_checkpoints()
            raise
        finally:
            if self._shard_pool is not None:
                self._shard_pool.shutdown(wait=True)
                self._shard_pool = None
            if self._sweep_pool is not None:
                self._sweep_pool.shutdown(wait=True)
                self._sweep_pool = None

    def _run(self) -> RunnerReport:
        started = self.clock()
        self._discover()
        while not self.stop_requested.is_set():
            if self.max_seconds is not None and self.clock() - started > self.max_seconds:
                break
            if self.clock() - self._last_describe > DESCRIBE_EVERY_S:
                self._survive(self._discover)
            worked = False
            active = [s for s in self.shards.values() if self._eligible(s)]
            now = self.clock()
            due = [s for s in active if s.retry_at <= now and s.next_poll_at <= now]
            if self.parallel_shards and len(due) > 1:
                worked = self._poll_all(due)
            else:
                for shard in due:
                    if self.stop_requested.is_set():
                        break
                    worked |= self._poll_surviving(shard)
            if not self.ready.is_set() and (not self.record_mirror_start or self._record_start()):
                self.ready.set()
            all_drained = all(s.drained for s in self.shards.values() if self._eligible(s))
            # A shard that just delivered a batch, waiting for its next poll: busy, not idle.
            pacing = [s.next_poll_at for s in active if not s.drained and s.retry_at <= self.clock() < s.next_poll_at]
            self._survive(lambda: self._maybe_sweep(idle=not worked and not pacing))
            if not worked and pacing:
                time.sleep(max(0.0, min(pacing) - self.clock()))
                continue
            if not worked:
                self._survive(self._flush_checkpoints)
                if all_drained and not self.follow and not any(s.failures for s in active):
                    break
                time.sleep(IDLE_POLL_S)
        self._final_sweep()
        return self.report

    def _poll_surviving(self, shard: ShardState) -> bool:
        try:
            return self._poll(shard)
        except Exception as exc:
            if not (self.follow and aws.is_transient(exc)):
                raise
            # An outage (engine restarting, network, 5xx storms) in the
            # middle of a batch. The in-memory checkpoint always names
            # the last record fully applied, so re-derive the iterator
            # from it (redelivery, never a skip) and back off.
            with self._lock:
                self.report.transient_faults += 1
            shard.iterator = None
            self._backoff(shard)
            return False

    def _poll_all(self, shards: list[ShardState]) -> bool:
        """One round: every shard polled (and its batch delivered) at once; waits for all of them."""
        if self._shard_pool is None:
            self._shard_pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="dynashift-shard")
        futures = [self._shard_pool.submit(self._poll_surviving, shard) for shard in shards]
        concurrent.futures.wait(futures)
        worked = False
        for future in futures:
            worked |= future.result()  # the first error, once none is left in flight
        return worked

    def _survive(self, step: Any) -> None:
        """Run a housekeeping step; in follow mode a transient fault only postpones it."""
        try:
            step()
        except Exception as exc:
            if not (self.follow and aws.is_transient(exc)):
                raise
            self.report.transient_faults += 1
            self._last_describe = self.clock()

    def _poll(self, shard: ShardState) -> bool:
        """Read and deliver one batch from a shard. True if it did any work."""
        shard.next_poll_at = self.clock() + POLL_INTERVAL_S
        if shard.iterator is None:
            shard.iterator = self._iterator(shard)
        records: list[dict[str, Any]] = []
        deadline = self.clock() + self.settings.mirror_batching_window_s
        next_iterator = shard.iterator
        while next_iterator and len(records) < self.settings.mirror_batch_size:
            try:
                page = self.streams.get_records(
                    ShardIterator=next_iterator, Limit=min(1000, self.settings.mirror_batch_size - len(records))
                )
            except Exception as exc:
                if error_code(exc) in ("ExpiredIteratorException", "TrimmedDataAccessException"):
                    with self._lock:
                        self.report.expired_iterators += 1
                    shard.iterator = None
                    return True
                if aws.is_transient(exc):
                    self._backoff(shard)
                    return False
                raise translate(exc, f"read shard {shard.shard_id}") from exc
            next_iterator = page.get("NextShardIterator")
            records.extend(page.get("Records", []))
            if records:
                # Positioned now. Should the iterator have to be re-acquired before
                # a checkpoint exists (expiry, a failed first batch), LATEST would
                # skip these records; TRIM_HORIZON redelivers instead of losing.
                shard.at_latest = False
            if not page.get("Records") and (not records or self.clock() >= deadline):
                break
            if self.clock() >= deadline and records:
                break
            if not page.get("Records"):
                # Waiting for the batching window to fill the batch: poll at
                # Lambda's pace, not in a hot loop (GetRecords allows 5 calls/s per shard).
                time.sleep(min(IDLE_POLL_S, deadline - self.clock()))
        if not records:
            shard.iterator = next_iterator
            shard.drained = True
            if next_iterator is None:
                self._finish(shard)
                return True
            return False
        shard.drained = False
        event_records = [lambda_record(r, shard.stream_arn, self.settings.effective_region) for r in records]
        self._deliver(shard, event_records, next_iterator)
        return True

    def _deliver(self, shard: ShardState, records: list[dict[str, Any]], next_iterator: str | None) -> None:
        now = self.clock()
        try:
            response = self.handler({"Records": records}, LocalContext())
            failures = [f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])]
        except Exception as exc:
            if not aws.is_transient(exc) and "BatchProcessingError" not in type(exc).__name__:
                raise
            failures = [records[0]["dynamodb"]["SequenceNumber"]]
        with self._lock:
            self.report.batches += 1
        if failures:
            # Lambda's rule: checkpoint just before the lowest failed record and
            # redeliver from it, in order, after a backoff.
            order = {r["dynamodb"]["SequenceNumber"]: i for i, r in enumerate(records)}
            first_failed = min(order.get(seq, 0) for seq in failures)
            if first_failed > 0:
                shard.checkpoint = records[first_failed - 1]["dynamodb"]["SequenceNumber"]
                self._save_checkpoint(shard)
            with self._lock:
                self.report.records += first_failed
                self.report.redelivered += len(records) - first_failed
                self.report.failed_batches += 1
            shard.iterator = self.streams.get_shard_iterator(
                StreamArn=shard.stream_arn,
                ShardId=shard.shard_id,
                ShardIteratorType="AT_SEQUENCE_NUMBER",
                SequenceNumber=records[first_failed]["dynamodb"]["SequenceNumber"],
            )["ShardIterator"]
            self._backoff(shard)
            return
        shard.failures = 0
        shard.retry_at = 0.0
        shard.checkpoint = records[-1]["dynamodb"]["SequenceNumber"]
        shard.iterator = next_iterator
        with self._lock:
            for record in records:
                created = record["dynamodb"].get("ApproximateCreationDateTime")
                if created is not None:
                    self.report.lag_ms.append(max(0.0, (now - float(created)) * 1000))
            self.report.records += len(records)
        if next_iterator is None:
            self._finish(shard)
        elif self.clock() - shard.saved_at >= CHECKPOINT_EVERY_S:
            self._save_checkpoint(shard)
        if self.on_batch:
            with self._lock:
                self.on_batch(self.report)

    def _finish(self, shard: ShardState) -> None:
        shard.finished = True
        shard.iterator = None
        with self._lock:
            self.report.shards_finished += 1
        self._save_checkpoint(shard)
        self._discover()

    def _backoff(self, shard: ShardState) -> None:
        shard.failures += 1
        shard.retry_at = self.clock() + min(MAX_BACKOFF_S, 0.1 * 2 ** (shard.failures - 1))

    # -------------------------------------------------------------- tombstones
    def _tombstone_life_s(self) -> float:
        return self.settings.stale_write_horizon_s + self.settings.consistency_margin_s

    def _maybe_sweep(self, *, idle: bool) -> None:
        """Start a sweep in the background every `SWEEP_EVERY_S` (one at a time); collect the last one's result.

        A failed sweep raises here, in the polling loop, as it did when sweeps ran inline.
        """
        if self.sweeper is None:
            return
        if self._sweeping is not None:
            if not self._sweeping.done():
                return
            done, self._sweeping = self._sweeping, None
            self.report.tombstones_swept += done.result()
        if self.clock() - self._last_sweep < SWEEP_EVERY_S:
            return
        self._last_sweep = self.clock()
        if self._sweep_pool is None:
            self._sweep_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dynashift-sweep")
        self._sweeping = self._sweep_pool.submit(self.sweeper, self._tombstone_life_s())

    def _final_sweep(self) -> None:
        """Before exiting, wait until our newest tombstone has aged out, then sweep."""
        if self.sweeper is None:
            return
        if self._sweeping is not None:
            done, self._sweeping = self._sweeping, None
            self.report.tombstones_swept += done.result()
        wait = self.last_tombstone_at() + self._tombstone_life_s() - self.clock()
        if wait > 0:
            time.sleep(wait + 0.1)
        self.report.tombstones_swept += self.sweeper(self._tombstone_life_s())


def forward_runner(
    settings: Settings,
    engine: Any,
    handler: Handler,
    *,
    follow: bool = False,
    start_from: str = "trim-horizon",
    max_seconds: float | None = None,
    on_batch: Callable[[RunnerReport], None] | None = None,
) -> tuple[StreamRunner, TombstoneSweeper]:
    """The forward mirror's runner around `handler` (which applies through `engine`), with its
    tombstone sweeper; close the sweeper after the run. `run_forward_mirror` and the benchmark
    both build it here, so what is measured is what runs."""
    sweeper = TombstoneSweeper(settings, engine.definition)
    runner = StreamRunner(
        settings,
        handler,
        follow=follow,
        start_from=start_from,
        definition=engine.definition,
        sweeper=sweeper,
        last_tombstone_at=lambda: engine.last_tombstone_at,
        max_seconds=max_seconds,
        on_batch=on_batch,
        parallel_shards=True,  # MirrorEngine applies from several threads (one loop and client each)
    )
    return runner, sweeper


__all__ = ["RunnerReport", "ShardState", "StreamRunner", "forward_runner"]
