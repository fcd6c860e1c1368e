"""Dry run: transform every source item, write nothing, report.

This is phase 2 of the users' plan, "test scripts against backup data": it
runs the same `transform` the mirror and the backfill run, plus the engine's
own checks (item size, target-key collisions), over a stream of source items
from a table scan or an export, and counts what would happen.

Collision detection keeps a 16-byte fingerprint of each *shared* target key
in memory (`MigrationDefinition.shared_key`: the only keys two source items
can produce; for sc, the repositories' keys), about 200 bytes each with
Python's overhead, as measured (bench/backfill_bench.py's RSS series: a 94 MB
peak at 100,000 source items, 226 MB at 1,000,000 with 750,000 repositories).
Past tens of millions,
run it on a sample. The items themselves are never kept: feed
`DryRun.add_all` one page (or export chunk) at a time; the scan
(`backfill.run._scan_dry`) holds at most two pages at once.

`render_dry_run` prints the report for a person (rich is imported inside it,
so the module stays importable without the CLI's dependencies);
`DryRunReport.as_dict` is the JSON form (`--json`, `--json-file FILE`).

The cost estimate (`CostEstimate`, in the report as ``estimate``) prices the
real migration by AWS's rules (`shared.core.capacity`), from the sizes of the
items seen, never from averages guessed up front:

* the backfill's reads: one eventually consistent scan of the sources
  (their bytes in 4 KB units, halved, plus half a unit of rounding per page
  of `ASSUMED_PAGE_ITEMS`); an export run reads the exported keys again,
  strongly, one item at a time;
* its writes: each target item once, in 1 KB units, once more per GSI the
  item is in (the index keys come from template.yaml's target table), 2x in
  ``transact`` mode; plus one checkpoint write per page;
* each item that will be quarantined: read again strongly, and its entry
  written with the compressed image (an oversized item's entry can cost
  hundreds of write units), plus its arm in the control table's reasons
  index; a key collision also notes itself in the collision summary and
  registers as a waiter (a unit each);
* the mirror per day at ``--write-rate`` legacy writes per second: each
  write's target items as above, plus per batch (the mapping's BatchSize
  100, or a quarter second's writes when fewer: the mapping polls each shard
  four times a second) the mode read, at most two reads of the collision
  summary, the receipt and the usage counter (`shared.store.receipts`);
* the on-demand price of each, and the time at ``--rate``.

Units a run spends on conflicts with a live mirror (refused conditions,
validated re-writes) depend on the application's writes during the run and
are not in the estimate; `bench/backfill_bench.py` compares the estimate
with what a run consumed.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.core import capacity
from shared.core.definition import Item, MigrationDefinition, SourceRef
from shared.core.errors import KeyCollision, QuarantineError
from shared.core.itemsize import check_target_items, item_size_bytes

if TYPE_CHECKING:
    from rich.console import Console

SAMPLES_PER_REASON = 5


ASSUMED_PAGE_ITEMS = 250  # the backfill's scan pages adapt between 100 and 500 items (backfill/worker.py)
MIRROR_BATCH_SIZE = 100  # template.yaml: the mappings' BatchSize (no batching window)
MAPPING_POLLS_PER_S = 4  # Lambda polls each stream shard at a base rate of four times a second
RECEIPT_BYTES_PER_RECORD = 37  # an eventID in the receipt's string set (shared/store/receipts.py)
RECEIPT_BYTES_FIXED = 150  # its key (the stream ARN), count and expiry
SECONDS_PER_DAY = 86400
QUARANTINE_ENTRY_BYTES = 300  # an entry's key, reason, message and times, beside the image (shared/store/control.py)
QUARANTINE_INDEX_BYTES = 200  # its arm in the control table's QuarantineReasons index: key, table, reason


@dataclass
class CostEstimate:
    """What the real migration will consume, by AWS's rules, from the items seen."""

    index_keys: list[tuple[str, ...]] = field(default_factory=list)  # each GSI's key attributes
    source_bytes: int = 0
    target_items: int = 0
    target_bytes: int = 0
    put_write_units: float = 0.0  # every target item written once, standard
    index_arms: int = 0  # target items x GSIs they are in
    transact_extra: float = 0.0  # what a transaction adds on top of put_write_units
    strong_reread_units: float = 0.0  # an export run: each exported item read again, strongly
    quarantine_read_units: float = 0.0  # a bad item is read again, strongly, before it is quarantined
    quarantine_write_units: float = 0.0  # ... and its entry written, with its compressed image

    def add_source(self, item: Item) -> None:
        size = item_size_bytes(item)
        self.source_bytes += size
        self.strong_reread_units += capacity.read_units(size, consistent=True)

    def add_quarantined(self, item: Item, *, collision: bool = False) -> None:
        from shared.store.control import encode_image

        self.quarantine_read_units += capacity.read_units(item_size_bytes(item), consistent=True)
        self.quarantine_write_units += (capacity.write_units(len(encode_image(item)) + QUARANTINE_ENTRY_BYTES)
                                        + capacity.write_units(QUARANTINE_INDEX_BYTES))
        if collision:
            # The collision summary's note and the waiter entry: small items, the minimum each.
            self.quarantine_write_units += 2 * capacity.write_units(0)

    def add_target(self, item: Item) -> None:
        size = item_size_bytes(item)
        arms = sum(1 for keys in self.index_keys if all(k in item for k in keys))
        units = capacity.write_units(size, indexes=arms)
        self.target_items += 1
        self.target_bytes += size
        self.index_arms += arms
        self.put_write_units += units
        self.transact_extra += capacity.write_units(size, indexes=arms, transactional=True) - units

    def as_dict(self, *, source_items: int, region: str, write_mode: str, source: str,
                rate: float | None, write_rate: float | None) -> dict[str, Any]:
        pages = max(1, -(-source_items // ASSUMED_PAGE_ITEMS)) if source_items else 0
        if source == "scan":
            reads = self.source_bytes / capacity.READ_UNIT_BYTES / 2 + pages * 0.25
        else:
            reads = self.strong_reread_units
        reads += self.quarantine_read_units
        writes = (self.put_write_units + (self.transact_extra if write_mode == "transact" else 0.0) + pages
                  + self.quarantine_write_units)
        backfill = capacity.Usage(read_units=reads, write_units=writes)
        out: dict[str, Any] = {
            "region": region,
            "prices_as_of": capacity.PRICES_AS_OF,
            "source_bytes": self.source_bytes,
            "target_items": self.target_items,
            "target_bytes": self.target_bytes,
            "quarantine_write_units": round(self.quarantine_write_units, 1),
            "backfill": {
                "write_mode": write_mode,
                "source": source,
                "read_units": round(reads, 1),
                "write_units": round(writes, 1),
                "write_units_per_source_item": round(writes / source_items, 3) if source_items else None,
                "usd": capacity.price(backfill, region),
                "rate_per_s": rate,
                "seconds_at_rate": round(source_items / rate, 1) if rate else None,
            },
            "mirror": None,
        }
        if write_rate:
            per_write = self.put_write_units / source_items if source_items else 0.0
            batch = max(1.0, min(MIRROR_BATCH_SIZE, write_rate / MAPPING_POLLS_PER_S))
            receipt = capacity.write_units(int(RECEIPT_BYTES_FIXED + RECEIPT_BYTES_PER_RECORD * batch))
            per_batch_writes = receipt + 1.0  # the receipt and the usage counter
            # The mode flag, and at most two reads of the collision summary (before and after the writes).
            per_batch_reads = 3 * capacity.read_units(100, consistent=True)
            writes_per_day = write_rate * SECONDS_PER_DAY
            batches = writes_per_day / batch
            mirror = capacity.Usage(read_units=batches * per_batch_reads,
                                    write_units=writes_per_day * per_write + batches * per_batch_writes)
            out["mirror"] = {
                "write_rate_per_s": write_rate,
                "read_units_per_day": round(mirror.read_units, 1),
                "write_units_per_day": round(mirror.write_units, 1),
                "write_units_per_legacy_write": round(mirror.write_units / writes_per_day, 3),
                "usd_per_day": capacity.price(mirror, region),
            }
        return out


@dataclass
class DryRunReport:
    source_items: Counter[str] = field(default_factory=Counter)
    target_items: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))
    cost: CostEstimate = field(default_factory=CostEstimate)
    estimate: dict[str, Any] | None = None  # `CostEstimate.as_dict`, set by `DryRun.finish`

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
            "estimate": self.estimate,
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
    if report.estimate is not None:
        render_estimate(console, report.estimate)
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


def render_estimate(console: Console, estimate: dict[str, Any]) -> None:
    """The estimate's lines: sizes, the backfill's units and time, the mirror's units per day, prices."""
    def dollars(value: float | None) -> str:
        if value is None:
            return f"no on-demand rate known for {estimate['region']}"
        return capacity.format_usd(value)

    def duration(seconds: float) -> str:
        return f"{seconds:,.0f} s" if seconds < 120 else f"{seconds / 60:,.1f} min" if seconds < 7200 \
            else f"{seconds / 3600:,.1f} h"

    backfill = estimate["backfill"]
    console.print(f"estimate ({estimate['region']}, on-demand prices as of {estimate['prices_as_of']}): "
                  f"{estimate['source_bytes'] / 1e6:,.1f} MB of source items, {estimate['target_items']:,} target "
                  f"items of {estimate['target_bytes'] / 1e6:,.1f} MB", markup=False, highlight=False, soft_wrap=True)
    when = (f"{duration(backfill['seconds_at_rate'])} at --rate {backfill['rate_per_s']:g}/s"
            if backfill["seconds_at_rate"] is not None else "time: give --rate to estimate it")
    console.print(f"  backfill ({backfill['write_mode']}, {backfill['source']}): {backfill['write_units']:,.0f} write "
                  f"units, {backfill['read_units']:,.0f} read units, {dollars(backfill['usd'])}; {when}",
                  markup=False, highlight=False, soft_wrap=True)
    mirror = estimate["mirror"]
    if mirror is None:
        console.print("  mirror: give --write-rate (legacy writes per second) for its cost per day",
                      markup=False, highlight=False)
    else:
        console.print(f"  mirror at {mirror['write_rate_per_s']:g} legacy writes/s: {mirror['write_units_per_day']:,.0f}"
                      f" write units and {mirror['read_units_per_day']:,.0f} read units a day, "
                      f"{dollars(mirror['usd_per_day'])} a day", markup=False, highlight=False, soft_wrap=True)


class DryRun:
    """Accumulates a report over any number of source items."""

    def __init__(self, definition: MigrationDefinition, index_keys: list[tuple[str, ...]] | None = None) -> None:
        self.definition = definition
        self.report = DryRunReport(cost=CostEstimate(index_keys=list(index_keys or [])))
        self._owners: dict[bytes, bytes] = {}

    def finish(self, *, region: str, write_mode: str, source: str, rate: float | None = None,
               write_rate: float | None = None) -> DryRunReport:
        """Price what was seen (the report's ``estimate``); returns the report."""
        self.report.estimate = self.report.cost.as_dict(
            source_items=sum(self.report.source_items.values()), region=region, write_mode=write_mode,
            source=source, rate=rate, write_rate=write_rate)
        return self.report

    def add(self, source_table: str, item: Item) -> None:
        table = self.definition.source(source_table)
        ref = table.ref(item) if all(a in item for a in table.key_attrs) else SourceRef(source_table, ("?",))
        self.report.source_items[source_table] += 1
        self.report.cost.add_source(item)
        try:
            targets = self.definition.transform(source_table, item)
            check_target_items(targets)
            self._claim_keys(ref, targets)
        except QuarantineError as exc:
            self.report.quarantined[exc.reason] += 1
            self.report.cost.add_quarantined(item, collision=isinstance(exc, KeyCollision))
            samples = self.report.samples[exc.reason]
            if len(samples) < SAMPLES_PER_REASON:
                samples.append({"table": source_table, "key": "|".join(ref.key), "message": exc.message})
            return
        for target in targets:
            self.report.target_items[str(target.get("entity", "?"))] += 1
            self.report.cost.add_target(target)

    def add_all(self, source_table: str, items: Iterable[Item]) -> None:
        for item in items:
            self.add(source_table, item)

    def _claim_keys(self, ref: SourceRef, targets: list[Item]) -> None:
        # Only a shared key (`MigrationDefinition.shared_key`) can be produced by two source items.
        keys = [key for key in map(self.definition.target_key, targets) if self.definition.shared_key(key)]
        if not keys:
            return
        me = _fingerprint(ref.as_text())
        fingerprints = [_fingerprint("\x00".join(key)) for key in keys]
        for key, fp in zip(keys, fingerprints, strict=True):
            holder = self._owners.get(fp)
            if holder is not None and holder != me:
                raise KeyCollision(f"target key {'/'.join(key)} is already produced by another source item")
        for fp in fingerprints:
            self._owners[fp] = me


def _fingerprint(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()
