"""Reverse replication: sc-main's stream in, legacy items out (after cutover).

Once the application writes sc-main (mode `new`, and while freezing towards
`old`), this engine keeps the legacy tables current, so that a rollback loses
no write. It has the forward mirror's shape: `handle(event, context)` takes a
Lambda DynamoDB-stream event and returns powertools' partial batch response;
bad data is quarantined and never fails a record; only a transient fault
fails the records that depend on it, which the stream redelivers in order.
Outside its modes it writes nothing and reports every record processed (see
`shared.store.mode` for why that cannot lose or echo a write).

**Rebuild from current state, not from the record.** A record only says
*which* legacy item may have changed: the owner (`definition.owner`) of its
old and new image. For each owner the engine reads, strongly consistently,
every target item that owner holds now, and writes `definition.reverse()` of
them to the legacy table (PutItem), or deletes the legacy item when nothing
is left to rebuild it from (an account without its profile, a repository
without its item). Because the result depends only on the current state,
re-applying a record is idempotent, the order of records within a batch does
not matter, and a repository move (REMOVE of the old key, INSERT of the new,
in any order, batch or shard) ends with the legacy item of the new key: the
REMOVE of the old key rebuilds from wherever the repository's item is now,
and deletes the legacy item only if it is nowhere.

**Finding every item an owner holds.** The target keys to read strongly are
the union of: the keys in this batch's records, the keys the owner held at
its last rebuild (kept in the control table, see below), the keys its
source key alone implies (an account's profile), the keys the current
legacy item implies (`definition.candidate_keys`: bootstraps the
first rebuild after cutover, when sc-main equals the transform of the legacy
tables), and the index the definition names (`definition.index_lookup`; for
sc the GSI1 entries `ACCOUNT#a`/`TEAM#…` for memberships, `REPO#r` for a
repository). An index is only eventually consistent, so it is a
hint: a key created moments ago may be missing from it, but that key's own
record names it, that record's rebuild stores it as held, and every later
rebuild reads it from there, so the last rebuild always sees it. Every
candidate is then read with a strongly consistent BatchGetItem and kept only
if it is live (not a tombstone) and owned by the owner.

**Concurrent rebuilds of one owner** (its records sit on different shards:
a profile and a membership have different partition keys) are serialised by
an optimistic version in the control table: ``REVERSE#<source ref>`` /
``STATE`` holds ``version`` and ``held`` (the owned keys found). A rebuild
reads the version first, then the state, and commits the legacy write in
one TransactWriteItems with the version bump, conditional on the version it
read; a lost race re-reads and rebuilds again. So the last rebuild to commit
read its state after every other commit, and every change's own rebuild
reads after that change: the last commit saw the final state. (A condition
on the legacy item's contents would not do: two rebuilds can leave it
looking the same while the state moved in between.)

**Never reversed:** tombstones and other dynashift artifacts in sc-main
(their owner is None, or they are tombstones), so sweeping tombstones or
records the forward mirror and the backfill wrote before cutover (skipped by
the mode gate) never reach the legacy tables. Which owned items a legacy
item is rebuilt from is the definition's (`reverse_items`): for sc, a
repository with two live items (the application wrote the new key and has
not yet deleted the old one) is rebuilt from the most recently updated one,
the REMOVE that follows rebuilds it again from the survivor, and an account
without its profile is deleted.

Quarantine: a target state that does not go back (a malformed item the
application wrote) is stored under the source ref ``reverse:<legacy table>``
with its target items as the image; the legacy item keeps its last clean
version, and the entry is cleared by the next clean rebuild of that owner.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from shared.core.aws import batch_get_items, error_code, translate
from shared.core.capacity import Usage
from shared.core.codec import from_stream_image, to_native, to_wire
from shared.core.definition import Item, MigrationDefinition, SourceRef, TargetKey
from shared.core.errors import QuarantineError, TransformFailed, TransientError, WriteRejected
from shared.core.settings import Settings
from shared.protocol.apply import gather_settled, is_tombstone
from shared.store import keys
from shared.store.control import ControlStore, QuarantineEntry, key_from_text, key_text
from shared.store.mode import ModeState, reverse_applies
from shared.streams.engine import EngineState, StreamEngine, retryable

QUARANTINE_PREFIX = "reverse:"
MAX_ATTEMPTS = 10

def reverse_quarantine_ref(ref: SourceRef) -> SourceRef:
    return SourceRef(QUARANTINE_PREFIX + ref.table, ref.key)


@dataclass
class ReverseStats:
    records: int = 0
    owners: int = 0
    written: int = 0
    deleted: int = 0
    quarantined: int = 0
    cleared: int = 0
    artifacts: int = 0  # records of tombstones / dynashift items: never reversed
    mode_skipped: int = 0
    conflicts: int = 0  # rebuilds re-done because another rebuild of the owner committed first
    failed_records: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)  # capacity units of the batch, its receipts included

    def log_fields(self) -> dict[str, Any]:
        """The handler's log line of the batch."""
        return {"records": self.records, "owners": self.owners, "written": self.written, "deleted": self.deleted,
                "mode_skipped": self.mode_skipped, "quarantined": self.quarantine_reasons,
                "failed_records": self.failed_records, "read_units": self.usage.read_units,
                "write_units": self.usage.write_units}

    def metrics(self) -> list[tuple[str, str, float]]:
        """The handler's EMF metrics of the batch: (name, unit, value)."""
        return [("ReverseRecordsApplied", "Count", self.records - self.failed_records - self.mode_skipped),
                ("ReverseRecordsSkippedByMode", "Count", self.mode_skipped),
                ("ReverseQuarantined", "Count", self.quarantined),
                ("ReverseRecordsRetried", "Count", self.failed_records),
                ("ReverseWriteUnits", "Count", self.usage.write_units),
                ("ReverseReadUnits", "Count", self.usage.read_units)]


@dataclass
class _Group:
    """The records of one batch that concern one owner, and the keys they name."""

    sequences: list[str] = field(default_factory=list)
    hints: set[TargetKey] = field(default_factory=set)


@dataclass
class _Rebuilt:
    held: set[TargetKey]
    legacy: Item | None  # None: delete the legacy item
    error: QuarantineError | None = None
    items: list[Item] = field(default_factory=list)


class ReverseEngine(StreamEngine):
    """Applies sc-main stream batches to the legacy tables; one per process."""

    component = "reverse-mirror"
    direction = "reverse"

    def __init__(self, settings: Settings, definition: MigrationDefinition | None = None) -> None:
        super().__init__(settings, definition)
        self.clock = time.time

    def applies(self, mode: ModeState) -> bool:
        return reverse_applies(mode)

    def _new_stats(self, records: list[dict[str, Any]]) -> ReverseStats:
        return ReverseStats(records=len(records))

    @property
    def control(self) -> ControlStore:
        """This thread's view of the control table (through its client)."""
        return ControlStore(self.client, self.settings.control_table)

    # ---------------------------------------------------------------- batch
    def _groups(self, records: list[dict[str, Any]], stats: ReverseStats) -> OrderedDict[SourceRef, _Group]:
        groups: OrderedDict[SourceRef, _Group] = OrderedDict()
        for record in records:
            body = record["dynamodb"]
            sequence = body["SequenceNumber"]
            owned = False
            for name in ("OldImage", "NewImage"):
                if name not in body:
                    continue
                image = from_stream_image(body[name])
                ref = None if is_tombstone(image) else self.definition.owner(image)
                if ref is None:
                    continue
                owned = True
                group = groups.setdefault(ref, _Group())
                if sequence not in group.sequences:
                    group.sequences.append(sequence)
                group.hints.add(self.definition.target_key(image))
            stats.artifacts += not owned
        return groups

    def _parse(self, records: list[dict[str, Any]], stats: ReverseStats) -> OrderedDict[SourceRef, _Group]:
        groups = self._groups(records, stats)
        stats.owners = len(groups)
        return groups

    async def _prefetch(self, state: EngineState,
                        groups: OrderedDict[SourceRef, _Group]) -> dict[SourceRef, QuarantineEntry]:
        """The owners' reverse quarantine entries."""
        return await self.control.quarantine_get_many(reverse_quarantine_ref(r) for r in groups)

    async def _apply(self, state: EngineState, groups: OrderedDict[SourceRef, _Group],
                     entries: dict[SourceRef, QuarantineEntry], stats: ReverseStats) -> set[str]:
        failed: set[str] = set()
        semaphore = asyncio.Semaphore(self.settings.mirror_concurrency)

        async def run(ref: SourceRef, group: _Group) -> None:
            try:
                async with semaphore:
                    await self.rebuild(ref, group.hints, entries.get(reverse_quarantine_ref(ref)), stats)
            except Exception as exc:
                if not retryable(exc):
                    raise
                failed.update(group.sequences)

        await gather_settled(*(run(ref, group) for ref, group in groups.items()))  # none left in flight
        return failed

    # -------------------------------------------------------------- rebuild
    async def rebuild(
        self,
        ref: SourceRef,
        hints: set[TargetKey] | None = None,
        entry: QuarantineEntry | None = None,
        stats: ReverseStats | None = None,
    ) -> str:
        """Rebuild one legacy item from sc-main's current state: 'written', 'deleted' or 'quarantined'."""
        await self._connect()
        stats = stats if stats is not None else ReverseStats()
        delay = 0.02
        for _attempt in range(MAX_ATTEMPTS):
            version, held_before = await self._read_state(ref)
            legacy_now = await self._get(self.settings.physical_name(ref.table), self._legacy_key(ref))
            candidates = set(hints or ()) | held_before | await self._indexed_keys(ref)
            # What the owner's key alone implies (an account's profile key).
            candidates |= self.definition.candidate_keys(ref.table, self.definition.source(ref.table).key_of(ref))
            if legacy_now is not None:
                candidates |= self.definition.candidate_keys(ref.table, legacy_now)
            owned = await self._read_owned(ref, candidates)
            rebuilt = self._rebuild(ref, owned)
            status = await self._commit(ref, version, rebuilt)
            if status == "conflict":
                stats.conflicts += 1
                await asyncio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)
                continue
            if status == "rejected":
                # DynamoDB refused the legacy item itself (too large, ...): quarantine.
                rebuilt = _Rebuilt(rebuilt.held, None, WriteRejected("the legacy table rejected the rebuilt item"),
                                   rebuilt.items)
                if await self._commit(ref, version, rebuilt, legacy_write=False) == "conflict":
                    stats.conflicts += 1
                    continue
            return await self._after_commit(ref, rebuilt, entry, stats)
        raise TransientError(f"reverse of {ref.table} {'|'.join(ref.key)}: still racing after {MAX_ATTEMPTS} attempts")

    async def _after_commit(
        self, ref: SourceRef, rebuilt: _Rebuilt, entry: QuarantineEntry | None, stats: ReverseStats
    ) -> str:
        if rebuilt.error is not None:
            await self.control.quarantine_put(
                QuarantineEntry(
                    ref=reverse_quarantine_ref(ref),
                    reason=rebuilt.error.reason,
                    message=f"reverse replication cannot rebuild {ref.table} {'|'.join(ref.key)} from "
                    f"{self.settings.target_table}: {rebuilt.error.message}",
                    image={"target_items": rebuilt.items},
                    detected_at=self.clock(),
                )
            )
            stats.quarantined += 1
            reason = rebuilt.error.reason
            stats.quarantine_reasons[reason] = stats.quarantine_reasons.get(reason, 0) + 1
            return "quarantined"
        if entry is not None:
            await self.control.quarantine_clear(reverse_quarantine_ref(ref))
            stats.cleared += 1
        if rebuilt.legacy is None:
            stats.deleted += 1
            return "deleted"
        stats.written += 1
        return "written"

    def _rebuild(self, ref: SourceRef, owned: list[Item]) -> _Rebuilt:
        held = {self.definition.target_key(i) for i in owned}
        items = self.definition.reverse_items(ref.table, owned) if owned else []
        if not items:
            return _Rebuilt(held, None, items=owned)
        try:
            legacy = self.definition.reverse(ref.table, items)
        except QuarantineError as exc:
            return _Rebuilt(held, None, exc, items)
        except Exception as exc:  # never let one owner block a shard
            return _Rebuilt(held, None, TransformFailed(f"reverse raised {type(exc).__name__}: {exc}"), items)
        return _Rebuilt(held, legacy, items=items)

    # ---------------------------------------------------------------- reads
    def _legacy_key(self, ref: SourceRef) -> dict[str, Any]:
        return to_wire(self.definition.source(ref.table).key_of(ref))

    def _state_key(self, ref: SourceRef) -> dict[str, Any]:
        return keys.reverse_state(ref.as_text())

    async def _read_state(self, ref: SourceRef) -> tuple[int, set[TargetKey]]:
        item = await self._get(self.settings.control_table, self._state_key(ref))
        if item is None:
            return 0, set()
        return int(item["version"]), {key_from_text(k) for k in item.get("held", [])}

    async def _get(self, table: str, key: dict[str, Any]) -> Item | None:
        try:
            response = await self.client.get_item(TableName=table, Key=key, ConsistentRead=True)
        except Exception as exc:
            raise translate(exc, f"read {table}") from exc
        item = response.get("Item")
        return to_native(item) if item else None

    async def _indexed_keys(self, ref: SourceRef) -> set[TargetKey]:
        lookup = self.definition.index_lookup(ref)
        if lookup is None:
            return set()
        index, hash_attr, hash_value, range_attr, prefix = lookup
        names = {"#h": hash_attr, "#r": range_attr}
        names.update({f"#k{i}": a for i, a in enumerate(self.definition.target_key_attrs)})
        kwargs: dict[str, Any] = {
            "TableName": self.settings.target_table,
            "IndexName": index,
            "KeyConditionExpression": "#h = :h AND begins_with(#r, :p)",
            "ProjectionExpression": ", ".join(f"#k{i}" for i in range(len(self.definition.target_key_attrs))),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": {":h": {"S": hash_value}, ":p": {"S": prefix}},
        }
        keys: set[TargetKey] = set()
        while True:
            try:
                page = await self.client.query(**kwargs)
            except Exception as exc:
                raise translate(exc, f"query {self.settings.target_table} {index}") from exc
            keys.update(self.definition.target_key(to_native(i)) for i in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return keys
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    async def _read_owned(self, ref: SourceRef, candidates: set[TargetKey]) -> list[Item]:
        """Strongly consistent reads of the candidates; the live items `ref` owns, by key."""
        attrs = self.definition.target_key_attrs
        table = self.settings.target_table
        keys = [to_wire(dict(zip(attrs, k, strict=True))) for k in sorted(candidates)]
        found = [to_native(raw) for raw in await batch_get_items(self.client, table, keys, f"read {table}")]
        owned = [i for i in found if not is_tombstone(i) and self.definition.owner(i) == ref]
        return sorted(owned, key=self.definition.target_key)

    # ---------------------------------------------------------------- write
    async def _commit(self, ref: SourceRef, version: int, rebuilt: _Rebuilt, *, legacy_write: bool = True) -> str:
        """Version bump + legacy write in one transaction: 'ok', 'conflict' or 'rejected'."""
        names = {"#v": "version", "#h": "held", "#u": "updated_at"}
        values: dict[str, Any] = {
            ":next": {"N": str(version + 1)},
            ":held": {"L": [{"S": key_text(k)} for k in sorted(rebuilt.held)]},
            ":now": {"N": repr(round(self.clock(), 3))},
        }
        if version == 0:
            condition = "attribute_not_exists(PK)"
        else:
            condition = "#v = :v"
            values[":v"] = {"N": str(version)}
        actions: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self.settings.control_table,
                    "Key": self._state_key(ref),
                    "UpdateExpression": "SET #v = :next, #h = :held, #u = :now",
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                }
            }
        ]
        legacy_table = self.settings.physical_name(ref.table)
        if legacy_write and rebuilt.error is None:
            if rebuilt.legacy is None:
                actions.append({"Delete": {"TableName": legacy_table, "Key": self._legacy_key(ref)}})
            else:
                actions.append({"Put": {"TableName": legacy_table, "Item": to_wire(rebuilt.legacy)}})
        try:
            await self.client.transact_write_items(TransactItems=actions)
        except Exception as exc:
            code = error_code(exc)
            if code == "TransactionCanceledException":
                reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]  # type: ignore[attr-defined]
                if reasons and reasons[0] == "ConditionalCheckFailed":
                    return "conflict"
                if "TransactionConflict" in reasons:
                    return "conflict"
                if len(reasons) > 1 and reasons[1] == "ValidationError":
                    return "rejected"
                raise TransientError(f"reverse write to {legacy_table} cancelled: {reasons}") from exc
            if code == "ValidationException" and len(actions) > 1:
                return "rejected"
            raise translate(exc, f"write {legacy_table}") from exc
        return "ok"


__all__ = ["ReverseEngine", "ReverseStats", "reverse_quarantine_ref"]
