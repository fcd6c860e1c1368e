"""`dynashift verify`: prove the target equals the transform of the sources, both ways.

What is checked (the convergence promise of design-notes.md):

* forward: every source item that isn't quarantined has exactly its
  expected target items (`definition.transform`), equal attribute by
  attribute;
* backward: every target item is owned (`definition.owner`) by a source item
  that produces exactly it: no orphan, no stale key after a rename or a
  transfer, no migration leftover (a tombstone, ``entity`` starting with
  ``_dynashift``);
* quarantine: every source item that cannot be migrated is in quarantine
  with its reason, and nothing else is. A quarantined item's target items stay
  as its last clean version left them, so they are not orphans; a source that
  lost a key collision owns nothing.

Kinds of difference: ``missing`` (an expected target item is absent),
``mismatched`` (present, but an attribute differs), ``extra`` (a target item
no source produces), ``leftover`` (a tombstone nobody needs), and for the
quarantine ``quarantine_missing`` (a bad source item not recorded with its
reason) and ``quarantine_stale`` (an entry for an item that now migrates
cleanly, or no longer exists).

How, in bounded memory (the design):

1. **Scan** every selected source table and the whole target in parallel
   segments (aiobotocore, ``--segments``; eventually consistent, so exactly
   one full scan's read capacity). Each source item is transformed with the
   writers' own checks (`Applier.transform_checked`). Rows go to a SQLite
   database in a temporary folder (stdlib ``sqlite3``; the page cache is
   capped): ``src`` (source ref, digest, quarantine reason if it does not
   transform), ``exp`` (target key, claiming source, digest of the expected
   item), ``act`` (target key, owner, digest, tombstone?), ``quar`` (the
   control table's quarantine: reasons only, streamed a page at a time,
   never held whole, since 1% bad rows of a billion items is ten million;
   read from the control table's sparse ``QuarantineReasons`` index, so
   it costs the reasons' size, not the entries' source images).
   Items are stored as 16-byte digests of a canonical form (types kept, sets
   sorted, numbers normalised), never whole.
2. **Nominate** with SQL joins over indexes built after the load (SQLite's
   B-trees are the disk-spilled partitions; a join over two indexes is a
   merge): expected keys that are absent or differ, target keys nobody
   claims (unless held by a quarantined item), bad items without a matching
   quarantine entry, entries whose item is clean. Keys claimed by several
   sources are nominated unless the holder is a claimant with equal content
   and every other claimant is quarantined as a collision.
3. **Settle and re-check** (live safety): after ``--settle`` seconds
   (setting `verify_settle_s`, well above the mirror lag) each nominated key
   or item is judged again from strongly consistent reads of the target key
   and of every source involved (claimants, holder, the holders of their
   keys). A difference is *confirmed* when it is still there and nothing it
   depends on moved since the previous look; if something moved (the
   application is writing it) it is looked at again after another settle,
   at most `MAX_ROUNDS` times, then reported as it is. Only confirmed
   differences are reported, each with its source key, target key, kind and
   an attribute-level diff. Only nominated keys are re-read; at most
   `verify_recheck_limit` of them (the rest are counted as ``unconfirmed``).
4. **Repair** (``--repair``): each confirmed difference is re-synced from the
   source through `shared.protocol.apply.Applier`: a validated write (transaction
   with a condition on the source item: never over newer state, ownership
   respected); a stale key is released by re-applying its owner with the key
   as held, so it goes through the owner-conditioned delete (or tombstone
   while a backfill runs); an orphan of a deleted source goes in a
   transaction that checks the source is still absent; a tombstone nobody
   needs, and an item no source can own, only by a delete conditioned on
   exactly what was seen. Then those differences are judged again and the
   report says how many were fixed.

The report (``--json`` on stdout, ``--json-file FILE``; also returned by `run`):

| field | meaning |
|---|---|
| ``ok`` | true when no difference remains (after repair, with ``--repair``) |
| ``source_items`` / ``target_items`` | items scanned (after ``--table`` / ``--sample``) |
| ``missing`` ``extra`` ``mismatched`` ``leftover`` | confirmed differences per kind |
| ``quarantine_missing`` ``quarantine_stale`` | quarantine disagreements (count against ``ok`` too) |
| ``unconfirmed`` | nominated differences past `verify_recheck_limit`, counted in their kind, not re-checked |
| ``quarantined`` | ``{reason: count}`` of source items known bad (expected in quarantine; not differences) |
| ``samples`` | ``{kind: [{kind, source, target_key, diff}]}``, up to 20 per kind |
| ``elapsed_s`` ``items_per_s`` ``started_at`` ``finished_at`` | timing (epoch seconds); rate = (source+target items) / elapsed |
| ``tables`` ``sample`` ``settle_s`` ``rounds`` ``rechecked`` | what was verified and how |
| ``repair`` | with ``--repair``: ``{attempted, fixed, remaining, samples}`` |
| ``capacity`` | units consumed (`shared.core.capacity`): ``verify`` (scans and re-checks, with ``read_units_per_item``) and ``repair``, each priced on demand in ``region`` |

With ``--table``, only target items owned by that table's items are compared;
items no source can own (a tombstone under a name key, say) only when every
table is verified. ``--sample`` keeps source items by a hash of their key,
and the target items they own: it saves time and disk, not read capacity.

Each run is stored in the control table, ``VERIFY`` / ``LAST`` (plus a
history item ``VERIFY`` / ``HIST#<finished ISO>`` that expires after 90
days): ok, finished_at (epoch N), the counts and the tables. `last_verify`
reads it back for ``status`` and the cutover gate. Exit code of the CLI: 0
when ok, 1 when differences remain, 2 on error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.core import aws, capacity
from shared.core.aws import translate
from shared.core.definition import MigrationDefinition, SourceRef, get_definition
from shared.core.errors import StoreError, UsageError
from shared.core.settings import Settings
from shared.protocol.apply import Applier
from shared.store.control import ControlStore, StaleWriterRegistry, StaleWriterWatch, key_from_text
from shared.verify.differences import KINDS, Difference, unconfirmed
from shared.verify.judge import LiveView, judge_key, judge_ref
from shared.verify.repair import repair_all
from shared.verify.report import build_report, last_verify, store_result, write_report
from shared.verify.scan import Scanner, sampled, scan_segments
from shared.verify.spill import SpillStore

MAX_ROUNDS = 3
RECHECK_CHUNK = 500
QUARANTINE_CHUNK = 1_000
RECHECK_CONCURRENCY = 32


@dataclass(frozen=True)
class VerifyRequest:
    tables: tuple[str, ...]
    segments: int = 8
    sample: float = 1.0
    settle_s: float = 30.0
    repair: bool = False
    json_path: Path | None = None


def resolve_tables(definition: MigrationDefinition, table: str) -> tuple[str, ...]:
    names = [s.name for s in definition.sources]
    if table == "all":
        return tuple(names)
    if table not in names:
        raise UsageError(f"--table: unknown table {table!r} (choose from: all, {', '.join(names)})")
    return (table,)


def make_request(settings: Settings, *, table: str = "all", segments: int = 8, sample: float = 1.0,
                 settle_s: float | None = None, repair: bool = False, json_path: Path | None = None) -> VerifyRequest:
    """Validate the options (each bad one is a UsageError naming it)."""
    definition = get_definition(settings.migration)
    if not 1 <= segments <= 1_000_000:
        raise UsageError(f"--segments must be between 1 and 1000000, not {segments}")
    if not 0 < sample <= 1:
        raise UsageError(f"--sample must be a fraction in (0, 1], not {sample}")
    settle = settings.verify_settle_s if settle_s is None else settle_s
    if settle < 0:
        raise UsageError(f"--settle must not be negative, not {settle}")
    return VerifyRequest(resolve_tables(definition, table), segments, sample, settle, repair, json_path)


class Observer:
    """Progress callbacks; the CLI renders them with rich, tests ignore them."""

    def scanned(self, table: str, items: int) -> None: ...

    def phase(self, text: str) -> None: ...



def preflight(settings: Settings, tables: Iterable[str]) -> None:
    """Fail fast, with one line and exit code 2, on an unreachable endpoint or a missing table.

    One attempt per table (no retries), so a wrong endpoint is reported in seconds, not after
    the long retry schedule the scans use.
    """
    client = aws.dynamodb(settings, max_attempts=1)
    for table in tables:
        try:
            client.describe_table(TableName=table)
        except Exception as exc:
            error = translate(exc, f"describe {table}")
            if isinstance(error, StoreError):
                raise error from exc
            raise StoreError(str(error)) from exc


# =========================================================================== the run
@dataclass
class VerifyRun:
    settings: Settings
    request: VerifyRequest
    observer: Observer = field(default_factory=Observer)
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Any] = asyncio.sleep

    def __post_init__(self) -> None:
        self.definition = get_definition(self.settings.migration)
        self.rounds = 0
        self.rechecked = 0
        self.usage = capacity.Usage()  # units of the whole run (repair's included)
        self.repair_usage = capacity.Usage()

    async def run(self) -> dict[str, Any]:
        started = self.clock()
        await asyncio.to_thread(preflight, self.settings, [
            *(self.settings.physical_name(t) for t in self.request.tables),
            self.settings.target_table, self.settings.control_table])
        store = SpillStore()
        with capacity.scope("verify", into=self.usage):
            return await self._run(started, store)

    async def _run(self, started: float, store: SpillStore) -> dict[str, Any]:
        try:
            pool = max(16, self.request.segments + 8)
            async with aws.aio_dynamodb(self.settings, pool=pool, retry_mode="adaptive", max_attempts=10) as client:
                aws.raw_scan_pages(client)
                control = ControlStore(client, self.settings.control_table)
                applier = Applier(self.settings, self.definition, client, control, clock=self.clock)
                await self._load(client, control, applier, store)
                self.observer.phase("comparing")
                store.index()
                store.nominate()
                await self._recheck(applier, store)
                repair = None
                if self.request.repair:
                    self.observer.phase("repairing")
                    applier.tombstone_source = StaleWriterWatch(
                        StaleWriterRegistry(client, self.settings.control_table),
                        self.settings.stale_writer_refresh_s).stale_writers_about
                    with capacity.scope("repair", into=self.repair_usage):
                        repair = await repair_all(applier, self.definition, store)
                report = build_report(
                    store, started=started, finished=self.clock(), tables=self.request.tables,
                    sample=self.request.sample, settle_s=self.request.settle_s, rounds=self.rounds,
                    rechecked=self.rechecked, repair=repair, usage=self.usage,
                    repair_usage=self.repair_usage if self.request.repair else None,
                    region=self.settings.effective_region)
                await store_result(client, self.settings, report)
        finally:
            store.close()
        return report

    async def _load(self, client: Any, control: ControlStore, applier: Applier, store: SpillStore) -> None:
        self.observer.phase("scanning")
        # Streamed into the store a page at a time, without images: the quarantine grows with the
        # tables (1% bad rows of a billion items), so it must not be held in memory.
        rows: list[tuple[str, str]] = []
        # Eventually consistent (the reasons index), like the scans: an entry written or cleared
        # meanwhile is no worse than an item changed meanwhile, and the re-check reads strongly.
        async for ref, reason in control.quarantine_reasons(consistent=False):
            text = ref.as_text()
            if ref.table in self.request.tables and sampled(text, self.request.sample):
                rows.append((text, reason))
            if len(rows) >= QUARANTINE_CHUNK:
                store.db.executemany("INSERT OR REPLACE INTO quar VALUES (?, ?)", rows)
                rows.clear()
        store.db.executemany("INSERT OR REPLACE INTO quar VALUES (?, ?)", rows)
        scanner = Scanner(self.definition, applier, store, self.request.tables, self.request.sample,
                          self.observer.scanned)
        # One table at a time, each in `segments` parallel segments: the read rate stays what the
        # operator asked for, however many tables there are.
        for table in self.request.tables:
            await scan_segments(client, self.settings.physical_name(table), self.request.segments,
                                lambda items, t=table: scanner.source_page(t, items))
        target = self.settings.target_table
        await scan_segments(client, target, self.request.segments, lambda items: scanner.target_page(target, items))

    async def _recheck(self, applier: Applier, store: SpillStore) -> None:
        db = store.db
        limit = self.settings.verify_recheck_limit
        over = db.execute("SELECT id, subject, value, kind FROM cand ORDER BY id LIMIT -1 OFFSET ?", (limit,)).fetchall()
        for _id, subject, value, kind in over:
            store.add_found([unconfirmed(subject, value, kind)], confirmed=False)
            db.execute("UPDATE cand SET state = 'unconfirmed' WHERE id = ?", (_id,))
        for number in range(1, MAX_ROUNDS + 1):
            pending = db.execute("SELECT count(*) FROM cand WHERE state = 'pending'").fetchone()[0]
            if not pending:
                return
            self.rounds = number
            self.observer.phase(f"settling {self.request.settle_s:g}s, then re-checking {pending} difference(s)")
            if self.request.settle_s > 0:
                await self.sleep(self.request.settle_s)
            last_id = 0
            while True:
                chunk = db.execute(
                    "SELECT id, subject, value, obs FROM cand WHERE state = 'pending' AND id > ? ORDER BY id LIMIT ?",
                    (last_id, RECHECK_CHUNK),
                ).fetchall()
                if not chunk:
                    break
                last_id = chunk[-1][0]
                view = LiveView(applier, self.definition)
                slots = asyncio.Semaphore(RECHECK_CONCURRENCY)

                async def one(row: tuple[Any, ...], view: LiveView = view, slots: asyncio.Semaphore = slots,
                              final: bool = number == MAX_ROUNDS) -> None:
                    cand_id, subject, value, previous = row
                    async with slots:
                        diffs, observed = await self._judge(view, store, subject, value)
                    self.rechecked += 1
                    previous = previous or store.scan_observation(subject, value)
                    if not diffs:
                        db.execute("UPDATE cand SET state = 'ok' WHERE id = ?", (cand_id,))
                    elif final or observed == previous:
                        store.add_found(diffs, confirmed=True)
                        db.execute("UPDATE cand SET state = 'confirmed' WHERE id = ?", (cand_id,))
                    else:  # still moving: the application is writing it; look again after another settle
                        db.execute("UPDATE cand SET obs = ? WHERE id = ?", (observed, cand_id))

                await asyncio.gather(*(one(row) for row in chunk))

    async def _judge(self, view: LiveView, store: SpillStore, subject: str, value: str) -> tuple[list[Difference], bytes]:
        if subject == "k":
            key = key_from_text(value)
            hints = [SourceRef.from_text(r) for r in store.hint_refs(value)]
            diffs = await judge_key(view, key, hints)
            return diffs, await view.observation(key, hints, None)
        ref = SourceRef.from_text(value)
        diffs = await judge_ref(view, ref)
        return diffs, await view.observation(None, [ref], ref)


def run(settings: Settings, request: VerifyRequest, observer: Observer | None = None) -> dict[str, Any]:
    """Verify (and with `request.repair`, repair); returns the report, also written to `request.json_path`."""
    report = asyncio.run(VerifyRun(settings, request, observer or Observer()).run())
    if request.json_path is not None:
        write_report(report, request.json_path)
    return report


__all__ = [
    "KINDS", "MAX_ROUNDS", "Observer", "VerifyRequest", "VerifyRun", "last_verify", "make_request", "preflight",
    "resolve_tables", "run", "write_report",
]
