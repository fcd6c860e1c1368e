"""The convergence check of design-notes.md, in memory, for tests and the demo.

Once writes stopped and everything drained, the target must hold exactly
the union of `transform(item)` over every source item that isn't
quarantined, nothing else (no stale version, no orphan, no tombstone), and
every quarantined item must be listed with its reason.

A quarantined item's target items stay as its last clean version left them
(schema-changes.md), so target items owned by a quarantined source item are
listed apart (`held_by_quarantined`), not counted as extra.

Key collisions are decided by arrival order, which a checker cannot know, so
for a target key claimed by several source items the check accepts whichever
claimant holds it, and requires every other claimant to be quarantined with
`key_collision`.

This reads both sides fully into memory: it is the reference the real,
bounded-memory verifier (`dynashift verify`) is tested against, not a
replacement for it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from shared.core import aws
from shared.core.codec import to_native
from shared.core.definition import Item, MigrationDefinition, SourceRef, TargetKey, get_definition
from shared.core.errors import QuarantineError
from shared.core.itemsize import check_target_items
from shared.core.settings import Settings
from shared.store.control import ControlStore


@dataclass
class ConvergenceResult:
    missing: list[TargetKey] = field(default_factory=list)
    extra: list[TargetKey] = field(default_factory=list)
    mismatched: list[tuple[TargetKey, dict[str, Any]]] = field(default_factory=list)
    leftover: list[TargetKey] = field(default_factory=list)
    # (bad source item, reason expected, reason quarantine holds or None)
    quarantine_missing: list[tuple[SourceRef, str, str | None]] = field(default_factory=list)
    quarantine_stale: list[SourceRef] = field(default_factory=list)
    held_by_quarantined: list[TargetKey] = field(default_factory=list)
    source_items: int = 0
    target_items: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (
            self.missing or self.extra or self.mismatched or self.leftover
            or self.quarantine_missing or self.quarantine_stale
        )

    def summary(self) -> str:
        return (
            f"missing={len(self.missing)} extra={len(self.extra)} mismatched={len(self.mismatched)} "
            f"leftover={len(self.leftover)} quarantine_missing={len(self.quarantine_missing)} "
            f"quarantine_stale={len(self.quarantine_stale)} "
            f"samples={[*self.missing[:3], *self.extra[:3], *[m[0] for m in self.mismatched[:3]], *self.leftover[:3]]}"
            + "".join(
                f" quarantine {ref}: expected {expected}, holds {found}"
                for ref, expected, found in self.quarantine_missing[:3]
            )
            + "".join(f" stale quarantine {ref}" for ref in self.quarantine_stale[:3])
            + "".join(f" mismatch at {'/'.join(key)}: {_brief(diff)}" for key, diff in self.mismatched[:2])
        )


def _brief(diff: dict[str, Any], attributes: int = 3, width: int = 40) -> str:
    """The first differing attributes of a mismatch, each value cut to `width`."""
    parts = [
        f"{name} expected {str(values['expected'])[:width]!r}, found {str(values['actual'])[:width]!r}"
        for name, values in sorted(diff.items(), key=lambda kv: kv[0] != "entity")[:attributes]
    ]
    return "; ".join(parts) + (f" (+{len(diff) - attributes} more)" if len(diff) > attributes else "")


def scan_all(settings: Settings, table: str) -> list[Item]:
    client = aws.dynamodb(settings)
    items = []
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        items.extend(to_native(i) for i in page["Items"])
    return items


def diff_items(expected: Item, actual: Item) -> dict[str, Any]:
    diff = {}
    for name in sorted(set(expected) | set(actual)):
        if expected.get(name, "<absent>") != actual.get(name, "<absent>"):
            diff[name] = {"expected": expected.get(name, "<absent>"), "actual": actual.get(name, "<absent>")}
    return diff


def check(
    definition: MigrationDefinition,
    sources: dict[str, list[Item]],
    target: list[Item],
    quarantine: dict[SourceRef, str],
) -> ConvergenceResult:
    result = ConvergenceResult(target_items=len(target))
    claims: dict[TargetKey, list[tuple[SourceRef, Item]]] = defaultdict(list)
    expected_bad: dict[SourceRef, str] = {}
    for table_name, items in sources.items():
        table = definition.source(table_name)
        for item in items:
            result.source_items += 1
            ref = table.ref(item)
            try:
                targets = definition.transform(table_name, item)
                check_target_items(targets)
            except QuarantineError as exc:
                expected_bad[ref] = exc.reason
                continue
            for target_item in targets:
                claims[definition.target_key(target_item)].append((ref, target_item))
    actual = {definition.target_key(i): i for i in target}
    collided = _blocked(definition, claims, actual, set(expected_bad))
    expected: dict[TargetKey, Item] = {}
    for key, claimants in claims.items():
        live = [c for c in claimants if c[0] not in collided]
        if not live:
            continue
        holder = definition.owner(actual.get(key, {}))
        chosen = next((c for c in live if c[0] == holder), live[0])
        expected[key] = chosen[1]
        collided.update(ref for ref, _ in live if ref != chosen[0])
    # An item that lost a collision produces nothing at all.
    for key in [k for k, v in expected.items() if definition.owner(v) in collided]:
        del expected[key]
    for ref in collided:
        expected_bad[ref] = "key_collision"
    for key, item in expected.items():
        if key not in actual:
            result.missing.append(key)
        elif actual[key] != item:
            result.mismatched.append((key, diff_items(item, actual[key])))
    for key, item in actual.items():
        if key in expected:
            continue
        if definition.owner(item) in expected_bad:
            # A quarantined item's target items stay as its last clean version left them.
            result.held_by_quarantined.append(key)
            continue
        if str(item.get("entity", "")).startswith("_dynashift"):
            result.leftover.append(key)
        else:
            result.extra.append(key)
    for ref, reason in expected_bad.items():
        if quarantine.get(ref) != reason:
            result.quarantine_missing.append((ref, reason, quarantine.get(ref)))
        result.quarantined[reason] = result.quarantined.get(reason, 0) + 1
    result.quarantine_stale = [ref for ref in quarantine if ref not in expected_bad]
    return result


def _blocked(
    definition: MigrationDefinition,
    claims: dict[TargetKey, list[tuple[SourceRef, Item]]],
    actual: dict[TargetKey, Item],
    bad: set[SourceRef],
) -> set[SourceRef]:
    """The clean items that cannot take a key they claim, because another item holds it.

    The holder of a key blocks a claimant if it is bad, if it claims the key
    too (whoever arrived first keeps it), or if it no longer claims the key
    but is blocked itself: then the key is its last clean version, kept while
    it is quarantined (a rename onto a taken name leaves the old name in
    place, which can block a third item, and so on). Blocked items can form
    a cycle (two items renamed onto each other's names), and each of them
    keeps waiting, so this is the greatest fixed point: start from every
    item whose key another item holds, and drop those with no reason left.
    """
    # claimant -> (holder of one of its keys, whether the holder claims that key too)
    held_against: dict[SourceRef, list[tuple[SourceRef, bool]]] = defaultdict(list)
    for key, claimants in claims.items():
        holder = definition.owner(actual.get(key, {}))
        if holder is None:
            continue
        claims_it = any(ref == holder for ref, _ in claimants)
        for ref, _ in claimants:
            if ref != holder:
                held_against[ref].append((holder, claims_it))
    blocked = set(held_against)
    changed = True
    while changed:
        changed = False
        for ref in list(blocked):
            if not any(holder in bad or claims_it or holder in blocked
                       for holder, claims_it in held_against[ref]):
                blocked.discard(ref)
                changed = True
    return blocked


def check_tables(settings: Settings) -> ConvergenceResult:
    definition = get_definition(settings.migration)
    sources = {s.name: scan_all(settings, settings.physical_name(s.name)) for s in definition.sources}
    target = scan_all(settings, settings.target_table)

    async def read_quarantine() -> dict[SourceRef, str]:
        async with aws.aio_dynamodb(settings) as client:
            entries = await ControlStore(client, settings.control_table).quarantine_list()
        return {e.ref: e.reason for e in entries}

    return check(definition, sources, target, asyncio.run(read_quarantine()))
