"""Dry run: transform every source item, write nothing, report.

This is phase 2 of the users' plan, "test scripts against backup data": it
runs the same `transform` the mirror and the backfill run, plus the engine's
own checks (item size, target-key collisions), over a stream of source items
from a table scan or an export, and counts what would happen.

Collision detection keeps one small fingerprint per target key in memory
(16 bytes), which is fine up to tens of millions of target items; past that,
run it per table or on a sample. The items themselves are never kept: feed
`DryRun.add_all` one page (or export chunk) at a time.

`render_dry_run` prints the report for a person (rich is imported inside it,
so the module stays importable without the CLI's dependencies);
`DryRunReport.as_dict` is the JSON form (`--json`, `--report FILE`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.definition import Item, MigrationDefinition, SourceRef
from shared.errors import ItemTooLarge, KeyCollision, QuarantineError
from shared.itemsize import MAX_ITEM_BYTES, item_size_bytes

if TYPE_CHECKING:
    from rich.console import Console

SAMPLES_PER_REASON = 5


@dataclass
class DryRunReport:
    source_items: Counter[str] = field(default_factory=Counter)
    target_items: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))

    @property
    def total_quarantined(self) -> int:
        return sum(self.quarantined.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": True,
            "source_items": dict(self.source_items),
            "source_items_total": sum(self.source_items.values()),
            "target_items_per_entity": dict(self.target_items),
            "target_items_total": sum(self.target_items.values()),
            "quarantined_per_reason": dict(self.quarantined),
            "quarantined_total": self.total_quarantined,
            "samples": {k: v for k, v in self.samples.items()},
        }

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n")


def render_dry_run(console: Console, report: DryRunReport) -> None:
    """The report for a person: items per source table and per entity, quarantine reasons with sample keys."""
    from rich.table import Table

    sources = sum(report.source_items.values())
    targets = sum(report.target_items.values())
    console.print(f"dry run: {sources:,} source items would become {targets:,} target items; "
                  f"{report.total_quarantined:,} would be quarantined; nothing was written")
    view = Table(title="items")
    view.add_column("")
    view.add_column("name")
    view.add_column("items", justify="right")
    for table, count in sorted(report.source_items.items()):
        view.add_row("source table", table, f"{count:,}")
    for entity, count in sorted(report.target_items.items()):
        view.add_row("target entity", entity, f"{count:,}")
    console.print(view)
    if not report.quarantined:
        console.print("quarantine: none")
        return
    # Plain lines, never wrapped: an operator greps and copies these keys.
    console.print("would be quarantined (reason: items; sample keys):")
    for reason, count in sorted(report.quarantined.items()):
        console.print(f"  {reason}: {count:,}", markup=False, highlight=False)
        for sample in report.samples.get(reason, []):
            console.print(f"    {sample['table']} {sample['key']}: {sample['message']}",
                          markup=False, highlight=False, soft_wrap=True)


def check_target_items(items: list[Item]) -> None:
    """The engine's own checks on a transform result (same as the writers')."""
    for item in items:
        size = item_size_bytes(item)
        if size > MAX_ITEM_BYTES:
            raise ItemTooLarge(
                f"target item {item.get('PK')}/{item.get('SK')} would be {size} bytes, over DynamoDB's 400 KB limit"
            )


class DryRun:
    """Accumulates a report over any number of source items."""

    def __init__(self, definition: MigrationDefinition) -> None:
        self.definition = definition
        self.report = DryRunReport()
        self._owners: dict[bytes, bytes] = {}

    def add(self, source_table: str, item: Item) -> None:
        table = self.definition.source(source_table)
        ref = table.ref(item) if all(a in item for a in table.key_attrs) else SourceRef(source_table, ("?",))
        self.report.source_items[source_table] += 1
        try:
            targets = self.definition.transform(source_table, item)
            check_target_items(targets)
            self._claim_keys(ref, targets)
        except QuarantineError as exc:
            self.report.quarantined[exc.reason] += 1
            samples = self.report.samples[exc.reason]
            if len(samples) < SAMPLES_PER_REASON:
                samples.append({"table": source_table, "key": "|".join(ref.key), "message": exc.message})
            return
        for target in targets:
            self.report.target_items[str(target.get("entity", "?"))] += 1

    def add_all(self, source_table: str, items: Iterable[Item]) -> None:
        for item in items:
            self.add(source_table, item)

    def _claim_keys(self, ref: SourceRef, targets: list[Item]) -> None:
        me = _fingerprint(ref.as_text())
        fingerprints = [_fingerprint("\x00".join(self.definition.target_key(t))) for t in targets]
        for target, fp in zip(targets, fingerprints, strict=True):
            holder = self._owners.get(fp)
            if holder is not None and holder != me:
                key = "/".join(self.definition.target_key(target))
                raise KeyCollision(f"target key {key} is already produced by another source item")
        for fp in fingerprints:
            self._owners[fp] = me


def _fingerprint(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()
