"""Repair (step 4 of the design): re-sync one confirmed difference from the source, race-safely.

Every write goes through the one write protocol (`shared.protocol.apply.Applier`):
a validated write from the source (never over newer state, ownership
respected); a stale key released through its owner's validated write, or,
when the owner is gone, by a delete in a transaction that checks the source
is still absent (`Applier.remove_orphan`); a tombstone nobody needs, or an
item no source can own, only by a delete conditioned on exactly what was
seen (`Applier.delete_exact`). `repair_all` repairs the found differences a
chunk at a time and judges each again afterwards.
"""

from __future__ import annotations

from typing import Any

from shared.core.definition import Item, MigrationDefinition, SourceRef, TargetKey
from shared.protocol.apply import Applier
from shared.verify.differences import Difference
from shared.verify.judge import LiveView, judge_key, judge_ref
from shared.verify.report import SAMPLES_PER_KIND
from shared.verify.spill import SpillStore

REPAIR_CHUNK = 500  # differences repaired before they are judged again


async def repair_difference(view: LiveView, difference: Difference) -> str:
    """Re-sync one difference from the source, race-safely; returns what was done."""
    applier = view.applier
    key = difference.target_key
    if difference.kind in ("quarantine_missing", "quarantine_stale"):
        ref = SourceRef.from_text(difference.source or "")
        state = await view.source(ref)
        entry = await view.entry(ref)
        if state.image is None:
            if entry is not None:
                await applier.control.quarantine_clear(ref)
            return "cleared the entry of a deleted item"
        await applier.apply_validated(ref, held=entry.held_keys if entry else set())
        return "re-applied the source item"
    assert key is not None
    current = await view.target(key)
    holder = await view.holder(key)
    if difference.kind in ("missing", "mismatched"):
        ref = SourceRef.from_text(difference.source or "")
        if holder is not None and holder != ref and await view.bad_reason(holder) is None:
            await _release(view, holder, key)  # a stale key of another item blocks this one
        entry = await view.entry(ref)
        await applier.apply_validated(ref, held=entry.held_keys if entry else set())
        return "re-applied the source item"
    if current is None:
        return "already gone"
    if difference.kind == "leftover" or holder is None:
        return await _delete_exact(view, key, current)
    return await _release(view, holder, key)


async def _release(view: LiveView, ref: SourceRef, key: TargetKey) -> str:
    """Remove a key its owner no longer produces: through the owner's validated write, or, if the
    owner no longer exists, a delete in a transaction that checks the source is still absent."""
    applier = view.applier
    state = await view.source(ref)
    if state.image is not None:
        entry = await view.entry(ref)
        await applier.apply_validated(ref, held={key, *(entry.held_keys if entry else ())})
        return "released the key through its owner"
    if not await applier.remove_orphan(ref, key):
        return "left alone: the source came back or the key changed hands"
    return "removed an orphan of a deleted item"


async def _delete_exact(view: LiveView, key: TargetKey, seen: Item) -> str:
    """Delete an item no source can own (or a tombstone), only if it is still exactly what was seen."""
    outcome = await view.applier.delete_exact(key, seen)
    return {"kept": "left alone: a backfill may still need this tombstone",
            "changed": "left alone: it changed meanwhile", "deleted": "deleted"}[outcome]



async def repair_all(applier: Applier, definition: MigrationDefinition, store: SpillStore) -> dict[str, Any]:
    """Repair every found difference, then judge each again: ``{attempted, fixed, remaining, samples}``."""
    attempted = fixed = 0
    remaining: list[Difference] = []
    differences = list(store.found())
    for start in range(0, len(differences), REPAIR_CHUNK):
        chunk = differences[start : start + REPAIR_CHUNK]
        for difference in chunk:  # one at a time: repairs of neighbouring keys interact
            await repair_difference(LiveView(applier, definition), difference)
            attempted += 1
        view = LiveView(applier, definition)
        for difference in chunk:
            if difference.target_key is not None:
                hints = [SourceRef.from_text(difference.source)] if difference.source else []
                after = await judge_key(view, difference.target_key, hints)
            else:
                after = await judge_ref(view, SourceRef.from_text(difference.source or ""))
            if any(d.kind == difference.kind for d in after):
                remaining.append(difference)
            else:
                fixed += 1
    return {"attempted": attempted, "fixed": fixed, "remaining": attempted - fixed,
            "samples": [d.as_dict() for d in remaining[:SAMPLES_PER_KIND]]}
