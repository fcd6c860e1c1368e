"""Units of backfill work, their leases and checkpoints, in the control table.

A backfill of one source table is a *run* (`BACKFILL#<table>` / `RUN`) split
into *units* (`BACKFILL#<table>` / `UNIT#<n>`): a scan segment, or one data
file of an export. A unit carries its checkpoint (the scan's
LastEvaluatedKey, or the number of lines of the file already applied) and
its counts, which only ever move forward together with the checkpoint.

Any number of worker processes on any number of hosts share the work with no
coordinator: a worker *claims* a unit with a conditional update that succeeds
only if the unit is pending, or running under a lease that has expired. It
renews the lease by heartbeats, and every checkpoint is conditional on still
holding the lease, so a worker that lost its lease (paused, partitioned) can
no longer move the checkpoint. A worker killed with `kill -9` simply stops
renewing; once its lease expires another worker resumes the unit from its
last checkpoint. Writes are create-only (see `shared.protocol.apply`), so redoing the
pages after the last checkpoint is harmless. Completion is conditional on
the lease too, and `completions` counts it, so no unit is completed twice.
A claim or a completion whose answer was lost (a 500 after the update
landed) is retried by botocore and then fails its own condition; the item
returned with that failure tells whether the update that got in was this
one (the claim's random `claim_id`, the completion's `updated_at`), so the
worker neither strands a unit it holds nor counts a completion as lost.
An invocation that stops early on purpose (a Lambda near its time limit)
*releases* its unit: back to pending with its checkpoint, so the next claim
need not wait for the lease to expire.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from shared.core.aws import error_code, translate
from shared.core.capacity import Usage
from shared.core.errors import UsageError
from shared.store import keys


@dataclass
class Unit:
    table: str
    number: int
    kind: str  # "segment" or "file"
    status: str = "pending"
    owner: str | None = None
    lease_until: float = 0.0
    cursor: Any = None  # LastEvaluatedKey (wire format) or a line number
    file: str | None = None
    read: int = 0
    written: int = 0
    skipped: int = 0
    quarantined: int = 0
    completions: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float | None = None
    # Capacity units this unit's work consumed (scans, writes, its own checkpoints),
    # collected by `shared.core.capacity.scope` and saved with every checkpoint.
    usage: Usage = field(default_factory=Usage)

    @property
    def sk(self) -> str:
        return f"UNIT#{self.number:05d}"


@dataclass
class Run:
    table: str
    segments: int
    source: str
    write_mode: str
    created_at: float
    units: list[Unit] = field(default_factory=list)
    finished_at: float | None = None
    approx_items: int | None = None
    failure: str | None = None  # why the last Step Functions execution failed, until a run resumes

    @property
    def done(self) -> int:
        return sum(1 for u in self.units if u.status == "done")

    def totals(self) -> dict[str, int]:
        return {k: sum(getattr(u, k) for u in self.units) for k in ("read", "written", "skipped", "quarantined")}

    def usage(self) -> Usage:
        total = Usage()
        for unit in self.units:
            total.add(unit.usage)
        return total


JUST_READ_S = 0.1  # a unit list read this recently is the current one, for claims


class UnitView:
    """One worker's shared, recent copy of a table's unit list.

    A worker's unit loops claim one unit each, again and again; reading the
    whole list for every claim was most of a small backfill's client CPU (a
    40-item run read it 72 times for 16 units). The loops share this copy
    instead: it is read again when it is older than `max_age_s`, when it
    offers no unit to claim, or after a claim from it was refused (another
    worker got there first). Concurrent reads are one request (single
    flight). Claims stay conditional, so an outdated copy costs at most a
    refused claim, never a unit worked twice. The claimed units themselves
    replace their entries, so the copy sees this worker's own progress (a
    checkpoint marks its unit done in place).
    """

    def __init__(self, store: UnitStore, table: str, *, max_age_s: float = 5.0) -> None:
        self.store = store
        self.table = table
        self.max_age_s = max_age_s
        self._units: list[Unit] = []
        self._read_at: float | None = None  # monotonic; None: never read, or invalidated
        self._reading: asyncio.Future[list[Unit]] | None = None

    def is_fresh(self, within_s: float | None = None) -> bool:
        """Read (not invalidated) within `within_s` seconds (default `max_age_s`)."""
        limit = self.max_age_s if within_s is None else within_s
        return self._read_at is not None and time.monotonic() - self._read_at <= limit

    async def units(self, *, within_s: float | None = None) -> list[Unit]:
        """The list, read again unless it was read within `within_s` (default `max_age_s`)."""
        if self._reading is not None:
            return list(await asyncio.shield(self._reading))
        if self.is_fresh(within_s):
            return list(self._units)
        reading = self._reading = asyncio.get_running_loop().create_future()
        try:
            run = await self.store.load(self.table)
        except BaseException as exc:
            reading.set_exception(exc)
            reading.exception()  # retrieved here: any waiter raises it for itself
            raise
        finally:
            self._reading = None
        self._units = list(run.units) if run else []
        self._read_at = time.monotonic()
        reading.set_result(self._units)
        return list(self._units)

    def note(self, unit: Unit) -> None:
        """A unit this worker claimed: its entry from now on (the same object the worker updates)."""
        self._units = [unit if u.number == unit.number else u for u in self._units]

    def invalidate(self) -> None:
        self._read_at = None


class UnitStore:
    def __init__(self, client: Any, control_table: str, clock: Any = time.time) -> None:
        self.client = client
        self.table = control_table
        self.clock = clock

    # ------------------------------------------------------------------ plan
    async def plan(
        self,
        table: str,
        *,
        units: int,
        kind: str,
        source: str,
        write_mode: str,
        files: list[str] | None = None,
        approx_items: int | None = None,
    ) -> Run:
        """Create the run and its units, or resume the existing one if it matches."""
        existing = await self.load(table)
        if existing is not None:
            if existing.segments != units or existing.source != source:
                raise UsageError(
                    f"a backfill of {table} already exists with {existing.segments} units from {existing.source}; "
                    f"resume it with the same options, or start over with --restart"
                )
            if len(existing.units) == existing.segments:
                return existing
            # The planner died (kill -9) or is still at work between the run item
            # and its last unit: create the missing units, or they would never run
            # and the backfill would be declared complete without them.
            return await self._plan_units(table, units=units, kind=kind, files=files)
        now = self.clock()
        run_item = {
            **keys.backfill(table, "RUN"),
            "segments": {"N": str(units)},
            "source": {"S": source},
            "write_mode": {"S": write_mode},
            "created_at": {"N": repr(now)},
        }
        if approx_items is not None:
            run_item["approx_items"] = {"N": str(approx_items)}
        try:
            await self.client.put_item(
                TableName=self.table, Item=run_item, ConditionExpression="attribute_not_exists(PK)"
            )
        except Exception as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise translate(exc, f"plan backfill of {table}") from exc
            return await self.plan(table, units=units, kind=kind, source=source, write_mode=write_mode, files=files)
        return await self._plan_units(table, units=units, kind=kind, files=files)

    async def _plan_units(self, table: str, *, units: int, kind: str, files: list[str] | None) -> Run:
        """Create every unit that does not exist yet (create-only: progress is never reset)."""
        for number in range(units):
            unit = Unit(table, number, kind, file=files[number] if files else None)
            item = {
                **keys.backfill(table, unit.sk),
                "kind": {"S": kind},
                "status": {"S": "pending"},
                "read": {"N": "0"},
                "written": {"N": "0"},
                "skipped": {"N": "0"},
                "quarantined": {"N": "0"},
                "completions": {"N": "0"},
            }
            if unit.file:
                item["file"] = {"S": unit.file}
            try:
                await self.client.put_item(
                    TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(PK)"
                )
            except Exception as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise translate(exc, f"plan backfill unit {number}") from exc
        loaded = await self.load(table)
        assert loaded is not None
        return loaded

    async def reset(self, table: str) -> int:
        """Forget a run and its units (`--restart`). Returns how many items went."""
        items = await self._query(table)
        for item in items:
            try:
                await self.client.delete_item(TableName=self.table, Key={"PK": item["PK"], "SK": item["SK"]})
            except Exception as exc:
                raise translate(exc, f"reset backfill of {table}") from exc
        return len(items)

    async def load(self, table: str) -> Run | None:
        items = await self._query(table)
        run_item = next((i for i in items if i["SK"]["S"] == "RUN"), None)
        if run_item is None:
            return None
        run = Run(
            table=table,
            segments=int(run_item["segments"]["N"]),
            source=run_item["source"]["S"],
            write_mode=run_item["write_mode"]["S"],
            created_at=float(run_item["created_at"]["N"]),
            finished_at=float(run_item["finished_at"]["N"]) if "finished_at" in run_item else None,
            approx_items=int(run_item["approx_items"]["N"]) if "approx_items" in run_item else None,
            failure=run_item["failure"]["S"] if "failure" in run_item else None,
        )
        run.units = [self._unit(table, i) for i in items if i["SK"]["S"].startswith("UNIT#")]
        return run

    async def mark_failure(self, table: str, reason: str | None) -> None:
        """Set (or, with None, clear) the failure mark on a table's run item; a table without a plan has none."""
        if reason is None:
            update, values = "REMOVE failure, failed_at", None
        else:
            update, values = "SET failure = :reason, failed_at = :now", {
                ":reason": {"S": reason}, ":now": {"N": repr(round(self.clock(), 3))}}
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "Key": keys.backfill(table, "RUN"),
            "UpdateExpression": update,
            "ConditionExpression": "attribute_exists(PK)",
        }
        if values:
            kwargs["ExpressionAttributeValues"] = values
        try:
            await self.client.update_item(**kwargs)
        except Exception as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise translate(exc, f"record the backfill state of {table}") from exc

    async def mark_finished(self, table: str) -> None:
        try:
            await self.client.update_item(
                TableName=self.table,
                Key=keys.backfill(table, "RUN"),
                UpdateExpression="SET finished_at = if_not_exists(finished_at, :now)",
                ExpressionAttributeValues={":now": {"N": repr(self.clock())}},
            )
        except Exception as exc:
            raise translate(exc, "mark backfill finished") from exc

    # ---------------------------------------------------------------- leases
    async def claim(
        self, run: Run, owner: str, lease_s: float, *, taken: set[str] | None = None, view: UnitView | None = None
    ) -> Unit | None:
        """Take a pending unit, or one whose lease expired. None if none is free.

        `taken`: the units this process's other claimers are trying or hold (shared
        by them, updated here). Several unit loops of one worker claim at once;
        without it they all try the same first unit, and every refused try is a
        conditional write AWS charges for.

        `view`: the unit list those claimers share (`UnitView`), read again only
        when it is old, offers nothing, or a claim from it was refused. Without
        one, every claim reads the list."""
        view = view or UnitView(self, run.table, max_age_s=0.0)
        taken = set() if taken is None else taken
        for attempt in range(2):
            # First the shared copy; if it offers nothing, a list read just now.
            units = await view.units(within_s=None if attempt == 0 else JUST_READ_S)
            now = self.clock()
            candidates = [u for u in units if u.status == "pending"] + [
                u for u in units if u.status == "running" and u.lease_until < now
            ]
            for unit in candidates:
                if unit.sk in taken:
                    continue
                taken.add(unit.sk)
                try:
                    claimed = await self._try_claim(run.table, unit.sk, owner, lease_s, now)
                except BaseException:
                    taken.discard(unit.sk)
                    raise
                if claimed is not None:
                    view.note(claimed)
                    return claimed  # stays taken until the caller lets it go
                taken.discard(unit.sk)
                view.invalidate()  # someone else changed the list: read it again before the next try
            if view.is_fresh(JUST_READ_S):
                return None  # nothing free in a list read just now
        return None

    async def claim_unit(self, table: str, number: int, owner: str, lease_s: float) -> Unit | None:
        """Take one given unit (pending, or its lease expired). None if done or leased to a live owner."""
        return await self._try_claim(table, Unit(table, number, "segment").sk, owner, lease_s, self.clock())

    async def _try_claim(self, table: str, sk: str, owner: str, lease_s: float, now: float) -> Unit | None:
        claim_id = uuid.uuid4().hex  # this claim, and no other (several unit loops share an owner)
        try:
            response = await self.client.update_item(
                TableName=self.table,
                Key=keys.backfill(table, sk),
                UpdateExpression=(
                    "SET #s = :running, #o = :me, lease_until = :until, claim_id = :claim, "
                    "started_at = if_not_exists(started_at, :now), updated_at = :now"
                ),
                ConditionExpression="#s = :pending OR (#s = :running AND lease_until < :now)",
                ExpressionAttributeNames={"#s": "status", "#o": "owner"},
                ExpressionAttributeValues={
                    ":running": {"S": "running"},
                    ":pending": {"S": "pending"},
                    ":me": {"S": owner},
                    ":until": {"N": repr(now + lease_s)},
                    ":claim": {"S": claim_id},
                    ":now": {"N": repr(now)},
                },
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                current = exc.response.get("Item")  # type: ignore[attr-defined]
                if current and current.get("claim_id", {}).get("S") == claim_id:
                    # A retry of this very claim, after its answer was lost: it is ours.
                    return self._unit(table, current)
                return None  # someone else took it first (or it is done, or absent)
            raise translate(exc, "claim backfill unit") from exc
        return self._unit(table, response["Attributes"])

    async def release(self, unit: Unit, owner: str) -> bool:
        """Give a running unit back (pending, no owner) so the next claim need not wait for the lease.

        Conditional on still holding it; the checkpoint is kept. False if the lease was lost already.
        """
        try:
            await self.client.update_item(
                TableName=self.table,
                Key=keys.backfill(unit.table, unit.sk),
                UpdateExpression="SET #s = :pending, lease_until = :zero, updated_at = :now REMOVE #o",
                ConditionExpression="#o = :me AND #s = :running",
                ExpressionAttributeNames={"#o": "owner", "#s": "status"},
                ExpressionAttributeValues={
                    ":me": {"S": owner},
                    ":running": {"S": "running"},
                    ":pending": {"S": "pending"},
                    ":zero": {"N": "0"},
                    ":now": {"N": repr(self.clock())},
                },
            )
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise translate(exc, "release backfill unit") from exc
        unit.status, unit.owner, unit.lease_until = "pending", None, 0.0
        return True

    async def heartbeat(self, unit: Unit, owner: str, lease_s: float) -> bool:
        now = self.clock()
        try:
            await self.client.update_item(
                TableName=self.table,
                Key=keys.backfill(unit.table, unit.sk),
                UpdateExpression="SET lease_until = :until",
                ConditionExpression="#o = :me AND #s = :running",
                ExpressionAttributeNames={"#o": "owner", "#s": "status"},
                ExpressionAttributeValues={
                    ":me": {"S": owner},
                    ":running": {"S": "running"},
                    ":until": {"N": repr(now + lease_s)},
                },
            )
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise translate(exc, "renew backfill lease") from exc
        unit.lease_until = now + lease_s
        return True

    async def checkpoint(self, unit: Unit, owner: str, *, done: bool = False) -> bool:
        """Persist the cursor and counts; False if the lease was lost (stop working)."""
        now = self.clock()
        values: dict[str, Any] = {
            ":me": {"S": owner},
            ":running": {"S": "running"},
            ":cursor": {"S": json.dumps(unit.cursor)},
            ":read": {"N": str(unit.read)},
            ":written": {"N": str(unit.written)},
            ":skipped": {"N": str(unit.skipped)},
            ":quarantined": {"N": str(unit.quarantined)},
            ":now": {"N": repr(now)},
            ":ru": {"N": repr(round(unit.usage.read_units, 3))},
            ":wu": {"N": repr(round(unit.usage.write_units, 3))},
        }
        update = (
            "SET #c = :cursor, #r = :read, written = :written, skipped = :skipped, "
            "quarantined = :quarantined, updated_at = :now, read_units = :ru, write_units = :wu"
        )
        if done:
            update += ", #s = :done, finished_at = :now, completions = completions + :one"
            values[":done"] = {"S": "done"}
            values[":one"] = {"N": "1"}
        try:
            await self.client.update_item(
                TableName=self.table,
                Key=keys.backfill(unit.table, unit.sk),
                UpdateExpression=update,
                ConditionExpression="#o = :me AND #s = :running",
                ExpressionAttributeNames={"#o": "owner", "#s": "status", "#c": "cursor", "#r": "read"},
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                current = exc.response.get("Item") or {}  # type: ignore[attr-defined]
                # A retry of this very completion, after its answer was lost: done, by us.
                ours = (current.get("owner") == values[":me"] and current.get("status") == values.get(":done")
                        and current.get("updated_at") == values[":now"])
                if done and ours:
                    unit.status = "done"
                    return True
                return False
            raise translate(exc, "save backfill checkpoint") from exc
        if done:
            unit.status = "done"
        return True

    # --------------------------------------------------------------- helpers
    async def _query(self, table: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "PK = :pk",
            "ExpressionAttributeValues": {":pk": {"S": keys.backfill_pk(table)}},
            "ConsistentRead": True,
        }
        while True:
            try:
                page = await self.client.query(**kwargs)
            except Exception as exc:
                raise translate(exc, f"read backfill state of {table}") from exc
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    @staticmethod
    def _unit(table: str, item: dict[str, Any]) -> Unit:
        def num(name: str) -> float | None:
            return float(item[name]["N"]) if name in item else None

        return Unit(
            table=table,
            number=int(item["SK"]["S"].split("#")[1]),
            kind=item["kind"]["S"],
            status=item["status"]["S"],
            owner=item.get("owner", {}).get("S"),
            lease_until=num("lease_until") or 0.0,
            cursor=json.loads(item["cursor"]["S"]) if "cursor" in item else None,
            file=item.get("file", {}).get("S"),
            read=int(item["read"]["N"]),
            written=int(item["written"]["N"]),
            skipped=int(item["skipped"]["N"]),
            quarantined=int(item["quarantined"]["N"]),
            completions=int(item["completions"]["N"]),
            started_at=num("started_at"),
            finished_at=num("finished_at"),
            updated_at=num("updated_at"),
            usage=Usage(read_units=num("read_units") or 0.0, write_units=num("write_units") or 0.0),
        )
