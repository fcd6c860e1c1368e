"""A router-honouring application, for the cutover tests, the demo and the bench.

`AppSimulator` plays the application during a migration: it produces the
logical operations of `shared.sc.workload.Workload` at a target rate and
performs each one where the *cached* mode flag says:

* `old`: the legacy write itself (PutItem / DeleteItem on a legacy table).
* `new`: the same logical operation in the new schema, in ONE transaction
  on sc-main: put `transform(item)`, delete the keys the item's previous
  version had and the new one hasn't; every action conditional on the key
  being free or owned by this very source item (what an application on the
  single-table design would do; a write that loses that condition is
  rejected, not acknowledged).
* `freeze`: the router (`shared.cutover.router.Router`, one per worker: each
  worker is an application instance with its own cached flag) raises
  `WritesFrozen`; the operation is retried with
  a short backoff and counted as *delayed* (with its delay).

Operations on one source item run in order on one worker thread; the others
run concurrently (`workers`). The simulator keeps the new schema's rules in
both modes: it never writes data the transform rejects or a repository name
that collides with a sibling's (quarantine and collisions are the mirror's
and the race tests' business, and a rejected write has no meaning here).

Every ACKNOWLEDGED write is recorded, so the expected state is the last
acknowledged version of each source item, and `diff_authoritative` compares
it with the authoritative side, both projected through the transform
(legacy tables in `old`, sc-main in `new`), which makes a legacy item
rebuilt by reverse replication (normalised values) comparable with the
application's raw write. Every *attempted* write is recorded too, as it
would appear in a stream image, for the no-echo audit (`StreamTap`).
"""

from __future__ import annotations

import queue
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from boto3.dynamodb.conditions import Attr

from shared.core import aws
from shared.core.aws import error_code
from shared.core.codec import from_stream_image, to_native, to_wire
from shared.core.definition import Item, MigrationDefinition, SourceRef, TargetKey, get_definition
from shared.core.errors import QuarantineError, WritesFrozen
from shared.core.settings import Settings
from shared.cutover.router import Router
from shared.protocol.apply import TOMBSTONE, is_tombstone
from shared.protocol.conditions import render
from shared.sc.workload import Operation, Workload
from shared.store.mode import Mode

FROZEN_BACKOFF_S = 0.05
QUEUE_DEPTH = 64

RouterFactory = Callable[[], Any]  # returns something with `write(legacy_fn, new_fn)`, like shared.cutover.router.Router


def _wire_round_trip(item: Item) -> Item:
    """The item as DynamoDB gives it back (ints become Decimals, ...)."""
    return to_native(to_wire(item))


@dataclass
class AppStats:
    generated: int = 0
    acknowledged: int = 0
    acknowledged_by_mode: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rejected: int = 0  # lost an ownership condition in `new` (not acknowledged)
    skipped: int = 0  # operations the simulated application would never attempt (bad data, collisions)
    errors: int = 0  # transient faults that made an operation give up (not acknowledged)
    delayed: int = 0  # operations that met `freeze`, or waited behind one that did
    delays_s: list[float] = field(default_factory=list)


class Rejected(Exception):
    """The new-schema write lost its ownership condition."""


@dataclass
class _Task:
    op: Operation
    ref: SourceRef
    created: float


class AppSimulator:
    def __init__(
        self,
        settings: Settings,
        *,
        rate_per_s: float = 200.0,
        seed: int = 1,
        workers: int = 4,
        router_factory: RouterFactory | None = None,
        frozen_backoff_s: float = FROZEN_BACKOFF_S,
    ) -> None:
        self.settings = settings
        self.definition: MigrationDefinition = get_definition(settings.migration)
        self.rate_per_s = rate_per_s
        self.workload = Workload(seed=seed)
        self.router_factory = router_factory or (lambda: Router(settings))
        self.frozen_backoff_s = frozen_backoff_s
        self.stats = AppStats()
        self.acked: dict[SourceRef, Item | None] = {}  # last acknowledged legacy-form item (None: deleted)
        self.attempted_legacy: dict[tuple[str, tuple[str, ...]], list[Item | None]] = defaultdict(list)
        self.attempted_target: dict[TargetKey, list[Item | None]] = defaultdict(list)
        self._generated: dict[SourceRef, Item | None] = {}  # the workload model as last accepted
        self._queues = [queue.Queue[_Task | None](QUEUE_DEPTH) for _ in range(workers)]
        self._running = threading.Event()  # generator may produce
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight = 0
        self._idle = threading.Condition(self._lock)
        self._threads = [
            threading.Thread(target=self._worker, args=(q,), daemon=True, name=f"app-{i}")
            for i, q in enumerate(self._queues)
        ]
        self._generator = threading.Thread(target=self._generate, daemon=True, name="app-gen")

    # ------------------------------------------------------------------ control
    def start(self) -> AppSimulator:
        for thread in self._threads:
            thread.start()
        self._running.set()
        self._generator.start()
        return self

    def pause(self, timeout_s: float = 60.0) -> None:
        """Stop producing operations and wait until every one in flight is done."""
        self._running.clear()
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._inflight and time.monotonic() < deadline:
                self._idle.wait(0.1)

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> AppStats:
        self.pause()
        self._stop.set()
        self._running.set()  # release the generator so it sees the stop
        self._generator.join()
        for q in self._queues:
            q.put(None)
        for thread in self._threads:
            thread.join()
        return self.stats

    # ---------------------------------------------------------------- generator
    def _generate(self) -> None:
        started = time.monotonic()
        produced = 0
        while not self._stop.is_set():
            if not self._running.is_set():
                self._running.wait()
                started, produced = time.monotonic(), 0  # a pause does not make a burst
                continue
            due = started + produced / self.rate_per_s
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if not self._running.is_set() or self._stop.is_set():
                continue
            op = self.workload.next()
            source = self.definition.source(op.table)
            ref = source.ref(op.key)
            if not self._acceptable(op, ref):
                self.stats.skipped += 1
                self._restore_model(ref)
                continue
            self._generated[ref] = op.item
            produced += 1
            self.stats.generated += 1
            with self._lock:
                self._inflight += 1
            index = zlib.crc32(ref.as_text().encode()) % len(self._queues)
            self._queues[index].put(_Task(op, ref, time.monotonic()))

    def _acceptable(self, op: Operation, ref: SourceRef) -> bool:
        """Would an application that honours the new schema attempt this write?"""
        if op.action != "put":
            return True
        try:
            targets = self.definition.transform(op.table, op.item)
        except QuarantineError:
            return False
        return self.workload.honours_new_schema(op, targets)

    def _restore_model(self, ref: SourceRef) -> None:
        self.workload.restore(ref.table, ref.key[0], self._generated.get(ref))

    # ------------------------------------------------------------------ workers
    def _worker(self, tasks: queue.Queue[_Task | None]) -> None:
        # One router per worker: each worker is an application instance with its own cache.
        client, router = aws.dynamodb(self.settings, max_attempts=2), self.router_factory()
        blocked_until = [0.0]  # when this worker's last frozen write got through
        while True:
            task = tasks.get()
            if task is None:
                return
            try:
                self._perform(client, router, task, blocked_until)
            finally:
                with self._idle:
                    self._inflight -= 1
                    self._idle.notify_all()

    def _perform(self, client: Any, router: Any, task: _Task, blocked_until: list[float]) -> None:
        first_frozen: float | None = None
        used: list[Mode] = []

        def legacy() -> None:
            used.append(Mode.OLD)
            self._write_legacy(client, task.op)

        def new() -> None:
            used.append(Mode.NEW)
            self._write_new(client, task.op, task.ref)

        while True:
            used.clear()
            try:
                router.write(legacy, new)
            except WritesFrozen:
                if first_frozen is None:
                    first_frozen = time.monotonic()
                if self._stop.is_set():
                    self.stats.errors += 1
                    return
                time.sleep(self.frozen_backoff_s)
                continue
            except Rejected:
                self.stats.rejected += 1
                return
            except Exception as exc:  # noqa: BLE001  (sorted by is_transient: an application retries those)
                if aws.is_transient(exc) and not self._stop.is_set():
                    time.sleep(self.frozen_backoff_s)
                    continue
                self.stats.errors += 1
                return
            break
        now = time.monotonic()
        if first_frozen is not None:
            blocked_until[0] = now
        if first_frozen is not None or task.created < blocked_until[0]:
            # It met the freeze, or arrived while this worker was held by it: delayed either way.
            self.stats.delayed += 1
            self.stats.delays_s.append(now - (first_frozen if first_frozen is not None else task.created))
        self.acked[task.ref] = _wire_round_trip(task.op.item) if task.op.action == "put" else None
        self.stats.acknowledged += 1
        self.stats.acknowledged_by_mode[str(used[-1])] += 1

    def _write_legacy(self, client: Any, op: Operation) -> None:
        table = self.settings.physical_name(op.table)
        key = tuple(str(v) for v in op.key.values())
        if op.action == "put":
            self.attempted_legacy[(op.table, key)].append(_wire_round_trip(op.item))
            client.put_item(TableName=table, Item=to_wire(op.item))
        else:
            self.attempted_legacy[(op.table, key)].append(None)
            client.delete_item(TableName=table, Key=to_wire(op.key))

    def _write_new(self, client: Any, op: Operation, ref: SourceRef) -> None:
        previous = self.acked.get(ref)
        targets = self.definition.transform(op.table, op.item) if op.action == "put" else []
        new_keys = {self.definition.target_key(t) for t in targets}
        old_keys = self.definition.candidate_keys(op.table, previous) if previous else set()
        key_attr = self.definition.target_key_attrs[0]
        mine = render(Attr(key_attr).not_exists() | Attr("entity").eq(TOMBSTONE) | self.definition.owner_condition(ref))
        owned = render(Attr(key_attr).not_exists() | self.definition.owner_condition(ref))
        actions: list[dict[str, Any]] = []
        for item in targets:
            actions.append({"Put": {"TableName": self.settings.target_table, "Item": to_wire(item), **mine}})
        for key in sorted(old_keys - new_keys):
            key_item = dict(zip(self.definition.target_key_attrs, key, strict=True))
            actions.append({"Delete": {"TableName": self.settings.target_table, "Key": to_wire(key_item), **owned}})
        if not actions:
            return
        for item in targets:
            self.attempted_target[self.definition.target_key(item)].append(_wire_round_trip(item))
        for key in old_keys - new_keys:
            self.attempted_target[key].append(None)
        try:
            client.transact_write_items(TransactItems=actions)
        except Exception as exc:
            if error_code(exc) == "TransactionCanceledException":
                codes = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]  # type: ignore[attr-defined]
                if "ConditionalCheckFailed" in codes:
                    raise Rejected(str(codes)) from exc
                raise aws.translate(exc, "application write") from exc  # conflicts: transient, retried
            raise

    # --------------------------------------------------------------- expectation
    def expected_targets(self) -> dict[TargetKey, Item]:
        """The target projection of every last acknowledged write."""
        expected: dict[TargetKey, Item] = {}
        for ref, item in self.acked.items():
            if item is None:
                continue
            for target in self.definition.transform(ref.table, item):
                expected[self.definition.target_key(target)] = target
        return expected

    @property
    def delayed_median_s(self) -> float | None:
        values = sorted(self.stats.delays_s)
        return values[len(values) // 2] if values else None


@dataclass
class AuthoritativeDiff:
    mode: Mode
    items: int = 0
    missing: list[TargetKey] = field(default_factory=list)
    extra: list[TargetKey] = field(default_factory=list)
    mismatched: list[TargetKey] = field(default_factory=list)
    untransformable: list[SourceRef] = field(default_factory=list)
    leftover: list[TargetKey] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.mismatched or self.untransformable or self.leftover)

    def summary(self) -> str:
        return (
            f"{self.mode}: items={self.items} missing={len(self.missing)} extra={len(self.extra)} "
            f"mismatched={len(self.mismatched)} untransformable={len(self.untransformable)} "
            f"leftover={len(self.leftover)} samples={[*self.missing[:3], *self.extra[:3], *self.mismatched[:3]]}"
        )


def _scan(client: Any, table: str) -> list[Item]:
    items: list[Item] = []
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        items.extend(to_native(i) for i in page["Items"])
    return items


def diff_authoritative(settings: Settings, mode: Mode, expected: dict[TargetKey, Item]) -> AuthoritativeDiff:
    """Compare the authoritative side for `mode` with the expected target projection."""
    definition = get_definition(settings.migration)
    client = aws.dynamodb(settings)
    result = AuthoritativeDiff(mode)
    actual: dict[TargetKey, Item] = {}
    if mode == Mode.OLD:
        for source in definition.sources:
            for item in _scan(client, settings.physical_name(source.name)):
                result.items += 1
                try:
                    targets = definition.transform(source.name, item)
                except QuarantineError:
                    result.untransformable.append(source.ref(item))
                    continue
                actual.update((definition.target_key(t), t) for t in targets)
    else:
        for item in _scan(client, settings.target_table):
            result.items += 1
            if is_tombstone(item):
                result.leftover.append(definition.target_key(item))
            else:
                actual[definition.target_key(item)] = item
    for key, item in expected.items():
        if key not in actual:
            result.missing.append(key)
        elif actual[key] != item:
            result.mismatched.append(key)
    result.extra = [key for key in actual if key not in expected]
    return result


# ============================================================================ no-echo audit
class StreamTap:
    """Reads a table's stream incrementally (all shards), for the no-echo audit.

    Each `read_new()` returns the records added since the previous call, as
    (event name, keys, new image) with native values. It uses fresh
    iterators from the last sequence number read, so it survives DynamoDB
    Local's invalidated iterators on idle shards.
    """

    def __init__(self, settings: Settings, table: str) -> None:
        self.settings = settings
        self.table = table
        self.client = aws.dynamodb(settings)
        self.streams = aws.streams(settings)
        self.arn = self.client.describe_table(TableName=table)["Table"]["LatestStreamArn"]
        self.last: dict[str, str] = {}

    def read_new(self) -> list[tuple[str, Item, Item | None]]:
        out: list[tuple[str, Item, Item | None]] = []
        shards = self.streams.describe_stream(StreamArn=self.arn)["StreamDescription"]["Shards"]
        for shard in shards:
            shard_id = shard["ShardId"]
            if shard_id in self.last:
                kwargs = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": self.last[shard_id]}
            else:
                kwargs = {"ShardIteratorType": "TRIM_HORIZON"}
            iterator = self.streams.get_shard_iterator(StreamArn=self.arn, ShardId=shard_id, **kwargs)["ShardIterator"]
            while iterator:
                page = self.streams.get_records(ShardIterator=iterator, Limit=1000)
                records = page.get("Records", [])
                for record in records:
                    body = record["dynamodb"]
                    new = from_stream_image(body["NewImage"]) if "NewImage" in body else None
                    out.append((record["eventName"], from_stream_image(body["Keys"]), new))
                    self.last[shard_id] = body["SequenceNumber"]
                if not records:
                    break
                iterator = page.get("NextShardIterator")
        return out


def unexplained_records(
    records: list[tuple[str, Item, Item | None]],
    attempted: dict[Any, list[Item | None]],
    key_of: Callable[[Item], Any],
) -> list[tuple[str, Item]]:
    """Records that no application write explains (an echo, if found while the app owned that side)."""
    unexplained = []
    for event, keys, new_image in records:
        candidates = attempted.get(key_of(keys), [])
        if event == "REMOVE":
            if None not in candidates:
                unexplained.append((event, keys))
        elif new_image not in candidates:
            unexplained.append((event, keys))
    return unexplained




# ============================================================================ both mirrors
class ConsumerThread:
    """One local stream consumer (`forward` or `reverse`) in follow mode, in a thread.

    Like `shared.sim.live.MirrorThread`, for either direction: the cutover needs
    both consumers running all the time (each gated on the mode).
    """

    def __init__(self, settings: Settings, direction: str, *, start_from: str = "trim-horizon") -> None:
        self.settings = settings
        self.direction = direction
        self.start_from = start_from
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.report: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"mirror-{direction}")

    def _run(self) -> None:
        from shared.sim import local_lambda

        run = local_lambda.run_forward_mirror if self.direction == "forward" else local_lambda.run_reverse_mirror
        try:
            self.report = run(self.settings, follow=True, start_from=self.start_from, stop_event=self.stop_event,
                              ready_event=self.ready)
        except BaseException as exc:  # noqa: BLE001  (surfaced by start()/stop())
            self.error = exc

    def start(self, wait_ready_s: float = 30.0) -> ConsumerThread:
        self._thread.start()
        self.ready.wait(wait_ready_s)
        if self.error:
            raise self.error
        return self

    def stop(self) -> Any:
        self.stop_event.set()
        self._thread.join()
        if self.error:
            raise self.error
        return self.report


# ============================================================================ the rig
@dataclass
class SwitchOutcome:
    """One switch as the rig saw it, checked after the application paused."""

    op: str
    outcome: str
    mode: Mode
    freeze_window_s: float | None
    delayed_writes: int  # application operations that met `freeze` during this switch
    delays_s: list[float] = field(default_factory=list)  # how long each of them waited
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds after the freeze write
    diff: AuthoritativeDiff | None = None
    echoes: list[tuple[str, str, Item]] = field(default_factory=list)  # (side, event, keys)
    error: str | None = None


class SwitchRig:
    """Tables, both mirrors, the application and (optionally) the no-echo audit, for tests and the bench.

    The audit reads both streams at every change of the side the
    application owns, *just before* the flip is written: at that moment the
    writes are frozen and both consumers are drained, so every record read
    belongs to the phase that ends. During a phase in which the application
    owns the legacy tables, every legacy stream record must be one of its
    writes; while it owns sc-main, every sc-main record must be one of its
    writes. Anything else was written by a mirror into the side the
    application owned: an echo.
    """

    def __init__(self, settings: Settings, *, rate_per_s: float = 200.0, seed: int = 1, audit: bool = True,
                 workers: int = 4, consumer: Callable[[Settings, str], Any] | None = None) -> None:
        self.settings = settings
        # Who consumes the streams: the local runners by default; a test may hand in
        # a stand-in for Lambda's event source mappings (anything with start() and stop()).
        self.consumer = consumer or ConsumerThread
        self.rate_per_s = rate_per_s
        self.seed = seed
        self.audit = audit
        self.workers = workers
        self.echoes: list[tuple[str, str, Item]] = []
        self.audited_records = {"legacy": 0, "sc-main": 0}
        self.consumers: list[Any] = []

    def __enter__(self) -> Self:
        from shared.ops.tables import create_tables

        create_tables(self.settings, with_sources=True)
        definition = get_definition(self.settings.migration)
        self.definition = definition
        self.taps = {
            "legacy": [StreamTap(self.settings, self.settings.physical_name(s.name)) for s in definition.sources],
            "sc-main": [StreamTap(self.settings, self.settings.target_table)],
        }
        self.consumers = [self.consumer(self.settings, d).start() for d in ("forward", "reverse")]
        self.app = AppSimulator(self.settings, rate_per_s=self.rate_per_s, seed=self.seed, workers=self.workers)
        self.app.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.app.stop()
        for consumer in self.consumers:
            consumer.stop()

    # ------------------------------------------------------------------ switching
    def ports(self) -> Any:
        from shared.cutover.aws_ports import AwsPorts

        rig = self

        class AuditedPorts(AwsPorts):
            def write_mode(self, state: Any, expected_version: int) -> Any:
                current = self.read_mode()
                if rig.audit and state.mode != Mode.FREEZE and current.mode == Mode.FREEZE:
                    rig.close_phase(current.origin)
                return super().write_mode(state, expected_version)

        return AuditedPorts(self.settings)

    def switch(self, which: Any, **kwargs: Any) -> SwitchOutcome:
        """Run a cutover or rollback (or `resume=True`) and check the result."""
        from shared.cutover.operations import read_mode as read_flag
        from shared.cutover.operations import run_switch
        from shared.cutover.protocol import CutoverError, SwitchAborted

        delayed_before, delays_before = self.app.stats.delayed, len(self.app.stats.delays_s)
        kwargs.setdefault("gate_checks", local_gate)
        error, timings = None, {}
        try:
            report = run_switch(self.settings, which, ports=self.ports(), **kwargs)
            op, outcome, window, timings = report.op, report.outcome, report.freeze_window_s, report.timings
        except SwitchAborted as exc:  # froze, then went back: the freeze happened and is measured
            window = read_flag(self.settings).extra.get("freeze_window_s")
            op, outcome, error = which.op, "aborted", str(exc)
            window = None if window is None else float(window)
        except CutoverError as exc:  # refused before freezing: no freeze at all
            op, outcome, window, error = which.op, "refused", None, str(exc)
        # Writes delayed by this freeze finish once the application's cache shows the new mode.
        time.sleep(self.settings.mode_cache_age_s + 0.2)
        mode = read_flag(self.settings).mode
        result = SwitchOutcome(op, outcome, mode, window, self.app.stats.delayed - delayed_before,
                               delays_s=self.app.stats.delays_s[delays_before:], timings=timings, error=error)
        self.check(result)
        return result

    def check(self, outcome: SwitchOutcome | None = None) -> AuthoritativeDiff:
        """Pause the application, compare the authoritative side with every acknowledged write, resume."""
        from shared.cutover.operations import read_mode as read_flag

        self.app.pause()
        try:
            mode = read_flag(self.settings).mode
            diff = diff_authoritative(self.settings, mode, self.app.expected_targets()) if mode != Mode.FREEZE \
                else AuthoritativeDiff(mode)
        finally:
            self.app.resume()
        if outcome is not None:
            outcome.diff = diff
            outcome.echoes = list(self.echoes)
        return diff

    # ------------------------------------------------------------------- the audit
    def close_phase(self, owner: Mode) -> None:
        """Read both streams; check the side `owner` names against the application's writes."""
        legacy = [(tap, tap.read_new()) for tap in self.taps["legacy"]]
        target = [record for tap in self.taps["sc-main"] for record in tap.read_new()]
        if owner == Mode.OLD:
            for tap, records in legacy:
                logical = next(s for s in self.definition.sources
                               if self.settings.physical_name(s.name) == tap.table)
                self.audited_records["legacy"] += len(records)
                for event, keys in unexplained_records(
                    records, self.app.attempted_legacy,
                    lambda k, lg=logical: (lg.name, tuple(str(k[a]) for a in lg.key_attrs)),
                ):
                    self.echoes.append(("legacy", event, keys))
        else:
            self.audited_records["sc-main"] += len(target)
            for event, keys in unexplained_records(target, self.app.attempted_target, self.definition.target_key):
                self.echoes.append(("sc-main", event, keys))


def local_gate(settings: Settings, switch: Any, state: Any, *, max_lag_s: float, ports: Any, **_: Any) -> list[Any]:
    """The gate without verify and backup (no verifier run, no backups on DynamoDB Local): quarantine
    (accepted: the simulated application writes no bad data, so it stays empty) and both mirrors' lag."""
    from shared.cutover.gate import check_lag, check_quarantine

    return [check_quarantine(settings, accept=True), *(check_lag(ports, d, max_lag_s) for d in switch.drains)]


__all__ = [
    "AppSimulator",
    "AppStats",
    "AuthoritativeDiff",
    "ConsumerThread",
    "StreamTap",
    "SwitchOutcome",
    "SwitchRig",
    "diff_authoritative",
    "local_gate",
    "unexplained_records",
]
