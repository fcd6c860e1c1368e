"""The backfill worker: claims units and copies them, race-safely, politely.

One worker process runs several units at once on one asyncio loop and one
aiobotocore client. Before its first read it registers as a *stale writer*
(so the mirror starts leaving tombstones) and waits out the fence; it keeps
that registration and its unit leases alive with heartbeats, and removes the
registration when it leaves. Each heartbeat also publishes `reads_since`, the
read time of the oldest page still being written (a write issued within the
horizon may land much later): the tombstone sweeper keeps every tombstone
such a write could still need (`shared.protocol.apply`).

A unit is a scan segment (eventually consistent `Scan` with `Segment` /
`TotalSegments`, pages sized so they are written well within
`stale_write_horizon_s` of being read) or an export data file. Each page is
transformed and written by `BackfillWriter`, then checkpointed; a page read
too long ago (throttling, a slow rate) is re-read instead of written. Bad
rows go to quarantine, as in the mirror.

Export items are images from the export's point in time, possibly hours old.
A create-only write of such an image cannot be protected against a delete
that happened since (tombstones exist only while a backfill runs), so each
chunk is re-read by key (strongly consistent BatchGetItem) right before it is
written, and the fresh images are what is written.

Throttling and 5xx answers are retried per request by botocore's standard
retry mode on DynamoDB's own delays (`open_client`, `backfill.ratelimit`:
jittered, from 50 ms), then by our own exponential backoff on a page. A
table that *keeps* throttling gets fewer writes at once: the worker's
`ThrottleGovernor` halves its write slots while a tenth or more of the
recent answers are throttled, and regrows them as soon as that stops. Not
botocore's adaptive mode: it cuts the rate of the whole client on every
single throttle, renewals and checkpoints included, and with a few percent
of the requests throttled it held the backfill to a fraction of its speed
for the rest of the run (issue 14, bench/backfill_faults_bench.py). `--rate`
caps source items per second, split evenly across worker processes. Nothing
here ever writes to a legacy table.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from backfill.lease import PAGE_EPOCH, LeaseLapsed, PageLease, StaleWriterLease
from backfill.ratelimit import RateLimiter, ThrottleGovernor, install_retries
from backfill.units import JUST_READ_S, Run, Unit, UnitStore, UnitView
from backfill.writer import BackfillWriter, WriteCounts
from shared.core import aws, capacity
from shared.core.codec import from_dynamodb_json, to_native, to_wire
from shared.core.definition import MigrationDefinition, get_definition
from shared.core.errors import TransientError
from shared.core.settings import Settings
from shared.protocol.apply import Applier, gather_settled
from shared.store.control import ControlStore, StaleWriterRegistry

LEASE_S = 30.0
# The worker's client (`open_client`). Standard retries, not adaptive: see the module
# note; the governor does the adapting.
CLIENT_OPTIONS: dict[str, Any] = {"pool": 64, "max_attempts": 10, "retry_mode": "standard"}
WRITES_IN_FLIGHT = 16  # the governor's ceiling
MAX_PAGE_RETRIES = 8
# Scan pages between their read and their last write, per worker (see `_page_slots`).
PAGE_SLOTS = 2
# Units a worker holds at once, across tables (see `_unit_slots`): one more than
# its page slots, so no slot idles while a unit saves its checkpoint.
UNITS_HELD = PAGE_SLOTS + 1
FIRST_PAGE_ITEMS = 100
MIN_PAGE_ITEMS = 10


@dataclass
class WorkerOptions:
    tables: list[str]  # logical source tables
    write_mode: str = "insert"
    rate_per_s: float | None = None  # for this process
    units_in_flight: int = 4
    page_items: int = 500
    lease_s: float = LEASE_S
    export: Any = None  # backfill.export.ExportLocation when the source is an export


@dataclass
class WorkerReport:
    owner: str
    units_completed: int = 0
    counts: WriteCounts = field(default_factory=WriteCounts)
    read: int = 0


async def _always_open() -> bool:
    return True


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, settings: Settings, options: WorkerOptions, client: Any, *, owner: str | None = None) -> None:
        self.settings = settings
        self.options = options
        self.client = client
        self.owner = owner or new_owner()
        self.definition: MigrationDefinition = get_definition(settings.migration)
        self.units = UnitStore(client, settings.control_table)
        self.registry = StaleWriterRegistry(client, settings.control_table)
        self.applier = Applier(settings, self.definition, client, ControlStore(client, settings.control_table))
        # Every write holds one of its slots; it sees their answers on the client.
        self.governor = ThrottleGovernor(WRITES_IN_FLIGHT)
        self.governor.install(client)
        self.writer = BackfillWriter(self.applier, options.write_mode, governor=self.governor)
        self.limiter = RateLimiter(options.rate_per_s)
        self.report = WorkerReport(self.owner)
        self.active: dict[str, Unit] = {}
        self._taken: dict[str, set[str]] = {}  # per table: units a unit loop of this worker claims or holds
        self.views: dict[str, UnitView] = {}  # per table: the unit list its unit loops (and a progress display) share
        # The stale-writer lease every page request is held to: `run` takes its
        # own; a Lambda unit sets its run's registration (`backfill.lambda_unit`).
        self.lease: PageLease | None = None
        # Pages being read or written -> when their read began. The heartbeat
        # publishes the oldest as the lease's `reads_since`: the tombstone
        # sweeper keeps every tombstone a write of these pages could still need.
        self._pages_in_flight: dict[object, float] = {}
        # Asked before every page; False stops the unit after its last checkpoint
        # (backfill.lambda_unit closes it near the Lambda's time limit).
        self.page_gate: Callable[[], Awaitable[bool]] = _always_open
        # Reading must not outrun writing. An item written later than
        # `stale_write_horizon_s` after its read costs a validated write (a
        # source read, a 2x-WCU transaction and a control-table delete) instead
        # of one conditional put; with every unit in flight reading a full page
        # at once, most items of a run ended up there (bench/backfill_bench.py).
        # So at most PAGE_SLOTS scan pages are between read and written, and the
        # page size follows the measured write time (`_adapt_page`).
        self._page_slots = asyncio.Semaphore(PAGE_SLOTS)
        # Units held at once, across tables: about as many as can have a page in
        # flight. More only hoarded leases: a second `backfill run` started
        # beside this one found every unit taken and idle (`_unit_loop`).
        self._unit_slots = asyncio.Semaphore(UNITS_HELD)
        self._scan_page_items = float(min(options.page_items, FIRST_PAGE_ITEMS))

    # -------------------------------------------------------------- lifecycle
    async def run(self) -> WorkerReport:
        # Registering starts the fence: the mirror re-reads the registry at least
        # every stale_writer_refresh_s, so after it every removal the mirror makes
        # leaves a tombstone. The lease then holds every page request until then.
        self.lease = lease = StaleWriterLease(
            self.registry,
            self.owner,
            lease_s=self.options.lease_s,
            fence_s=self.settings.stale_writer_refresh_s + self.settings.consistency_margin_s,
            guard_s=self.settings.consistency_margin_s,
        )
        with capacity.scope("backfill"):
            return await self._run_leased(lease)

    async def _run_leased(self, lease: StaleWriterLease) -> WorkerReport:
        await lease.renew()
        lease.install(self.client)
        heartbeat = asyncio.create_task(self._heartbeats(lease))
        try:
            runs = [run for run in [await self.units.load(t) for t in self.options.tables] if run is not None]
            # Settled: the lease is closed below only once no unit loop can still write.
            await gather_settled(
                *(self._unit_loop(run) for run in runs for _ in range(self.options.units_in_flight))
            )
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await lease.close()
        return self.report

    async def _heartbeats(self, lease: StaleWriterLease) -> None:
        failed = False
        while True:
            await asyncio.sleep(lease.renew_in(failed))
            # All renewals at once: a round must cost one round trip however many
            # units are in flight, or under load (slow or rate-limited requests)
            # leases lapse while their workers are alive, and live workers keep
            # taking units from each other, each losing its unsaved page.
            units = list(self.active.values())
            renewal, *renewed = await asyncio.gather(
                lease.renew(self._reads_since()),
                *(self.units.heartbeat(unit, self.owner, self.options.lease_s) for unit in units),
                return_exceptions=True,
            )
            errors = [r for r in (renewal, *renewed) if isinstance(r, BaseException)]
            for error in errors:
                if not aws.is_transient(error):
                    lease.broken = error  # every page stops with it
                    raise error
            # A throttled or failed round is retried at once, not a third of a lease later.
            failed = bool(errors)
            for unit, ok in zip(units, renewed, strict=True):
                if ok is False:
                    self.active.pop(unit.sk + unit.table, None)

    async def _unit_loop(self, run: Run) -> None:
        taken = self._taken.setdefault(run.table, set())  # shared by this table's unit loops
        view = self.views.setdefault(run.table, UnitView(self.units, run.table))  # and so is this
        while True:
            # A unit is claimed only when it can be worked: a unit held while its
            # loop waits for a page slot is one another process could be scanning.
            async with self._unit_slots:
                unit = await self.units.claim(run, self.owner, self.options.lease_s, taken=taken, view=view)
                if unit is not None:
                    self.active[unit.sk + unit.table] = unit
                    try:
                        completed = await self.process_unit(run, unit)
                    finally:
                        self.active.pop(unit.sk + unit.table, None)
                        taken.discard(unit.sk)
                    if completed:
                        self.report.units_completed += 1
                    continue
            current = await view.units(within_s=JUST_READ_S)  # the claim above has mostly just read it
            others = [u for u in current if u.status != "done" and u.owner != self.owner]
            if not others:
                return  # all done, or only our own units are still running
            # Units leased by other workers: one may be dead; wait for its lease to expire.
            wait = min(u.lease_until for u in others) - time.time()
            await asyncio.sleep(min(max(wait, 0.2), 5.0))

    async def process_unit(self, run: Run, unit: Unit) -> bool:
        """Work a claimed unit from its checkpoint. True once done; False if the
        lease was lost or `page_gate` closed (the checkpoint is saved either way).
        The capacity units it consumes add up in `unit.usage`, saved with each checkpoint."""
        with capacity.scope("backfill", into=unit.usage):
            if unit.kind == "file":
                return await self._process_file(unit)
            return await self._process_segment(run, unit)

    # ---------------------------------------------------------------- segments
    async def _process_segment(self, run: Run, unit: Unit) -> bool:
        physical = self.settings.physical_name(unit.table)
        source = self.definition.source(unit.table)
        while True:
            if not await self.page_gate():
                return False
            kwargs: dict[str, Any] = {
                "TableName": physical,
                "Segment": unit.number,
                "TotalSegments": run.segments,
            }
            if unit.cursor:
                kwargs["ExclusiveStartKey"] = unit.cursor
            async with self._page_slots:
                kwargs["Limit"] = self._segment_page_items()  # sized when the page may start
                try:
                    async with self._page_in_flight():
                        page, read_at = await self._with_backoff(
                            lambda: self.client.scan(**kwargs), f"scan {physical}"
                        )
                        # DynamoDB JSON from `open_client`'s raw pages; from_dynamodb_json reads a
                        # parsed page too (a client without the hook).
                        items = [from_dynamodb_json(raw) for raw in page.get("Items", [])]
                        await self._acquire(len(items))
                        counts = await self._with_backoff(
                            lambda: self.writer.write([(source.ref(i), i) for i in items], read_at),
                            f"write {physical}",
                        )
                except LeaseLapsed:
                    continue  # read the page again, in the new epoch
                self._adapt_page(len(items), time.time() - read_at)
            unit.cursor = page.get("LastEvaluatedKey")
            self._count(unit, len(items), counts[0])
            done = unit.cursor is None
            if not await self.units.checkpoint(unit, self.owner, done=done):
                return False  # lease lost: someone else owns the unit now
            if done:
                return True

    # ------------------------------------------------------------------- files
    async def _process_file(self, unit: Unit) -> bool:
        while True:
            try:
                return await self._process_file_from_checkpoint(unit)
            except LeaseLapsed:
                continue  # from the last checkpointed line, in the new epoch

    async def _process_file_from_checkpoint(self, unit: Unit) -> bool:
        from backfill.export import iter_file

        source = self.definition.source(unit.table)
        start = int(unit.cursor or 0)
        async for line, items in iter_file(
            self.options.export, unit.file, self.settings, start_line=start, chunk=self._page_items()
        ):
            if not await self.page_gate():
                return False
            await self._acquire(len(items))
            async with self._page_in_flight():
                fresh, read_at = await self._with_backoff(
                    lambda: self._reread(unit.table, items), "re-read exported keys"
                )
                counts = await self._with_backoff(
                    lambda: self.writer.write([(source.ref(i), i) for i in fresh], read_at), "write export items"
                )
            unit.cursor = line
            self._count(unit, len(items), counts[0])
            if not await self.units.checkpoint(unit, self.owner):
                return False
        return await self.units.checkpoint(unit, self.owner, done=True)

    async def _reread(self, table: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Strongly consistent current images of exported keys (gone = deleted since)."""
        source = self.definition.source(table)
        physical = self.settings.physical_name(table)
        fresh: list[dict[str, Any]] = []
        keys = [to_wire({a: item[a] for a in source.key_attrs}) for item in items]
        for start in range(0, len(keys), 100):
            request: dict[str, Any] = {physical: {"Keys": keys[start : start + 100], "ConsistentRead": True}}
            while request:
                response = await self.client.batch_get_item(RequestItems=request)
                fresh.extend(to_native(raw) for raw in response.get("Responses", {}).get(physical, []))
                request = response.get("UnprocessedKeys") or {}
                if request:
                    await asyncio.sleep(0.1)
        return fresh

    # ----------------------------------------------------------------- helpers
    @contextlib.asynccontextmanager
    async def _page_in_flight(self) -> AsyncIterator[None]:
        """Around a page's read and all its writes (retries included). Under a
        lease, every request inside is held to the epoch the page was read in."""
        epoch = await self.lease.ready() if self.lease is not None else None
        token = object()
        self._pages_in_flight[token] = time.time()  # no later than the read_at its writes use
        epoch_token = PAGE_EPOCH.set(epoch)
        try:
            yield
        finally:
            PAGE_EPOCH.reset(epoch_token)
            del self._pages_in_flight[token]

    def _reads_since(self) -> float:
        """No write still to come from this worker rests on an older read than this."""
        return min(self._pages_in_flight.values(), default=time.time())

    def _segment_page_items(self) -> int:
        return max(1, min(self._page_items(), int(self._scan_page_items)))

    def _adapt_page(self, items: int, seconds: float) -> None:
        """Size the next scan pages so that one is written within a third of the horizon."""
        if items <= 0 or seconds <= 0:
            return
        wanted = items * (self.settings.stale_write_horizon_s / 3) / seconds
        wanted = min(max(wanted, self._scan_page_items / 2), self._scan_page_items * 2)
        self._scan_page_items = max(min(MIN_PAGE_ITEMS, self.options.page_items), min(wanted, self.options.page_items))

    def _page_items(self) -> int:
        if self.options.rate_per_s:
            # A page must be written well within the horizon of being read.
            budget = int(self.options.rate_per_s * self.settings.stale_write_horizon_s / 3)
            return max(1, min(self.options.page_items, budget, self.limiter.max_chunk))
        return self.options.page_items

    async def _acquire(self, n: int) -> None:
        while n > 0:
            step = min(n, self.limiter.max_chunk)
            await self.limiter.acquire(step)
            n -= step

    async def _with_backoff(self, call: Any, what: str) -> tuple[Any, float]:
        """Run `call` (a coroutine factory), retrying transient faults with backoff."""
        for attempt in range(MAX_PAGE_RETRIES):
            started = time.time()
            try:
                return await call(), started
            except Exception as exc:
                if not aws.is_transient(exc) and not isinstance(exc, TransientError):
                    raise
                await asyncio.sleep(min(10.0, 0.2 * 2**attempt))
        raise TransientError(f"{what}: still throttled or failing after {MAX_PAGE_RETRIES} attempts")

    def _count(self, unit: Unit, read: int, counts: WriteCounts) -> None:
        unit.read += read
        unit.written += counts.written
        unit.skipped += counts.skipped
        unit.quarantined += counts.quarantined
        self.report.read += read
        self.report.counts.add(counts)


@contextlib.asynccontextmanager
async def open_client(settings: Settings) -> AsyncIterator[Any]:
    """A worker's client (`run_worker`, `backfill.lambda_unit`): standard retries on DynamoDB's delays,
    and Scan pages left as DynamoDB JSON (`aws.raw_scan_pages`: botocore's model walk of every page
    was the largest share of the backfill's client CPU)."""
    async with aws.aio_dynamodb(settings, **CLIENT_OPTIONS) as client:
        install_retries(client)
        aws.raw_scan_pages(client)
        yield client


async def run_worker(
    settings: Settings, options: WorkerOptions, owner: str | None = None,
    started: Callable[[Worker], None] | None = None,
) -> WorkerReport:
    """Run a worker to the end; `started` is handed the worker first (`backfill run`'s progress display)."""
    async with open_client(settings) as client:
        worker = Worker(settings, options, client, owner=owner)
        if started is not None:
            started(worker)
        return await worker.run()


def worker_process(settings_overrides: dict[str, Any], options: WorkerOptions, owner: str) -> WorkerReport:
    """Entry point of a worker process (multiprocessing spawn)."""
    from shared.core.settings import load_settings

    return asyncio.run(run_worker(load_settings(**settings_overrides), options, owner))
