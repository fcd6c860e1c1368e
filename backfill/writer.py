"""The backfill's writes: stale, create-only, in three modes.

Every item follows the stale-writer protocol of `shared.protocol.apply`: create-only,
stopped by recent tombstones, falling back to a validated write when a
tombstone or another owner is in the way, skipped when the mirror already
wrote this item or a newer one.

* ``insert``: PartiQL INSERTs, create-only, 25 per BatchExecuteStatement
  (1x write units, one request per 25 items: about a tenth of ``put``'s
  client CPU per item); an item whose INSERT is refused (already there: the
  mirror's version, a tombstone, another owner) is written as in ``put``
  (`Applier.write_stale_batch`).
* ``put``: one conditional PutItem per target item (1x write units), many in
  flight at once.
* ``transact``: TransactWriteItems of up to 100 conditional puts (2x write
  units, fewer round trips). A cancelled transaction says, in
  `CancellationReasons`, which conditions failed: exactly those items are
  dropped (and handled one by one as above) and the rest is retried. A
  transaction may not touch one key twice, so each chunk holds distinct keys.

Counts are per *source* item: written, skipped (the mirror was first) and
quarantined. How many items are written at once is the worker's
`ThrottleGovernor`'s to say (`backfill.ratelimit`): every write holds one of
its slots, its retries included, so a table that keeps throttling gets fewer
writes at once, and all of them again soon after it stops.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from backfill.ratelimit import ThrottleGovernor
from shared.core.definition import Item, SourceRef
from shared.core.errors import QuarantineError, TransientError
from shared.protocol.apply import Applier, ApplyResult, gather_settled
from shared.protocol.conditions import render

WRITE_MODES = ("insert", "put", "transact")
TRANSACT_MAX = 100
MAX_CONFLICT_RETRIES = 8


@dataclass
class WriteCounts:
    written: int = 0
    skipped: int = 0
    quarantined: int = 0

    def add(self, other: WriteCounts) -> None:
        self.written += other.written
        self.skipped += other.skipped
        self.quarantined += other.quarantined


class BackfillWriter:
    def __init__(
        self, applier: Applier, mode: str, concurrency: int = 16, governor: ThrottleGovernor | None = None
    ) -> None:
        if mode not in WRITE_MODES:
            raise ValueError(f"unknown write mode {mode!r}")
        self.applier = applier
        self.mode = mode
        # At most `concurrency` writes at once, fewer while the table keeps throttling.
        self.governor = governor or ThrottleGovernor(concurrency)

    async def write(self, items: list[tuple[SourceRef, Item]], read_at: float) -> WriteCounts:
        counts = WriteCounts()
        if self.mode == "put":
            results = await gather_settled(*(self._put_one(ref, image, read_at) for ref, image in items))
            for result in results:
                counts.add(result)
            return counts
        if self.mode == "insert":
            async with self.governor.slot():
                for result in await self.applier.write_stale_batch(items, read_at):
                    counts.add(_counts_of(result))
            return counts
        return await self._transact(items, read_at)

    async def _put_one(self, ref: SourceRef, image: Item, read_at: float) -> WriteCounts:
        async with self.governor.slot():
            result = await self.applier.write_stale(ref, image, read_at)
        return _counts_of(result)

    # -------------------------------------------------------------- transact
    async def _transact(self, items: list[tuple[SourceRef, Item]], read_at: float) -> WriteCounts:
        counts = WriteCounts()
        actions: list[tuple[SourceRef, Item, Item]] = []  # (ref, image, target item)
        for ref, image in items:
            try:
                targets = self.applier.transform_checked(ref, image)
            except QuarantineError as exc:
                await self.applier.quarantine_from_stale_read(ref, exc, image)
                counts.quarantined += 1
                continue
            actions.extend((ref, image, target) for target in targets)
        if self.applier.clock() - read_at > self.applier.settings.stale_write_horizon_s:
            # Read too long ago to be trusted: each item is re-read and validated.
            refs = list(dict.fromkeys(ref for ref, _, _ in actions))
            results = await gather_settled(*(self._validated(ref) for ref in refs))
            for result in results:
                counts.add(result)
            return counts
        condition = render(self.applier.stale_condition(read_at))
        refused: dict[SourceRef, list[Item | None]] = {}
        pending = actions
        conflicts = 0
        while pending:
            if self.applier.clock() - read_at > self.applier.settings.stale_write_horizon_s:
                # Too long since the read (conflicts, throttling): the tombstones
                # that protect these writes may be gone; validate them instead.
                for ref, _, _ in pending:
                    refused.setdefault(ref, []).append(None)
                break
            chunks = _distinct_key_chunks(self.applier, pending)
            outcomes = await gather_settled(*(self._send(chunk, condition) for chunk in chunks))
            pending = []
            for chunk, (failed, retry) in zip(chunks, outcomes, strict=True):
                for index, existing in failed.items():
                    refused.setdefault(chunk[index][0], []).append(existing)
                pending.extend(chunk[i] for i in retry)
            if pending:
                conflicts += 1
                if conflicts > MAX_CONFLICT_RETRIES:
                    raise TransientError(f"transactions on {self.applier.target} kept conflicting")
                await asyncio.sleep(min(2.0, 0.05 * 2**conflicts))
        validated = []
        for ref in dict.fromkeys(ref for ref, _, _ in actions):
            if ref not in refused:
                counts.written += 1
            elif all(self.applier.stale_outcome(ref, e) == "newer" for e in refused[ref]):
                counts.skipped += 1
            else:
                validated.append(ref)
        for result in await gather_settled(*(self._validated(ref) for ref in validated)):
            counts.add(result)
        return counts

    async def _validated(self, ref: SourceRef) -> WriteCounts:
        async with self.governor.slot():
            result = await self.applier.apply_validated(ref)
        if result.quarantined is not None:
            return WriteCounts(quarantined=1)
        return WriteCounts(written=1) if result.written else WriteCounts(skipped=1)

    async def _send(
        self, chunk: list[tuple[SourceRef, Item, Item]], condition: dict[str, Any]
    ) -> tuple[dict[int, Item | None], list[int]]:
        """One transaction, in one of the governor's slots: (refused index -> existing item, indexes to retry)."""
        async with self.governor.slot():
            return await self.applier.put_stale_transaction([target for _, _, target in chunk], condition)


def _counts_of(result: ApplyResult) -> WriteCounts:
    """One source item's write, counted: quarantined, skipped (the mirror was first) or written."""
    if result.quarantined is not None:
        return WriteCounts(quarantined=1)
    if result.skipped and not result.written:
        return WriteCounts(skipped=1)
    return WriteCounts(written=1)


def _distinct_key_chunks(
    applier: Applier, actions: list[tuple[SourceRef, Item, Item]]
) -> list[list[tuple[SourceRef, Item, Item]]]:
    chunks: list[list[tuple[SourceRef, Item, Item]]] = []
    keys: list[set[Any]] = []
    for action in actions:
        key = applier.definition.target_key(action[2])
        for chunk, seen in zip(chunks, keys, strict=True):
            if len(chunk) < TRANSACT_MAX and key not in seen:
                chunk.append(action)
                seen.add(key)
                break
        else:
            chunks.append([action])
            keys.append({key})
    return chunks
