"""The race-safe write protocol: how every writer changes the target table.

There are three kinds of writers, and the design rests on telling them apart:

* **Fresh** writers apply a change *in stream order*: the forward mirror.
  DynamoDB Streams deliver each item's changes exactly once and in order, so
  the newest record the mirror has applied for a source item is the truth for
  that item. A fresh write may replace a target item that is absent, a
  tombstone, or owned by the same source item (`definition.owner_condition`).
* **Validated** writers (the collision waker, repair, quarantine retry) read
  the source item strongly and write in one transaction that also carries a
  `ConditionCheck` on the source item: every attribute still equals what was
  read. If the transaction commits, what it wrote was the source's current
  state at that instant, so it is as good as fresh; if the source changed, it
  is cancelled and re-read. A validated write also removes, in the same
  transaction, the keys the item's last clean version left behind.
* **Stale** writers apply an image read in bulk at some time ``read_at``:
  the backfill's scans. The image may be outdated when the write lands. A
  stale write therefore only ever *creates*: its condition is "the key is
  absent, or holds a tombstone older than ``read_at - margin``". It never
  replaces a live item, so it cannot land over a newer state (race 1), and a
  recent tombstone stops it from resurrecting a deleted item or a moved key
  (races 2, 3, 4).

**Tombstones** exist only while stale writers may be about. Stale writers
hold leases in the control table (`StaleWriterRegistry`); while any lease is
valid, a fresh writer that removes a target item (a REMOVE, an account
turning `deleted`, a rename or transfer, a removed team id) leaves a
tombstone there instead of deleting: ``entity = _dynashift_tombstone``, the
time of removal and a random id. Otherwise it deletes, conditionally on
ownership. A new stale writer waits out the registry's refresh period plus
the margin before its first read, so a removal made without a tombstone
happened before it could read the removed item. The margin (setting
`consistency_margin_s`) covers eventually consistent scan staleness and
clock skew. A stale writer must issue its write within
`stale_write_horizon_s` of its read (it re-reads otherwise), so tombstones
need not live much longer than horizon + margin. But *issued* is not
*landed*: a request can reach the table seconds later (a loaded engine,
botocore's own retries), and a tombstone swept in between lets the write
create the removed key after all. So the sweeper (`sweep_tombstones`)
deletes a tombstone only if it is older than horizon + margin **and** older
than the oldest read any live stale writer may still write from, minus the
margin (`StaleWriterRegistry.oldest_read`; writers publish it with their
lease). Invariant: a tombstone is deleted only once no write that it could
stop can still land. A stale writer therefore never leaves a write in
flight behind its own back (`gather_settled`). `mirror run` sweeps while idle and when it
drains, the backfill sweeps when its last worker is done and `finalize`
sweeps everything, so none is left once the migration is finalised.
Tombstones carry a TTL as a last safety net and sit in GSI1 under
``_DYNASHIFT#TOMBSTONE#<bucket>``, so the sweeper queries, never scans.

**Ownership and collisions (race 5).** A put that finds the key owned by
*another* source item quarantines the newcomer with reason `key_collision`,
never overwriting the holder. The newcomer registers as a *waiter* on the
key in the control table, then re-tries the put. Every remover of a key
queries that key's waiters *after* removing it, and wakes them with a
validated write. Both sides write first and read second, with strongly
consistent reads, so at least one sees the other: no lost wake-up. The
newcomer's writes begin with the collision summary (`note_collision`), so a
remover may read that first and skip the keys it does not name: the forward
mirror collects a batch's releases and reads it once, after all of them
(`collecting_releases`, `wake_released`).

**Bad data (race 7)** never raises out of here: a `QuarantineError` becomes
a quarantine entry and the call succeeds. Only transient faults propagate
(as exceptions) so that the caller retries.

**Retries (race 6)** are idempotent: re-applying a record writes the same
items under the same conditions. A later record applied before an earlier,
failed one is retried is re-applied after it, because a retried stream batch
is redelivered from the failed record on, in order. That holds only if a
failed attempt has nothing left in flight: every concurrent write is joined
with `gather_settled`, never a bare `asyncio.gather`, which returns at the
first error while its siblings (a slow request, one in botocore's back-off)
stay pending in the engine's loop, to resume in a later batch and land after
the redelivered records, e.g. re-adding a membership the account has left.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from boto3.dynamodb.conditions import Attr

from shared.core.aws import batch_get_items, error_code, translate
from shared.core.codec import to_native, to_wire
from shared.core.definition import Item, MigrationDefinition, SourceRef, TargetKey
from shared.core.errors import (
    KeyCollision,
    QuarantineError,
    StoreError,
    TransformFailed,
    TransientError,
    WriteRejected,
)
from shared.core.itemsize import check_target_items
from shared.core.settings import Settings
from shared.protocol.conditions import image_unchanged, render
from shared.store.control import ControlStore, QuarantineEntry, StaleWriterRegistry

TOMBSTONE = "_dynashift_tombstone"
TOMB_BUCKETS = 16
TOMB_TTL_S = 24 * 3600
VALIDATED_RETRIES = 5
# The claimable keys released within `Applier.collecting_releases` (None outside it).
_RELEASED: ContextVar[set[TargetKey] | None] = ContextVar("dynashift_released_keys", default=None)

Clock = Callable[[], float]


def is_tombstone(item: Item | None) -> bool:
    return bool(item) and item.get("entity") == TOMBSTONE  # type: ignore[union-attr]


def tombstone_item(definition: MigrationDefinition, key: TargetKey, now: float) -> Item:
    """The item left at a removed key while stale writers may still be about."""
    ms = int(now * 1000)
    bucket = zlib.crc32("\x1f".join(key).encode()) % TOMB_BUCKETS
    item: Item = dict(zip(definition.target_key_attrs, key, strict=True))
    item.update(
        {
            "entity": TOMBSTONE,
            "_ds_deleted_at": ms,
            "_ds_tomb_id": uuid.uuid4().hex,
            "expires_at": int(now) + TOMB_TTL_S,
            "GSI1PK": f"_DYNASHIFT#TOMBSTONE#{bucket}",
            "GSI1SK": f"{ms:015d}#" + "#".join(key),
        }
    )
    return item


INSERT_BATCH = 25  # BatchExecuteStatement's most statements per request
INSERT_REQUESTS_IN_FLIGHT = 4  # per write_stale_batch call (a page)


def insert_statement(table: str, item: Item) -> dict[str, Any]:
    """A PartiQL INSERT of `item` (create-only), its values as parameters."""
    wire = to_wire(item)
    fields = ", ".join("'" + name.replace("'", "''") + "': ?" for name in wire)
    return {"Statement": f'INSERT INTO "{table}" VALUE {{{fields}}}', "Parameters": list(wire.values())}


@dataclass
class ApplyResult:
    """What one apply did; counters are summed into metrics and reports."""

    written: int = 0
    removed: int = 0
    skipped: int = 0  # stale write refused: a newer state is already there
    quarantined: QuarantineError | None = None
    cleared_quarantine: bool = False
    woken: int = 0
    retried: int = 0  # validated write re-read because the source moved on


@dataclass
class _PutOutcome:
    ok: bool
    existing: Item | None = None  # the item that made the condition fail


@dataclass
class Applier:
    """Applies source changes to the target with the protocol above."""

    settings: Settings
    definition: MigrationDefinition
    client: Any  # aiobotocore DynamoDB client
    control: ControlStore
    clock: Clock = time.time
    sleep: Callable[[float], Any] = asyncio.sleep
    tombstones: bool = True  # the last answer of `tombstone_source` (or fixed, without one)
    last_tombstone_at: float = 0.0
    # Asked right before every removal: may a stale writer be about? The
    # mirror, repair and quarantine retry answer from the stale-writer
    # registry (`StaleWriterWatch`: re-read whenever its last read is older
    # than `stale_writer_refresh_s`). Deciding per removal, not per batch or
    # per run, is what the fence relies on: a removal made without a
    # tombstone removes a key the source gave up less than the refresh period
    # after a registry read that saw no stale writer, so before any stale
    # writer's first read, even when a batch or a repair takes much longer
    # than the refresh period.
    tombstone_source: Callable[[], Awaitable[bool]] | None = None

    async def tombstones_now(self) -> bool:
        if self.tombstone_source is not None:
            self.tombstones = await self.tombstone_source()
        return self.tombstones

    @property
    def target(self) -> str:
        return self.settings.target_table

    @property
    def margin_ms(self) -> int:
        return int(self.settings.consistency_margin_s * 1000)

    # ================================================================ fresh path
    async def apply_change(
        self, ref: SourceRef, images: list[Item | None], entry: QuarantineEntry | None
    ) -> ApplyResult:
        """Apply a chain of images of one source item, in stream order.

        ``images[0]`` is the first record's OldImage, ``images[1:]`` the
        NewImages of the records in order (None where the item is absent).
        Only the last clean image matters; earlier ones only tell which target
        keys may have to go.
        """
        result = ApplyResult()
        clean_index, targets, final_error = self._last_clean(ref, images)
        if clean_index is None:
            # Nothing clean in this chain: the target stays as the last clean
            # version left it; remember what that is for the next clean write.
            # Both sources, always: an entry may exist already without them
            # (the backfill quarantines what it reads, knowing no held keys),
            # and the records applied next carry only the bad images.
            held = (entry.held_keys if entry else set()) | self._keys_of_clean(ref, images[0])
            assert final_error is not None
            await self._quarantine(ref, final_error, images[-1], held)
            result.quarantined = final_error
            return result
        new_keys = {self.definition.target_key(t) for t in targets}
        candidates: set[TargetKey] = set(entry.held_keys) if entry else set()
        for image in images[:clean_index]:
            if image is not None:
                candidates |= self.definition.candidate_keys(ref.table, image)

        outcomes = await gather_settled(*(self._put_fresh(ref, t) for t in targets))
        collided = [(t, o) for t, o in zip(targets, outcomes, strict=True) if not o.ok]
        result.written = len(targets) - len(collided)
        if collided:

            async def retry() -> bool:
                again = await gather_settled(*(self._put_fresh(ref, item) for item, _ in collided))
                return all(o.ok for o in again)

            still = await self._handle_collisions(ref, images[clean_index], collided, candidates, retry)
            if still:
                result.quarantined = still
                if final_error is not None:
                    # The item is bad now: that is its reason, not the collision of an older version.
                    await self._quarantine(ref, final_error, images[-1], candidates)
                    result.quarantined = final_error
                result.written = len(targets) - len(collided)
                return result
            result.written = len(targets)

        removals = candidates - new_keys
        removed = await gather_settled(*(self._remove(ref, key) for key in sorted(removals)))
        result.removed = sum(1 for r in removed if r is not None)
        for tomb in removed:
            if tomb is not None:
                result.woken += await self._wake(tomb)

        if final_error is not None:
            await self._quarantine(ref, final_error, images[-1], new_keys)
            result.quarantined = final_error
        elif entry is not None or collided:
            # Last, after the removals: a failure before this point is redelivered
            # with the entry, and so with its held keys, still there.
            await self.control.quarantine_clear(ref)
            result.cleared_quarantine = True
        return result

    def _last_clean(
        self, ref: SourceRef, images: list[Item | None]
    ) -> tuple[int | None, list[Item], QuarantineError | None]:
        final_error: QuarantineError | None = None
        for index in range(len(images) - 1, 0, -1):
            image = images[index]
            try:
                targets = self._transform(ref, image)
            except QuarantineError as exc:
                if index == len(images) - 1:
                    final_error = exc
                continue
            return index, targets, final_error
        return None, [], final_error

    def _transform(self, ref: SourceRef, image: Item | None) -> list[Item]:
        if image is None:
            return []
        try:
            targets = self.definition.transform(ref.table, image)
        except QuarantineError:
            raise
        except Exception as exc:  # never let one item block a shard
            raise TransformFailed(f"transform raised {type(exc).__name__}: {exc}") from exc
        check_target_items(targets)
        return targets

    def transform_checked(self, ref: SourceRef, image: Item) -> list[Item]:
        """The transform plus the engine's own checks (size); raises QuarantineError."""
        return self._transform(ref, image)

    def _keys_of_clean(self, ref: SourceRef, image: Item | None) -> set[TargetKey]:
        if image is None:
            return set()
        try:
            return {self.definition.target_key(t) for t in self._transform(ref, image)}
        except QuarantineError:
            return self.definition.candidate_keys(ref.table, image)

    async def _put_fresh(self, ref: SourceRef, item: Item) -> _PutOutcome:
        condition = Attr(self.definition.target_key_attrs[0]).not_exists() | Attr("entity").eq(TOMBSTONE)
        condition = condition | self.definition.owner_condition(ref)
        return await self._conditional_put(item, condition)

    async def _conditional_put(self, item: Item, condition: Any) -> _PutOutcome:
        try:
            await self.client.put_item(
                TableName=self.target,
                Item=to_wire(item),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **render(condition),
            )
            return _PutOutcome(True)
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                old = exc.response.get("Item")  # type: ignore[attr-defined]
                return _PutOutcome(False, to_native(old) if old else None)
            if error_code(exc) == "ValidationException":
                raise WriteRejected(f"DynamoDB rejected {item.get('PK')}/{item.get('SK')}: {exc}") from exc
            raise translate(exc, f"write {self.target}") from exc

    async def _remove(self, ref: SourceRef, key: TargetKey) -> Item | None:
        """Remove an item this source owns: a tombstone while stale writers may
        be about, else a conditional delete. Returns what now marks the key
        (the tombstone, or just the key attributes), None if another source
        item holds it.

        A key that is already absent or a tombstone counts as released too,
        and its waiters are woken again: a redelivered record must redo the
        wake-up its first attempt may not have finished. The first attempt
        may have removed the key (or left a tombstone while a backfill ran)
        and then failed before or during the wake-up; the redelivery finds
        nothing of ours there, and without this the waiter would stay
        quarantined for good. Without stale writers about, a tombstone is
        garbage, so the delete removes it as well."""
        not_held = Attr(self.definition.target_key_attrs[0]).not_exists() | Attr("entity").eq(TOMBSTONE)
        condition = not_held | self.definition.owner_condition(ref)
        key_item: Item = dict(zip(self.definition.target_key_attrs, key, strict=True))
        if await self.tombstones_now():
            now = self.clock()
            tomb = tombstone_item(self.definition, key, now)
            outcome = await self._conditional_put(tomb, condition)
            if not outcome.ok:
                return None  # another source item holds this key: not ours to remove
            self.last_tombstone_at = max(self.last_tombstone_at, now)
            return tomb
        try:
            # A delete of an absent key succeeds (and costs the same): nothing to tell apart.
            await self.client.delete_item(TableName=self.target, Key=to_wire(key_item), **render(condition))
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return None  # held by another source item
            raise translate(exc, f"delete from {self.target}") from exc  # nosec B608  (an error message, not SQL)
        return key_item

    # =============================================================== collisions
    async def _handle_collisions(
        self,
        ref: SourceRef,
        image: Item | None,
        collided: list[tuple[Item, _PutOutcome]],
        held: set[TargetKey],
        retry: Callable[[], Any] | None,
        validated: bool = False,
    ) -> KeyCollision | None:
        """Quarantine, register as waiter, then re-check (write first, read second).

        None: the re-try took the key. A `validated` writer (no re-try) records
        the collision only if the source still holds `image`; None then means
        it changed since the read, and nothing was recorded: read again.
        """
        first_item, first = collided[0]
        key = self.definition.target_key(first_item)
        holder = self.definition.owner(first.existing or {})
        error = KeyCollision(
            f"target key {'/'.join(key)} is already owned by "
            f"{holder.table + ' ' + '|'.join(holder.key) if holder else 'another item'}; "
            "it will take the key by itself once the holder moves or is deleted"
        )
        # Into the collision summary first: a remover or mirror that reads it and
        # finds neither this item nor its keys read before our writes below.
        await self.control.note_collision(ref, [self.definition.target_key(item) for item, _ in collided])
        token = await self._quarantine(ref, error, image, held, collision_key=key,
                                       unless_changed=image if validated else None)
        if validated and token is None:
            return None
        error.write_token = token  # type: ignore[attr-defined]
        tokens = {}
        for item, _ in collided:
            item_key = self.definition.target_key(item)
            tokens[item_key] = await self.control.waiter_add(item_key, ref)
        if retry is None:
            return error
        # A release that happened before our registration is seen by this
        # re-try; one after it will find our waiter entry and wake us.
        if await retry():
            for item_key, token in tokens.items():
                await self.control.waiter_remove(item_key, ref, token)
            return None  # the entry goes once the old keys are removed (`apply_change`)
        return error

    async def _wake(self, released: Item) -> int:
        """After removing a key, re-apply every source item waiting for it (or,
        while releases are collected, remember the key for `wake_released`)."""
        key = self.definition.target_key(released)
        if not self.definition.shared_key(key):
            return 0  # no other source item can claim it: nobody can be waiting
        collected = _RELEASED.get()
        if collected is not None:
            collected.add(key)
            return 0
        return await self._wake_key(key)

    @contextlib.contextmanager
    def collecting_releases(self) -> Iterator[set[TargetKey]]:
        """Within this block (and the tasks it starts), released claimable keys are
        collected into the set it gives instead of being looked up one by one;
        hand them to `wake_released` afterwards.

        The forward mirror does this per batch. Each lookup is a strongly
        consistent read (1 read unit, on AWS too) after every removal of a
        claimable key, and almost every one finds nobody. Collected, a batch reads
        the collision summary once, after all of its removals, and looks up only
        the keys it may name. The argument for no lost wake-up is unchanged: every
        read of the remover still begins after its removal completed."""
        released: set[TargetKey] = set()
        token = _RELEASED.set(released)
        try:
            yield released
        finally:
            _RELEASED.reset(token)

    async def wake_released(self, released: set[TargetKey]) -> int:
        """Wake the waiters of the collected keys (`collecting_releases`): one read of
        the collision summary, then a lookup per key it may name. A transient fault
        propagates: the caller fails the batch, whose redelivery releases the keys
        again (`_remove`)."""
        if not released:
            return 0
        summary = await self.control.collision_summary()
        woken = 0
        for key in sorted(released):
            if summary.may_be_waited_for(key):
                woken += await self._wake_key(key)
        return woken

    async def _wake_key(self, key: TargetKey) -> int:
        woken = 0
        for waiter, token in await self.control.waiters(key):
            outcome = await self.apply_validated(waiter)  # it reads the waiter's entry (held keys) itself
            if not isinstance(outcome.quarantined, KeyCollision):
                await self.control.waiter_remove(key, waiter, token)
            woken += 1
        return woken

    # ============================================================ validated path
    async def read_source(self, ref: SourceRef) -> tuple[Item | None, float]:
        """Strongly consistent read of a source item, with the time it was taken."""
        source = self.definition.source(ref.table)
        read_at = self.clock()
        try:
            response = await self.client.get_item(
                TableName=self.settings.physical_name(ref.table),
                Key=to_wire(source.key_of(ref)),
                ConsistentRead=True,
            )
        except Exception as exc:
            raise translate(exc, f"read {self.settings.physical_name(ref.table)}") from exc
        item = response.get("Item")
        return (to_native(item) if item else None), read_at

    async def apply_validated(self, ref: SourceRef, *, held: set[TargetKey] | None = None) -> ApplyResult:
        """Re-read a source item and apply it in a transaction validated against it.

        Used by the collision waker, repair, quarantine retry and the
        backfill's fallback. `held` are keys the caller knows the item may
        still hold in the target. The item's quarantine entry is read here, on
        every attempt: its `held_keys` (what the last clean version left) are
        removed too, and the same transaction clears exactly that entry (or
        checks there is none). A writer that cleared an entry without removing
        its held keys would strand them: the mirror learns them only from the
        entry, because the records it applies next carry the bad images.
        """
        result = ApplyResult()
        for _attempt in range(VALIDATED_RETRIES):
            entry = (await self.control.quarantine_get_many([ref])).get(ref)
            image, _ = await self.read_source(ref)
            if image is None:
                return result  # deleted at the source: its REMOVE is the mirror's to apply
            attempt_held = set(held or ()) | (entry.held_keys if entry else set())
            try:
                targets = self._transform(ref, image)
            except QuarantineError as exc:
                await self._quarantine_stale(ref, exc, image, attempt_held)
                result.quarantined = exc
                return result
            status, detail = await self._transact_validated(ref, image, targets, attempt_held, entry)
            if status == "ok":
                result.written += len(targets)
                result.removed += len(detail)
                result.cleared_quarantine = True  # the transaction cleared the entry, or saw none
                for released in detail:
                    result.woken += await self._wake(released)
                return result
            if status == "collision":
                item, existing = detail
                result.quarantined = await self._handle_collisions(
                    ref, image, [(item, _PutOutcome(False, existing))], attempt_held, retry=None, validated=True
                )
                if result.quarantined is None:  # the source changed since the read: read again
                    result.retried += 1
                    continue
                # Re-check after registering: if the key is free now, go again. The
                # entry stays even if the source changes later: it was recorded
                # while the source held this image, and the mirror rewrites or
                # clears it (with its held keys) when it applies the change.
                current = await self._get_target(self.definition.target_key(item))
                if current is not None and not is_tombstone(current) and self.definition.owner(current) != ref:
                    return result
                result.quarantined = None
                continue
            # status == "changed": the source moved on since our read; read again.
            result.retried += 1
        return result

    async def _transact_validated(
        self, ref: SourceRef, image: Item, targets: list[Item], held: set[TargetKey], entry: QuarantineEntry | None
    ) -> tuple[str, Any]:
        new_keys = {self.definition.target_key(t) for t in targets}
        # Held keys are a superset (entries merge what every writer knew); in a
        # transaction a key another item holds now would cancel everything, so
        # those are skipped (a change before the commit fails the removal's
        # condition: re-read). An absent key is not skipped: while stale writers
        # may be about it gets a tombstone, like any removal, or a backfill page
        # read before the item left it would create it (the item was never
        # copied there: written before the mirror started, not yet backfilled).
        found = {key: await self._get_target(key) for key in sorted(held - new_keys)}
        removals = [key for key, item in found.items() if not self._held_by_another(ref, item)]
        source = self.definition.source(ref.table)
        actions: list[dict[str, Any]] = [
            {
                "ConditionCheck": {
                    "TableName": self.settings.physical_name(ref.table),
                    "Key": to_wire(source.key_of(ref)),
                    **image_unchanged(image),
                }
            }
        ]
        fresh = render(
            Attr(self.definition.target_key_attrs[0]).not_exists()
            | Attr("entity").eq(TOMBSTONE)
            | self.definition.owner_condition(ref)
        )
        for item in targets:
            actions.append(
                {"Put": {"TableName": self.target, "Item": to_wire(item),
                         "ReturnValuesOnConditionCheckFailure": "ALL_OLD", **fresh}}
            )
        released: list[Item] = []
        tombstoning = bool(removals) and await self.tombstones_now()
        if not tombstoning:  # deleting: only what the item holds (nothing is left at the others)
            removals = [key for key in removals if self._holds(ref, found[key])]
        now = self.clock()
        for key in removals:
            if tombstoning:
                tomb = tombstone_item(self.definition, key, now)
                actions.append({"Put": {"TableName": self.target, "Item": to_wire(tomb), **fresh}})
                released.append(tomb)
            else:
                key_item = dict(zip(self.definition.target_key_attrs, key, strict=True))
                owned = render(Attr(self.definition.target_key_attrs[0]).not_exists() | self.definition.owner_condition(ref))
                actions.append({"Delete": {"TableName": self.target, "Key": to_wire(key_item), **owned}})
                released.append(key_item)
        actions.append(self.control.quarantine_settle_action(ref, entry))  # last: reasons index the targets
        try:
            await self.client.transact_write_items(TransactItems=actions)
        except Exception as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise translate(exc, f"write {self.target}") from exc
            reasons = exc.response.get("CancellationReasons", [])  # type: ignore[attr-defined]
            codes = [r.get("Code") for r in reasons]
            if codes and codes[0] == "ConditionalCheckFailed":
                return "changed", None
            for index, reason in enumerate(reasons[1 : 1 + len(targets)]):
                if reason.get("Code") == "ConditionalCheckFailed":
                    existing = to_native(reason["Item"]) if reason.get("Item") else None
                    return "collision", (targets[index], existing)
            if any(c in ("ThrottlingError", "TransactionConflict", "ProvisionedThroughputExceeded") for c in codes):
                raise TransientError(f"transaction on {self.target} cancelled: {codes}") from exc
            return "changed", None  # a removal lost its key meanwhile: read again
        if tombstoning:
            self.last_tombstone_at = max(self.last_tombstone_at, now)
        return "ok", released

    def _holds(self, ref: SourceRef, item: Item | None) -> bool:
        return item is not None and not is_tombstone(item) and self.definition.owner(item) == ref

    def _held_by_another(self, ref: SourceRef, item: Item | None) -> bool:
        return item is not None and not is_tombstone(item) and self.definition.owner(item) != ref

    async def _get_target(self, key: TargetKey) -> Item | None:
        try:
            response = await self.client.get_item(
                TableName=self.target,
                Key=to_wire(dict(zip(self.definition.target_key_attrs, key, strict=True))),
                ConsistentRead=True,
            )
        except Exception as exc:
            raise translate(exc, f"read {self.target}") from exc
        item = response.get("Item")
        return to_native(item) if item else None

    # ================================================================ stale path
    def stale_condition(self, read_at: float) -> Any:
        """Create-only: absent, or a tombstone older than the read (minus margin)."""
        cutoff = int(read_at * 1000) - self.margin_ms
        return Attr(self.definition.target_key_attrs[0]).not_exists() | (
            Attr("entity").eq(TOMBSTONE) & Attr("_ds_deleted_at").lt(cutoff)
        )

    def stale_outcome(self, ref: SourceRef, existing: Item | None) -> str:
        """Why a stale write's condition failed: 'newer', 'tombstone' or 'collision'."""
        if is_tombstone(existing):
            return "tombstone"
        holder = self.definition.owner(existing or {})
        return "newer" if holder == ref else "collision"

    # =============================================================== quarantine
    async def _quarantine(
        self,
        ref: SourceRef,
        error: QuarantineError,
        image: Item | None,
        held: set[TargetKey],
        collision_key: TargetKey | None = None,
        unless_changed: Item | None = None,
    ) -> str | None:
        """Record the entry; with `unless_changed` (a validated writer's read of the
        source), only if the source still holds that image (None if not)."""
        check = None
        if unless_changed is not None:
            source = self.definition.source(ref.table)
            check = {"TableName": self.settings.physical_name(ref.table), "Key": to_wire(source.key_of(ref)),
                     **image_unchanged(unless_changed)}
        return await self.control.quarantine_put(
            QuarantineEntry(
                ref=ref,
                reason=error.reason,
                message=error.message,
                image=image,
                held_keys=set(held),
                detected_at=self.clock(),
                collision_key=collision_key,
            ),
            unless_changed=check,
        )

    async def _quarantine_stale(
        self, ref: SourceRef, error: QuarantineError, image: Item, held: set[TargetKey]
    ) -> None:
        """Quarantine from a possibly outdated read: create-only, then re-check.

        An existing entry is newer or as new (the mirror's), so it is kept.
        If the source changed since our read, the mirror may have cleared the
        entry before ours landed; re-reading after writing (while the mirror
        reads after the source write) means one of us sees the other, so we
        then drop our entry, but only if it is still ours (write token).
        """
        token = await self.control.quarantine_put(
            QuarantineEntry(ref=ref, reason=error.reason, message=error.message, image=image,
                            held_keys=set(held), detected_at=self.clock()),
            only_if_absent=True,
        )
        if token is not None:
            await self._drop_quarantine_if_changed(ref, image, token)

    async def _quarantine_stale_many(self, bad: list[tuple[SourceRef, QuarantineError, Item]]) -> None:
        """`_quarantine_stale` for the bad rows of one page: the entries at once, then
        one strongly consistent read of their sources (BatchGetItem, not one GetItem
        each), then the entries whose source changed are dropped. Same order per
        item: write, then read."""
        tokens = await gather_settled(*(
            self.control.quarantine_put(
                QuarantineEntry(ref=ref, reason=error.reason, message=error.message, image=image,
                                held_keys=set(), detected_at=self.clock()),
                only_if_absent=True)
            for ref, error, image in bad))
        written = [(ref, image, token) for (ref, _, image), token in zip(bad, tokens, strict=True) if token is not None]
        if not written:
            return
        current = await self.read_sources([ref for ref, _, _ in written])
        await gather_settled(*(self.control.quarantine_clear(ref, token=token)
                               for ref, image, token in written if current.get(ref) != image))

    async def read_sources(self, refs: list[SourceRef]) -> dict[SourceRef, Item]:
        """Strongly consistent reads of many source items (BatchGetItem); an absent item is left out."""
        found: dict[SourceRef, Item] = {}
        by_table: dict[str, list[SourceRef]] = {}
        for ref in refs:
            by_table.setdefault(ref.table, []).append(ref)
        for table, wanted in by_table.items():
            source = self.definition.source(table)
            physical = self.settings.physical_name(table)
            keys = [to_wire(source.key_of(ref)) for ref in dict.fromkeys(wanted)]
            for raw in await batch_get_items(self.client, physical, keys, f"read {physical}"):
                item = to_native(raw)
                found[source.ref(item)] = item
        return found

    async def quarantine_from_stale_read(self, ref: SourceRef, error: QuarantineError, image: Item) -> None:
        """Bad data met by the backfill: quarantine it, race-safely."""
        await self._quarantine_stale(ref, error, image, set())

    async def _drop_quarantine_if_changed(self, ref: SourceRef, image: Item | None, token: str | None) -> None:
        current, _ = await self.read_source(ref)
        if current != image:
            await self.control.quarantine_clear(ref, token=token)

    # ============================================================ backfill path
    async def write_stale(self, ref: SourceRef, image: Item, read_at: float) -> ApplyResult:
        """Apply one item read by a scan at `read_at` (the backfill's write).

        Create-only. A put refused because the item is already there and
        ours means the mirror got there first with this or a newer version:
        skip. Refused by a tombstone or by another owner, it falls back to a
        validated write, which reads the source's current state and applies
        exactly that (or quarantines a collision).
        """
        result = ApplyResult()
        try:
            targets = self._transform(ref, image)
        except QuarantineError as exc:
            await self._quarantine_stale(ref, exc, image, set())
            result.quarantined = exc
            return result
        if self.clock() - read_at > self.settings.stale_write_horizon_s:
            return await self.apply_validated(ref)  # too old to trust: read again
        condition = self.stale_condition(read_at)

        async def put(target: Item) -> _PutOutcome:
            # Checked again right before sending: the tombstones that protect
            # this write only live `stale_write_horizon_s` past the read.
            if self.clock() - read_at > self.settings.stale_write_horizon_s:
                return _PutOutcome(False, None)  # handled below as "not ours": validated
            return await self._conditional_put(target, condition)

        outcomes = await gather_settled(*(put(t) for t in targets))
        refused = [o for o in outcomes if not o.ok]
        result.written = len(targets) - len(refused)
        if all(self.stale_outcome(ref, o.existing) == "newer" for o in refused):
            result.skipped = len(refused)
            return result
        validated = await self.apply_validated(ref)
        validated.written += result.written
        return validated

    async def write_stale_batch(self, items: list[tuple[SourceRef, Item]], read_at: float) -> list[ApplyResult]:
        """`write_stale` for many items, most of them in batches of create-only INSERTs.

        PartiQL's INSERT creates an item only where none exists (a duplicate
        is refused per statement), at standard write units, up to
        `INSERT_BATCH` statements a request: one request for 25 items instead
        of 25. Absent is a strict part of the stale condition (absent, or a
        tombstone older than the read), so an INSERT that succeeds is a write
        `write_stale` would have made. Every item with a statement that did
        not succeed (already there: the mirror's newer version, a tombstone,
        another owner; or any other error) goes through `write_stale` itself,
        which decides exactly as before. So does everything once the read is
        older than the horizon. Returns one result per item, in order.
        """
        results: list[ApplyResult | None] = [None] * len(items)
        statements: list[tuple[int, Item]] = []  # (item index, target item)
        bad: list[tuple[SourceRef, QuarantineError, Item]] = []
        for index, (ref, image) in enumerate(items):
            try:
                targets = self._transform(ref, image)
            except QuarantineError as exc:
                bad.append((ref, exc, image))
                results[index] = ApplyResult(quarantined=exc)
                continue
            statements.extend((index, target) for target in targets)
        again: set[int] = set()
        slots = asyncio.Semaphore(INSERT_REQUESTS_IN_FLIGHT)

        async def send(chunk: list[tuple[int, Item]]) -> None:
            async with slots:
                # Checked right before sending, as write_stale does: the tombstones
                # that protect this write only live `stale_write_horizon_s` past the read.
                if self.clock() - read_at > self.settings.stale_write_horizon_s:
                    again.update(index for index, _ in chunk)  # too old to trust: write_stale validates
                    return
                refused = await self._insert(chunk)
                again.update(chunk[i][0] for i in refused)

        # The bad rows' quarantine alongside the INSERTs: they touch other items.
        quarantined = [self._quarantine_stale_many(bad)] if bad else []
        await gather_settled(*quarantined, *(send(statements[start:start + INSERT_BATCH])
                                             for start in range(0, len(statements), INSERT_BATCH)))
        targets_of: dict[int, int] = {}
        for index, _ in statements:
            targets_of[index] = targets_of.get(index, 0) + 1
        retried = await gather_settled(*(self.write_stale(*items[index], read_at) for index in sorted(again)))
        for index, result in zip(sorted(again), retried, strict=True):
            results[index] = result
        for index in range(len(items)):
            if results[index] is None:
                results[index] = ApplyResult(written=targets_of.get(index, 0))
        return [r for r in results if r is not None]

    async def _insert(self, chunk: list[tuple[int, Item]]) -> set[int]:
        """One BatchExecuteStatement of INSERTs; the positions in `chunk` that did not succeed."""
        request = [insert_statement(self.target, target) for _, target in chunk]
        try:
            answer = await self.client.batch_execute_statement(Statements=request)
        except Exception as exc:
            if error_code(exc) == "ValidationException":
                return set(range(len(chunk)))  # each item alone, through write_stale: it names the bad one
            raise translate(exc, f"write {self.target}") from exc
        return {i for i, response in enumerate(answer.get("Responses", [])) if "Error" in response} | set(
            range(len(answer.get("Responses", [])), len(chunk)))

    async def put_stale_transaction(
        self, targets: list[Item], condition: dict[str, Any]
    ) -> tuple[dict[int, Item | None], list[int]]:
        """One TransactWriteItems of stale puts under `condition` (the backfill's
        transact mode; the keys must be distinct). Returns the positions whose
        condition failed (with the item in the way, if any) and the positions to
        send again (cancelled only because another action failed, a conflict, or
        throttling)."""
        request = [
            {"Put": {"TableName": self.target, "Item": to_wire(target),
                     "ReturnValuesOnConditionCheckFailure": "ALL_OLD", **condition}}
            for target in targets
        ]
        try:
            await self.client.transact_write_items(TransactItems=request)
            return {}, []
        except Exception as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise translate(exc, f"write {self.target}") from exc
            reasons = exc.response.get("CancellationReasons", [])  # type: ignore[attr-defined]
        refused: dict[int, Item | None] = {}
        retry: list[int] = []
        for index, reason in enumerate(reasons):
            code = reason.get("Code")
            if code == "ConditionalCheckFailed":
                refused[index] = to_native(reason["Item"]) if reason.get("Item") else None
            elif code in ("None", None):
                retry.append(index)  # cancelled only because another action failed
            elif code in ("TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"):
                retry.append(index)
            else:
                raise StoreError(f"write {self.target}: transaction cancelled: {code}: {reason.get('Message', '')}")
        if not reasons:
            retry = list(range(len(targets)))
        return refused, retry

    # ============================================================ repair's removals
    async def remove_orphan(self, ref: SourceRef, key: TargetKey) -> bool:
        """Remove `key`, held by `ref` whose source item no longer exists (repair):
        a tombstone while stale writers may be about, else a delete, either owned
        by `ref`, in one transaction that checks the source item is still absent.
        False, and nothing written, if the source came back or the key changed hands."""
        source = self.definition.source(ref.table)
        key_item = dict(zip(self.definition.target_key_attrs, key, strict=True))
        owned = render(self.definition.owner_condition(ref))
        check = {"ConditionCheck": {"TableName": self.settings.physical_name(ref.table),
                                    "Key": to_wire(source.key_of(ref)),
                                    "ConditionExpression": "attribute_not_exists(#k)",
                                    "ExpressionAttributeNames": {"#k": source.key_attrs[0]}}}
        if await self.tombstones_now():
            tomb = tombstone_item(self.definition, key, self.clock())
            action = {"Put": {"TableName": self.target, "Item": to_wire(tomb), **owned}}
        else:
            action = {"Delete": {"TableName": self.target, "Key": to_wire(key_item), **owned}}
        try:
            await self.client.transact_write_items(TransactItems=[check, action])
        except Exception as exc:
            if error_code(exc) == "TransactionCanceledException":
                return False
            raise translate(exc, f"remove orphan from {self.target}") from exc
        return True

    async def delete_exact(self, key: TargetKey, seen: Item) -> str:
        """Delete an item no source can own (or a tombstone), only if it is still
        exactly `seen` (repair). 'deleted'; 'changed' if it changed meanwhile;
        'kept' for a tombstone a stale writer's write in flight may still need."""
        if seen.get("entity") == TOMBSTONE and await self.tombstones_now():
            life_ms = (self.settings.stale_write_horizon_s + self.settings.consistency_margin_s) * 1000
            if self.clock() * 1000 - float(seen.get("_ds_deleted_at", 0)) < life_ms:
                return "kept"
        key_item = dict(zip(self.definition.target_key_attrs, key, strict=True))
        try:
            await self.client.delete_item(TableName=self.target, Key=to_wire(key_item), **image_unchanged(seen))
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return "changed"
            raise translate(exc, f"delete from {self.target}") from exc  # nosec B608 - an error message, not SQL
        return "deleted"


async def gather_settled(*awaitables: Any) -> list[Any]:
    """`asyncio.gather` that returns, or raises the first error, only once every
    awaitable has finished: a failed write never leaves its siblings in flight
    unseen. The tombstone sweeper relies on stale writers knowing what is in
    flight, and stream order on a failed batch having nothing left to land
    after its redelivery (race 6)."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def sweep_tombstones(
    settings: Settings, definition: MigrationDefinition, client: Any, *, older_than_s: float, clock: Clock = time.time
) -> int:
    """Delete tombstones older than `older_than_s` (0 = all, for finalize), but
    never one that a live stale writer's write in flight could still need:
    those from `oldest_read - margin` on stay (see the module note)."""
    cutoff_ms = int((clock() - older_than_s) * 1000)
    oldest_read = await StaleWriterRegistry(client, settings.control_table, clock).oldest_read()
    if oldest_read is not None:
        if not math.isfinite(oldest_read):
            return 0  # a live writer that does not say what it may still write: keep them all
        # A stale write read at r is stopped by tombstones from r - margin on: those stay.
        margin_ms = int(settings.consistency_margin_s * 1000)
        cutoff_ms = min(cutoff_ms, math.floor(oldest_read * 1000) - margin_ms - 1)
    if cutoff_ms <= 0:
        return 0
    removed = 0
    for bucket in range(TOMB_BUCKETS):
        kwargs: dict[str, Any] = {
            "TableName": settings.target_table,
            "IndexName": "GSI1",
            "KeyConditionExpression": "GSI1PK = :pk AND GSI1SK < :cut",
            "ExpressionAttributeValues": {
                ":pk": {"S": f"_DYNASHIFT#TOMBSTONE#{bucket}"},
                ":cut": {"S": f"{cutoff_ms:015d}$"},
            },
        }
        while True:
            try:
                page = await client.query(**kwargs)
            except Exception as exc:
                raise translate(exc, f"query tombstones in {settings.target_table}") from exc
            async def delete(raw: dict[str, Any]) -> int:
                try:
                    await client.delete_item(
                        TableName=settings.target_table,
                        Key={a: raw[a] for a in definition.target_key_attrs},
                        ConditionExpression="entity = :t AND #d = :d",
                        ExpressionAttributeNames={"#d": "_ds_deleted_at"},
                        ExpressionAttributeValues={":t": {"S": TOMBSTONE}, ":d": raw["_ds_deleted_at"]},
                    )
                    return 1
                except Exception as exc:
                    if error_code(exc) != "ConditionalCheckFailedException":
                        raise translate(exc, f"sweep tombstone in {settings.target_table}") from exc
                    return 0  # replaced by a live item meanwhile

            removed += sum(await gather_settled(*(delete(raw) for raw in page.get("Items", []))))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return removed
