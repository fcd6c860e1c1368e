"""The backfill in AWS: plan, one time-bounded unit invocation, finish.

Step Functions runs `backfill/statemachine.asl.json`: *Plan* → a Distributed
Map over the units → *Finish*. Inside the Map each unit is a loop of Lambda
invocations (*ProcessUnit*), each working until it nears its time limit and
returning its progress, until the unit is done. The units are the local
worker's (`backfill.units`): a scan segment or an export data file, with its
checkpoint, leased in the control table. Every write is the worker's
(`Worker.process_unit`: `BackfillWriter` over `shared.protocol.apply`'s stale path).

**One invocation of a unit** (`run_unit`) renews the run's stale-writer
registration, claims *that* unit (`UnitStore.claim_unit`: pending, or leased
to someone whose lease expired), waits out the fence if the registration is
new, and processes pages from the checkpoint. Before every page it asks: is
more than `backfill_deadline_margin_s` left (one page, its writes and the
checkpoint must fit), is the unit lease still ours, may we still read (see
below)? When not, it stops after the last checkpoint and *releases* the
unit (pending again, checkpoint kept), so the next invocation claims it at
once. It returns `{table, unit, done, wait_s, counts...}`.

* Two invocations racing on one unit (a Lambda retry while the first still
  runs, two executions): the claim is a conditional write, so one wins; the
  other does nothing and returns `done: false` with `wait_s` (the time left
  on the winner's lease), and the state machine waits that long before
  asking again.
* A crash (timeout, OOM, kill): nothing is released, heartbeats stop, the
  unit lease expires, and the next invocation resumes from the checkpoint.
  Writes are create-only, so redoing the pages after it is harmless.
* A failure we raise (`TransientError` after back-off, a store error)
  releases the unit first, so the state machine's retry can resume at once.

**The stale-writer registration outlives every invocation.** The mirror
leaves tombstones only while some stale writer holds a valid lease
(`shared.store.control.StaleWriterRegistry`), and a new writer must wait the fence
(registry refresh + margin) after registering before its first read. A run
therefore has *one* registration, `stepfunctions:<run id>` (the execution
name), that every invocation shares:

* Plan creates it (so the fence is mostly over when the first unit starts).
* Each invocation renews it when it starts, on every heartbeat
  (`backfill_lease_s / 3`, together with its unit lease) and when it stops.
  A renewal is conditional on the lease not having lapsed. If it had lapsed
  (no invocation ran for a while: Map concurrency, a long retry back-off),
  the mirror may have deleted without a tombstone meanwhile, so the
  registration is created afresh with a new `fence_until`, which every
  invocation that renews it reads back and waits for before reading.
* The lease is `backfill_lease_s + stale_write_horizon_s +
  consistency_margin_s`, and a page is read only while the last renewal is
  valid for more than horizon + margin: every write of that page (made within
  the horizon of its read) lands while the registration is still valid, even
  if every renewal from then on failed. If renewals keep failing, pages stop.
* Finish removes it, waits one registry refresh, and sweeps the tombstones
  (`backfill.run._finish`: all of them if no other stale writer is
  registered, else only those no stale writer can still need). A run that
  is abandoned (execution failed or stopped) just lets the lease lapse; its
  tombstones go with the mirror's idle sweep, `finalize`, or their TTL.

**A failed run says so.** When units fail (their retries exhausted, so the
Distributed Map fails), or Finish finds units not done, the state machine's
Catch runs *RecordFailure* (the Finish function with `{"run", "failure"}`):
`record_failure` writes the reason on each table's run item (`failure`,
`failed_at`), which `dynashift backfill status` shows, and the execution then
ends Failed. Starting the execution again resumes from the checkpoints:
Plan clears the mark, and a successful Finish clears it too.

No rate limit here: the Map's MaxConcurrency bounds how many units write at
once. Nothing here writes to a legacy table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backfill.lease import LeaseLapsed, install_page_gate
from backfill.units import Unit, UnitStore
from backfill.worker import Worker, WorkerOptions, open_client
from shared.core import aws
from shared.core.aws import error_code, translate
from shared.core.errors import BackfillIncomplete, UsageError
from shared.core.settings import Settings
from shared.store import keys
from shared.store.control import StaleWriterRegistry

WRITER_KIND = "backfill-stepfunctions"
# Step Functions caps a state's input and output at 256 KiB; the plan's unit
# list is the largest payload, kept well under it.
MAX_PLAN_BYTES = 200_000
MAX_WAIT_S = 60

RemainingSeconds = Callable[[], float]


# ------------------------------------------------------------------ wire formats
class BackfillInput(BaseModel):
    """The execution input (`aws stepfunctions start-execution --input`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: str = "all"
    segments: int = Field(8, ge=1, le=1_000_000)
    source: str = "scan"
    write_mode: Literal["insert", "put", "transact"] = "insert"
    page_items: int = Field(500, ge=1, le=10_000)
    restart: bool = False
    allow_no_mirror: bool = False

    @classmethod
    def parse(cls, raw: Any) -> BackfillInput:
        try:
            return cls.model_validate(raw if raw is not None else {})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "input"
            raise UsageError(f"backfill input {where}: {first['msg']}") from None


@dataclass(frozen=True)
class RunSpec:
    """What every unit invocation of one execution shares (`$.run` in the state machine)."""

    run_id: str
    tables: list[str]
    source: str
    write_mode: str
    page_items: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> RunSpec:
        try:
            return cls(
                run_id=str(raw["run_id"]), tables=[str(t) for t in raw["tables"]], source=str(raw["source"]),
                write_mode=str(raw["write_mode"]), page_items=int(raw["page_items"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"backfill event: malformed run {raw!r} ({type(exc).__name__}: {exc})") from None

    @property
    def writer_id(self) -> str:
        return f"stepfunctions:{self.run_id}"


# ---------------------------------------------------------------- registration
class RunRegistration:
    """The run's stale-writer lease, shared by all its invocations (see the module note).

    The item is `StaleWriterRegistry`'s (`lease_until` is what the mirror
    reads) plus `fence_until`: no read may rely on the registration before it.
    """

    def __init__(self, settings: Settings, client: Any, writer_id: str, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.client = client
        self.writer_id = writer_id
        self.clock = clock
        self.registry = StaleWriterRegistry(client, settings.control_table, clock)
        self.lease_s = settings.backfill_lease_s + settings.stale_write_horizon_s + settings.consistency_margin_s
        self.fence_s = settings.stale_writer_refresh_s + settings.consistency_margin_s
        self.valid_until = 0.0
        self.fence_until = float("inf")
        self.epoch = 0  # moves on with each fresh registration (the old one lapsed)

    @property
    def key(self) -> dict[str, Any]:
        return keys.stale_writer(self.writer_id)

    async def renew(self) -> None:
        """Extend the lease if it is still valid; else register afresh, with a new fence."""
        now = self.clock()
        until = now + self.lease_s
        try:
            response = await self.client.update_item(
                TableName=self.settings.control_table,
                Key=self.key,
                UpdateExpression="SET lease_until = :until, expires_at = :expires",
                ConditionExpression="lease_until > :now",
                ExpressionAttributeValues={
                    ":until": {"N": repr(round(until, 3))},
                    ":expires": {"N": str(int(until) + 3600)},
                    ":now": {"N": repr(now)},
                },
                ReturnValues="ALL_NEW",
            )
            fence_until = float(response["Attributes"].get("fence_until", {"N": "0"})["N"])
        except Exception as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise translate(exc, "renew the backfill's stale-writer registration") from exc
            fence_until = now + self.fence_s
            try:
                await self.client.put_item(
                    TableName=self.settings.control_table,
                    Item={
                        **self.key,
                        "kind": {"S": WRITER_KIND},
                        "lease_until": {"N": repr(round(until, 3))},
                        "fence_until": {"N": repr(round(fence_until, 3))},
                        "expires_at": {"N": str(int(until) + 3600)},
                    },
                )
            except Exception as put_exc:
                raise translate(put_exc, "register the backfill as a stale writer") from put_exc
        if fence_until != self.fence_until:
            self.epoch += 1
        self.valid_until = until
        self.fence_until = fence_until

    def fence_wait_s(self) -> float:
        return max(0.0, self.fence_until - self.clock())

    def may_read(self) -> bool:
        """Past the fence, and every write of a page read now would land while the lease holds."""
        now = self.clock()
        horizon = self.settings.stale_write_horizon_s + self.settings.consistency_margin_s
        return now >= self.fence_until and self.valid_until - now > horizon

    async def ready(self) -> int:
        """The epoch a page read now belongs to (`page_gate` has waited out the fence)."""
        return self.epoch

    async def gate(self, epoch: int) -> None:
        """Every attempt of a page's requests: only under the registration it was read in,
        and only while that will outlive the request by the margin (botocore's retries
        can send a write long after the page's horizon check)."""
        if epoch != self.epoch or self.clock() + self.settings.consistency_margin_s >= self.valid_until:
            raise LeaseLapsed(f"the stale-writer registration of {self.writer_id} may have lapsed")

    async def remove(self) -> None:
        await self.registry.deregister(self.writer_id)


# -------------------------------------------------------------------------- plan
async def plan_run(settings: Settings, raw_input: Any, run_id: str | None = None) -> dict[str, Any]:
    """Plan (or resume) the runs, register the stale writer, list the units still to do."""
    from backfill.run import BackfillRequest, plan_runs, resolve_tables

    request = BackfillInput.parse(raw_input)
    tables = resolve_tables(settings, request.table)
    runs, _ = await plan_runs(
        settings,
        BackfillRequest(
            table=request.table, segments=request.segments, write_mode=request.write_mode, source=request.source,
            restart=request.restart, allow_no_mirror=request.allow_no_mirror,
        ),
        tables,
    )
    spec = RunSpec(
        run_id=run_id or uuid.uuid4().hex, tables=tables, source=request.source,
        write_mode=runs[0].write_mode if runs else request.write_mode, page_items=request.page_items,
    )
    units = [{"table": run.table, "unit": unit.number} for run in runs for unit in run.units if unit.status != "done"]
    plan = {"run": spec.to_json(), "units": units}
    if len(json.dumps(plan)) > MAX_PLAN_BYTES:
        raise UsageError(
            f"{len(units)} units do not fit in a Step Functions payload (256 KiB): use fewer --segments"
        )
    async with aws.aio_dynamodb(settings) as client:
        # A resumed run is running again, not failed.
        store = UnitStore(client, settings.control_table)
        for table in tables:
            await store.mark_failure(table, None)
        # Registering now starts the fence while the Map starts up.
        await RunRegistration(settings, client, spec.writer_id).renew()
    return plan


# -------------------------------------------------------------------------- unit
@dataclass
class UnitOutcome:
    table: str
    unit: int
    done: bool
    wait_s: int = 0  # > 0: the unit is leased to another live invocation; ask again after this long
    pages: int = 0  # pages this invocation wrote
    read: int = 0  # unit totals, as checkpointed
    written: int = 0
    skipped: int = 0
    quarantined: int = 0
    completions: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, unit: Unit, *, done: bool, pages: int = 0, wait_s: int = 0) -> UnitOutcome:
        return cls(unit.table, unit.number, done, wait_s, pages, unit.read, unit.written, unit.skipped,
                   unit.quarantined, unit.completions)


async def run_unit(
    settings: Settings,
    spec: RunSpec,
    table: str,
    number: int,
    remaining_s: RemainingSeconds,
    *,
    owner: str | None = None,
) -> UnitOutcome:
    """Work one unit from its checkpoint until it is done or time runs short.

    `remaining_s` (the Lambda's remaining time) is asked exactly once before
    each page: a page starts only if more than `backfill_deadline_margin_s`
    (plus any fence still to wait) is left.
    """
    if table not in spec.tables:
        raise UsageError(f"backfill event: table {table!r} is not part of run {spec.run_id} ({', '.join(spec.tables)})")
    owner = owner or f"lambda:{spec.run_id}:{uuid.uuid4().hex[:12]}"
    export = None
    if spec.source.startswith("export:"):
        from backfill.export import parse_source

        export = parse_source(spec.source.removeprefix("export:"))
    async with open_client(settings) as client:
        store = UnitStore(client, settings.control_table)
        registration = RunRegistration(settings, client, spec.writer_id)
        await registration.renew()
        unit = await store.claim_unit(table, number, owner, settings.backfill_lease_s)
        if unit is None:
            return await _not_claimed(store, table, number)
        run = await store.load(table)
        assert run is not None  # the unit exists, so its run does
        worker = Worker(
            settings,
            WorkerOptions(tables=[table], write_mode=spec.write_mode, page_items=spec.page_items,
                          lease_s=settings.backfill_lease_s, export=export),
            client,
            owner=owner,
        )
        lease = _LeaseKeeper(store, registration, unit, owner, settings.backfill_lease_s)
        pages = 0

        async def page_gate() -> bool:
            nonlocal pages
            wait = registration.fence_wait_s()
            if remaining_s() - wait < settings.backfill_deadline_margin_s or lease.lost:
                return False
            if wait > 0:
                await asyncio.sleep(wait)
            if not registration.may_read():
                return False  # renewals are failing: reading now could outlive the registration
            pages += 1
            return True

        worker.page_gate = page_gate
        worker.lease = registration
        install_page_gate(client, registration.gate)
        heartbeat = asyncio.create_task(lease.keep())
        try:
            done = await worker.process_unit(run, unit)
        except Exception:
            # A failure (not a crash): give the unit back so the retry resumes at once.
            await _stop(heartbeat)
            with contextlib.suppress(Exception):
                await store.release(unit, owner)
            raise
        await _stop(heartbeat)
        if not done and not lease.lost:
            await store.release(unit, owner)
        await registration.renew()  # spans the state machine's turn to the next invocation
        current = next((u for u in (await store.load(table) or run).units if u.number == number), unit)
        return UnitOutcome.of(current, done=current.status == "done", pages=pages)


async def _not_claimed(store: UnitStore, table: str, number: int) -> UnitOutcome:
    run = await store.load(table)
    unit = next((u for u in (run.units if run else []) if u.number == number), None)
    if unit is None:
        raise UsageError(f"backfill event: {table} has no planned unit {number}; run the Plan step first")
    if unit.status == "done":
        return UnitOutcome.of(unit, done=True)
    wait = min(MAX_WAIT_S, max(1, int(unit.lease_until - store.clock()) + 1))
    return UnitOutcome.of(unit, done=False, wait_s=wait)


async def _stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class _LeaseKeeper:
    """Renews the unit lease and the run's registration every lease/3, in one round trip."""

    def __init__(self, store: UnitStore, registration: RunRegistration, unit: Unit, owner: str, lease_s: float):
        self.store, self.registration, self.unit, self.owner, self.lease_s = store, registration, unit, owner, lease_s
        self.lost = False

    async def keep(self) -> None:
        while not self.lost:
            await asyncio.sleep(self.lease_s / 3)
            renewed, _ = await asyncio.gather(
                self.store.heartbeat(self.unit, self.owner, self.lease_s),
                self.registration.renew(),
                return_exceptions=True,
            )
            if renewed is False:
                self.lost = True  # another invocation has the unit now; stop at the next page
            # A failed registration renewal is not fatal here: `may_read` stops the pages in time.


# ------------------------------------------------------------------------ finish
async def finish_run(settings: Settings, spec: RunSpec) -> dict[str, Any]:
    """After the Map: every unit must be done; deregister, sweep tombstones, mark finished."""
    from backfill.run import _finish

    async with aws.aio_dynamodb(settings) as client:
        store = UnitStore(client, settings.control_table)
        runs = [await store.load(table) for table in spec.tables]
        unfinished = [
            f"{table}: {sum(u.status != 'done' for u in run.units) if run else 'no plan'}"
            for table, run in zip(spec.tables, runs, strict=True)
            if run is None or any(u.status != "done" for u in run.units)
        ]
        if unfinished:
            raise BackfillIncomplete(
                f"backfill run {spec.run_id} is not finished (units not done per table: {'; '.join(unfinished)}); "
                "start the execution again to resume"
            )
        await RunRegistration(settings, client, spec.writer_id).remove()
        totals = {run.table: run.totals() for run in runs if run is not None}
        for table in spec.tables:
            await store.mark_failure(table, None)
    swept = await _finish(settings, spec.tables)
    return {"run_id": spec.run_id, "tables": spec.tables, "tombstones_swept": swept, "totals": totals}


async def record_failure(settings: Settings, spec: RunSpec, failure: Any) -> dict[str, Any]:
    """RecordFailure: mark each table's run failed with the reason (`backfill status` shows it).

    `failure` is what the state machine's Catch caught (`{"Error", "Cause"}`).
    The units keep their checkpoints and the registration its lease, which
    lapses: the next execution resumes where this one stopped.
    """
    error, cause = "", ""
    if isinstance(failure, dict):
        error, cause = str(failure.get("Error") or ""), str(failure.get("Cause") or "")
    async with aws.aio_dynamodb(settings) as client:
        store = UnitStore(client, settings.control_table)
        not_done = {}
        for table in spec.tables:
            run = await store.load(table)
            not_done[table] = sum(u.status != "done" for u in run.units) if run else None
        pending = "; ".join(f"{t}: {n if n is not None else 'no plan'} units not done" for t, n in not_done.items())
        reason = f"execution {spec.run_id} failed ({error or 'unknown error'}: {cause or 'no cause given'}); {pending}"
        reason = reason[:2000]
        for table in spec.tables:
            await store.mark_failure(table, reason)
    return {"run_id": spec.run_id, "tables": spec.tables, "failed": True, "reason": reason, "units_not_done": not_done}



__all__ = [
    "BackfillInput",
    "RunRegistration",
    "RunSpec",
    "UnitOutcome",
    "finish_run",
    "plan_run",
    "record_failure",
    "run_unit",
]
