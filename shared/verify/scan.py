"""Scanning (step 1 of the design): parallel, eventually consistent scans into the spill store.

Each table is read in ``--segments`` parallel segments of `SCAN_PAGE_ITEMS`
items (one full scan of read capacity, eventually consistent); a transient
fault retries the same page. Scan answers skip botocore's model walk (see
`shared.core.aws.raw_scan_pages`), the biggest CPU cost per item otherwise. `Scanner` turns
each page into spill rows: a source item is transformed with the writers' own
checks (`Applier.transform_checked`), a target item is keyed by its owner;
``--sample`` keeps items by a hash of their source key.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.core import aws
from shared.core.aws import translate
from shared.core.codec import from_dynamodb_json
from shared.core.definition import Item, MigrationDefinition
from shared.core.errors import QuarantineError
from shared.protocol.apply import Applier
from shared.store.control import key_text
from shared.verify.differences import digest, is_leftover
from shared.verify.spill import SpillStore

SCAN_RETRIES = 8
SCAN_PAGE_ITEMS = 250


def sampled(text: str, fraction: float) -> bool:
    return fraction >= 1 or zlib.crc32(text.encode()) < fraction * 2**32


async def scan_segments(client: Any, table: str, segments: int, on_page: Callable[[list[Item]], None]) -> None:
    """Parallel scan of one table, eventually consistent (one full scan of read capacity).

    `on_page` receives items in DynamoDB JSON once `shared.core.aws.raw_scan_pages(client)` is
    registered on the client.
    """

    async def segment(number: int) -> None:
        # Pages of SCAN_PAGE_ITEMS, not DynamoDB's 1 MB: memory holds a few pages per segment in
        # flight, and smaller pages keep that small (the read capacity is the same).
        kwargs: dict[str, Any] = {"TableName": table, "Segment": number, "TotalSegments": segments,
                                  "Limit": SCAN_PAGE_ITEMS}
        failures = 0
        while True:
            try:
                page = await client.scan(**kwargs)
            except Exception as exc:
                # A transient fault (throttling, a timeout) retries the same page, so a long scan
                # survives a slow moment; anything else, or a fault that persists, ends the run.
                failures += 1
                if not aws.is_transient(exc) or failures > SCAN_RETRIES:
                    raise translate(exc, f"scan {table}") from exc
                await asyncio.sleep(min(30.0, 0.5 * 2**failures))
                continue
            failures = 0
            on_page(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    await asyncio.gather(*(segment(n) for n in range(segments)))


@dataclass
class Scanner:
    """Turns scanned pages into spill rows (the CPU side of step 1)."""

    definition: MigrationDefinition
    applier: Applier
    store: SpillStore
    tables: tuple[str, ...]  # the source tables verified (``--table``)
    sample: float  # the fraction of source items kept (``--sample``)
    scanned: Callable[[str, int], None] = lambda table, items: None  # progress: items seen of a table

    def source_page(self, table: str, raw_items: list[Item]) -> None:
        source = self.definition.source(table)
        src_rows, exp_rows = [], []
        for raw in raw_items:
            item = from_dynamodb_json(raw)
            ref = source.ref(item)
            ref_text = ref.as_text()
            if not sampled(ref_text, self.sample):
                continue
            try:
                targets = self.applier.transform_checked(ref, item)
            except QuarantineError as exc:
                src_rows.append((ref_text, digest(item), exc.reason))
                continue
            src_rows.append((ref_text, digest(item), None))
            exp_rows.extend((key_text(self.definition.target_key(t)), ref_text, digest(t)) for t in targets)
        self.store.db.executemany("INSERT INTO src VALUES (?, ?, ?)", src_rows)
        self.store.db.executemany("INSERT INTO exp VALUES (?, ?, ?)", exp_rows)
        self.scanned(table, len(raw_items))

    def target_page(self, table: str, raw_items: list[Item]) -> None:
        rows = []
        selected = set(self.tables)
        every_table = selected == {s.name for s in self.definition.sources}
        for raw in raw_items:
            item = from_dynamodb_json(raw)
            key = key_text(self.definition.target_key(item))
            owner = self.definition.owner(item)
            if owner is None:
                if not every_table or not sampled(key, self.sample):
                    continue
            elif owner.table not in selected or not sampled(owner.as_text(), self.sample):
                continue
            rows.append((key, owner.as_text() if owner else None, digest(item), int(is_leftover(item))))
        self.store.db.executemany("INSERT INTO act VALUES (?, ?, ?, ?)", rows)
        self.scanned(table, len(raw_items))

