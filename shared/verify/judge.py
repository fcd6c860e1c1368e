"""Judgement (step 3 of the design): is one target key, or one quarantine entry, as it must be now?

`LiveView` reads strongly consistent state for one re-check round, each
source item, target key and quarantine entry once (concurrent askers share
the read). `judge_key` decides a target key: its live claimants (sources
whose transform produces it and that did not lose a collision) must find
exactly their expected item; with none, the item must not be there, unless
it is a quarantined item's last clean version. `judge_ref` decides whether
the quarantine says the right thing about one source item. `observation`
digests what a judgement depended on, so the run can tell a settled
difference from one the application is still writing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from shared.core.aws import translate
from shared.core.codec import to_native, to_wire
from shared.core.definition import Item, MigrationDefinition, SourceRef, TargetKey
from shared.core.errors import QuarantineError
from shared.protocol.apply import TOMBSTONE, Applier
from shared.store.control import QuarantineEntry
from shared.verify.differences import ABSENT, Difference, attribute_diff, digest, is_leftover, observation_digest


@dataclass
class SourceState:
    image: Item | None
    targets: list[Item] | None = None
    error: QuarantineError | None = None

    def keys(self, definition: MigrationDefinition) -> set[TargetKey]:
        return {definition.target_key(t) for t in self.targets or ()}

    def item_for(self, definition: MigrationDefinition, key: TargetKey) -> Item | None:
        return next((t for t in self.targets or () if definition.target_key(t) == key), None)


class LiveView:
    """Strongly consistent reads for one re-check round, each key and item read once."""

    def __init__(self, applier: Applier, definition: MigrationDefinition) -> None:
        self.applier = applier
        self.definition = definition
        self._sources: dict[SourceRef, asyncio.Future[SourceState]] = {}
        self._targets: dict[TargetKey, asyncio.Future[Item | None]] = {}
        self._entries: dict[SourceRef, asyncio.Future[QuarantineEntry | None]] = {}

    async def _once(self, cache: dict[Any, Any], key: Any, load: Callable[[], Any]) -> Any:
        if key not in cache:
            cache[key] = asyncio.ensure_future(load())
        return await asyncio.shield(cache[key])

    async def source(self, ref: SourceRef) -> SourceState:
        async def load() -> SourceState:
            image, _ = await self.applier.read_source(ref)
            if image is None:
                return SourceState(None)
            try:
                return SourceState(image, self.applier.transform_checked(ref, image))
            except QuarantineError as exc:
                return SourceState(image, error=exc)

        return await self._once(self._sources, ref, load)

    async def target(self, key: TargetKey) -> Item | None:
        async def load() -> Item | None:
            key_item = dict(zip(self.definition.target_key_attrs, key, strict=True))
            try:
                response = await self.applier.client.get_item(
                    TableName=self.applier.target, Key=to_wire(key_item), ConsistentRead=True
                )
            except Exception as exc:
                raise translate(exc, f"read {self.applier.target}") from exc
            item = response.get("Item")
            return to_native(item) if item else None

        return await self._once(self._targets, key, load)

    async def entry(self, ref: SourceRef) -> QuarantineEntry | None:
        async def load() -> QuarantineEntry | None:
            return (await self.applier.control.quarantine_get_many([ref])).get(ref)

        return await self._once(self._entries, ref, load)

    async def holder(self, key: TargetKey) -> SourceRef | None:
        """Who holds a key against a fresh write: the owner of a live (non-tombstone) item."""
        current = await self.target(key)
        if current is None or current.get("entity") == TOMBSTONE:
            return None
        return self.definition.owner(current)

    async def collided(self, ref: SourceRef, _asking: frozenset[SourceRef] = frozenset()) -> bool:
        """The item lost a collision: one of its keys is held by a bad item, by another
        claimant, or by an item that no longer claims it but lost a collision itself.

        The last is a chain: an item renamed onto a taken name is quarantined and
        keeps its old name's target item (its last clean version), which blocks
        an item renamed onto that old name. Items renamed onto each other's
        names block each other for good, so a holder already being asked about
        (a cycle) counts as blocked."""
        state = await self.source(ref)
        asking = _asking | {ref}
        for key in sorted(state.keys(self.definition)):
            holder = await self.holder(key)
            if holder is None or holder == ref:
                continue
            other = await self.source(holder)
            if other.error is not None or key in other.keys(self.definition):
                return True
            if other.image is not None and (holder in asking or await self.collided(holder, asking)):
                return True
        return False

    async def bad_reason(self, ref: SourceRef) -> str | None:
        """Why the item belongs in quarantine now (None: it migrates, or it no longer exists)."""
        state = await self.source(ref)
        if state.image is None:
            return None
        if state.error is not None:
            return state.error.reason
        return "key_collision" if await self.collided(ref) else None

    async def observation(self, key: TargetKey | None, refs: Iterable[SourceRef], entry_of: SourceRef | None) -> bytes:
        parts: list[Any] = []
        if key is not None:
            parts.append(digest(await self.target(key)))
        else:
            assert entry_of is not None
            entry = await self.entry(entry_of)
            parts.append(entry.reason if entry else None)
        for ref in sorted(refs, key=SourceRef.as_text):
            parts.append((ref.as_text(), digest((await self.source(ref)).image)))
        return observation_digest(parts)


async def judge_key(view: LiveView, key: TargetKey, hints: Iterable[SourceRef]) -> list[Difference]:
    """The differences at one target key right now (none when it is as it must be)."""
    definition = view.definition
    current = await view.target(key)
    owner = definition.owner(current) if current is not None else None
    refs = set(hints) | ({owner} if owner else set())
    claimants = [r for r in sorted(refs) if key in (await view.source(r)).keys(definition)]
    found: list[Difference] = []
    live = []
    for ref in claimants:
        if await view.collided(ref):
            entry = await view.entry(ref)
            if entry is None or entry.reason != "key_collision":
                found.append(Difference("quarantine_missing", ref.as_text(), key,
                                        {"reason": {"expected": "key_collision",
                                                    "actual": entry.reason if entry else ABSENT}}))
        else:
            live.append(ref)
    if live:
        chosen = owner if owner in live else live[0]
        expected = (await view.source(chosen)).item_for(definition, key)
        if current is None:
            found.append(Difference("missing", chosen.as_text(), key, attribute_diff(expected, None)))
        elif digest(current) != digest(expected):
            found.append(Difference("mismatched", chosen.as_text(), key, attribute_diff(expected, current)))
        return found
    if current is None:
        return found
    if owner is not None and await view.bad_reason(owner) is not None:
        return found  # a quarantined item's last clean version: kept on purpose
    kind = "leftover" if is_leftover(current) else "extra"
    found.append(Difference(kind, owner.as_text() if owner else None, key, attribute_diff(None, current)))
    return found


async def judge_ref(view: LiveView, ref: SourceRef) -> list[Difference]:
    """Does the quarantine say the right thing about this source item right now?"""
    entry = await view.entry(ref)
    reason = await view.bad_reason(ref)
    recorded = entry.reason if entry else None
    if reason == recorded:
        return []
    kind = "quarantine_missing" if reason else "quarantine_stale"
    detail = {"reason": {"expected": reason or ABSENT, "actual": recorded or ABSENT}}
    return [Difference(kind, ref.as_text(), None, detail)]

