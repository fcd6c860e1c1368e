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
   never held whole, since 1% bad rows of a billion items is ten million).
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
import base64
import hashlib
import json
import sqlite3
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from boto3.dynamodb.types import Binary

from shared.core import aws, capacity
from shared.core.aws import translate
from shared.core.codec import from_dynamodb_json, to_native, to_wire
from shared.core.definition import Item, MigrationDefinition, SourceRef, TargetKey, get_definition
from shared.core.errors import QuarantineError, StoreError, UsageError
from shared.core.settings import Settings
from shared.protocol.apply import TOMBSTONE, Applier
from shared.store import keys
from shared.store.control import (
    ControlStore,
    QuarantineEntry,
    StaleWriterRegistry,
    StaleWriterWatch,
    key_from_text,
    key_text,
)

KINDS = ("missing", "extra", "mismatched", "leftover", "quarantine_missing", "quarantine_stale")
KEY_KINDS = ("missing", "extra", "mismatched", "leftover")
SAMPLES_PER_KIND = 20
MAX_ROUNDS = 3
RECHECK_CHUNK = 500
QUARANTINE_CHUNK = 1_000
SCAN_RETRIES = 8
SCAN_PAGE_ITEMS = 250
RECHECK_CONCURRENCY = 32
SQLITE_CACHE_KB = 16_384
HISTORY_TTL_S = 90 * 24 * 3600
ABSENT = "<absent>"
LEFTOVER_PREFIX = "_dynashift"


# =========================================================================== canonical form
def _number(value: Any) -> str:
    number = Decimal(value) if not isinstance(value, Decimal) else value
    return "0" if number == 0 else str(number.normalize())


def canonical(value: Any) -> Any:
    """A JSON-able form with DynamoDB's types kept: equal exactly when DynamoDB would store equal values."""
    if isinstance(value, str):
        return ["S", value]
    if isinstance(value, bool):
        return ["BOOL", value]
    if isinstance(value, (Decimal, int, float)):
        return ["N", _number(value)]
    if value is None:
        return ["NULL"]
    if isinstance(value, dict):
        return ["M", {k: canonical(v) for k, v in value.items()}]
    if isinstance(value, (list, tuple)):
        return ["L", [canonical(v) for v in value]]
    if isinstance(value, (bytes, bytearray, Binary)):
        return ["B", base64.b64encode(bytes(value.value if isinstance(value, Binary) else value)).decode()]
    if isinstance(value, (set, frozenset)):
        members = [canonical(v) for v in value]
        tag = {"S": "SS", "N": "NS", "B": "BS"}.get(members[0][0] if members else "S", "SS")
        return [tag, sorted(m[1] for m in members)]
    raise TypeError(f"not a DynamoDB value: {type(value).__name__}")


def digest(item: Item | None) -> bytes | None:
    if item is None:
        return None
    text = json.dumps(canonical(item), sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def jsonable(value: Any) -> Any:
    """A readable JSON value for reports (sets sorted, numbers as numbers, binary as base64)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v) for v in value), key=str)
    if isinstance(value, (bytes, bytearray, Binary)):
        return base64.b64encode(bytes(value.value if isinstance(value, Binary) else value)).decode()
    return value


def attribute_diff(expected: Item | None, actual: Item | None) -> dict[str, Any]:
    """Attribute by attribute: ``{name: {"expected": v, "actual": v}}`` for every name that differs."""
    expected, actual = expected or {}, actual or {}
    diff = {}
    for name in sorted(set(expected) | set(actual)):
        mine, theirs = expected.get(name, ABSENT), actual.get(name, ABSENT)
        if (mine is ABSENT) != (theirs is ABSENT) or (
            mine is not ABSENT and canonical(mine) != canonical(theirs)
        ):
            diff[name] = {"expected": jsonable(mine), "actual": jsonable(theirs)}
    return diff


def is_leftover(item: Item | None) -> bool:
    return bool(item) and str(item.get("entity", "")).startswith(LEFTOVER_PREFIX)  # type: ignore[union-attr]


# =========================================================================== results
@dataclass
class Difference:
    kind: str
    source: str | None  # SourceRef.as_text()
    target_key: TargetKey | None
    diff: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source,
                "target_key": list(self.target_key) if self.target_key else None, "diff": self.diff}


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


# =========================================================================== the spill store
class SpillStore:
    """The rows of one run, in SQLite in a temporary folder (gone afterwards)."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="dynashift-verify-")
        self.path = Path(self._dir.name) / "verify.sqlite"
        self.db = sqlite3.connect(self.path)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{SQLITE_CACHE_KB}",
                       "temp_store=FILE", "locking_mode=EXCLUSIVE"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(
            """
            CREATE TABLE src (ref TEXT, digest BLOB, reason TEXT);
            CREATE TABLE exp (tkey TEXT, ref TEXT, digest BLOB);
            CREATE TABLE act (tkey TEXT, owner TEXT, digest BLOB, tomb INTEGER);
            CREATE TABLE quar (ref TEXT PRIMARY KEY, reason TEXT);
            CREATE TABLE cand (id INTEGER PRIMARY KEY, subject TEXT, value TEXT, kind TEXT, obs BLOB,
                               state TEXT DEFAULT 'pending', UNIQUE(subject, value));
            CREATE TABLE found (kind TEXT, source TEXT, tkey TEXT, diff TEXT, confirmed INTEGER,
                                UNIQUE(kind, source, tkey));
            """
        )

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()

    def index(self) -> None:
        self.db.executescript(
            """
            CREATE INDEX src_ref ON src(ref);
            CREATE INDEX exp_tkey ON exp(tkey);
            CREATE INDEX exp_ref ON exp(ref);
            CREATE INDEX act_tkey ON act(tkey);
            ANALYZE;
            """
        )

    def nominate(self) -> None:
        """Every possible difference, as a candidate to re-check (a superset: the re-check decides)."""
        self.db.executescript(
            """
            CREATE TEMP TABLE multi AS SELECT tkey FROM exp GROUP BY tkey HAVING count(*) > 1;
            CREATE INDEX temp.multi_tkey ON multi(tkey);
            CREATE TEMP TABLE badref AS SELECT ref FROM src WHERE reason IS NOT NULL;
            CREATE INDEX temp.badref_ref ON badref(ref);

            INSERT OR IGNORE INTO cand(subject, value, kind)
            SELECT 'k', e.tkey, 'missing' FROM exp e WHERE NOT EXISTS (SELECT 1 FROM act a WHERE a.tkey = e.tkey);

            -- differing content; a losing claimant of a shared key is fine when it is quarantined as a
            -- collision and the key is held by a claimant with equal content, or by a quarantined item
            INSERT OR IGNORE INTO cand(subject, value, kind)
            SELECT 'k', e.tkey, 'mismatched' FROM exp e JOIN act a ON a.tkey = e.tkey
            WHERE a.digest != e.digest AND NOT (
                a.owner IS NOT NULL AND a.owner != e.ref
                AND EXISTS (SELECT 1 FROM quar q WHERE q.ref = e.ref AND q.reason = 'key_collision')
                AND (EXISTS (SELECT 1 FROM exp e2 WHERE e2.tkey = e.tkey AND e2.ref = a.owner
                                                     AND e2.digest = a.digest)
                     OR EXISTS (SELECT 1 FROM badref b WHERE b.ref = a.owner)));

            -- a shared key whose claimants are not all accounted for
            INSERT OR IGNORE INTO cand(subject, value, kind)
            SELECT 'k', e.tkey, 'mismatched' FROM exp e JOIN multi m ON m.tkey = e.tkey
            LEFT JOIN act a ON a.tkey = e.tkey
            WHERE (a.owner IS NULL OR a.owner != e.ref)
              AND NOT EXISTS (SELECT 1 FROM quar q WHERE q.ref = e.ref AND q.reason = 'key_collision');

            INSERT OR IGNORE INTO cand(subject, value, kind)
            SELECT 'k', a.tkey, CASE WHEN a.tomb THEN 'leftover' ELSE 'extra' END FROM act a
            WHERE NOT EXISTS (SELECT 1 FROM exp e WHERE e.tkey = a.tkey)
              AND NOT (a.owner IS NOT NULL AND EXISTS (SELECT 1 FROM badref b WHERE b.ref = a.owner));

            INSERT OR IGNORE INTO cand(subject, value, kind)
            SELECT 'r', s.ref, 'quarantine_missing' FROM src s
            WHERE s.reason IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM quar q WHERE q.ref = s.ref AND q.reason = s.reason);

            INSERT OR IGNORE INTO cand(subject, value, kind)
            SELECT 'r', q.ref, 'quarantine_stale' FROM quar q
            WHERE NOT EXISTS (SELECT 1 FROM badref b WHERE b.ref = q.ref)
              AND NOT (q.reason = 'key_collision' AND EXISTS (
                  SELECT 1 FROM exp e JOIN act a ON a.tkey = e.tkey
                  WHERE e.ref = q.ref AND a.owner IS NOT NULL AND a.owner != q.ref AND a.tomb = 0));

            -- a clean item that lost a collision but is not in quarantine
            INSERT OR IGNORE INTO cand(subject, value, kind)
            SELECT DISTINCT 'r', e.ref, 'quarantine_missing' FROM exp e JOIN act a ON a.tkey = e.tkey
            WHERE a.owner IS NOT NULL AND a.owner != e.ref AND a.tomb = 0
              AND NOT EXISTS (SELECT 1 FROM quar q WHERE q.ref = e.ref);
            """
        )

    def scan_observation(self, subject: str, value: str) -> bytes:
        """What the scan saw of everything a candidate depends on (compared with the first re-check)."""
        if subject == "k":
            target = self.db.execute("SELECT digest FROM act WHERE tkey = ?", (value,)).fetchone()
            refs = self.hint_refs(value)
            parts: list[Any] = [target[0] if target else None]
        else:
            entry = self.db.execute("SELECT reason FROM quar WHERE ref = ?", (value,)).fetchone()
            refs = [value]
            parts = [entry[0] if entry else None]
        for ref in sorted(refs):
            row = self.db.execute("SELECT digest FROM src WHERE ref = ?", (ref,)).fetchone()
            parts.append((ref, row[0] if row else None))
        return _observation(parts)

    def hint_refs(self, tkey: str) -> list[str]:
        refs = {r for (r,) in self.db.execute("SELECT ref FROM exp WHERE tkey = ?", (tkey,))}
        refs |= {r for (r,) in self.db.execute("SELECT owner FROM act WHERE tkey = ? AND owner IS NOT NULL", (tkey,))}
        return sorted(refs)

    def counts(self, table: str) -> int:
        # `table` is one of this store's own table names, never input: no injection.
        return int(self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # nosec B608

    def quarantined_by_reason(self) -> dict[str, int]:
        """Bad items (transform) plus clean items recorded as collisions: the known quarantine."""
        rows = self.db.execute(
            "SELECT reason, count(*) FROM (SELECT reason FROM src WHERE reason IS NOT NULL "
            "UNION ALL SELECT q.reason FROM quar q JOIN src s ON s.ref = q.ref "
            "WHERE s.reason IS NULL AND q.reason = 'key_collision') GROUP BY reason"
        )
        return {reason: n for reason, n in rows}

    def add_found(self, diffs: Iterable[Difference], confirmed: bool) -> None:
        self.db.executemany(
            "INSERT OR IGNORE INTO found VALUES (?, ?, ?, ?, ?)",
            [(d.kind, d.source or "", key_text(d.target_key) if d.target_key else "",
              json.dumps(d.diff, default=str), int(confirmed)) for d in diffs],
        )

    def found(self, kind: str | None = None, limit: int | None = None) -> Iterator[Difference]:
        where = " WHERE kind = ?" if kind else ""  # the value is bound as a parameter
        query = "SELECT kind, source, tkey, diff FROM found" + where + " ORDER BY rowid"  # nosec B608
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        for k, source, tkey, diff in self.db.execute(query, (kind,) if kind else ()).fetchall():
            yield Difference(k, source or None, key_from_text(tkey) if tkey else None, json.loads(diff))

    def found_counts(self) -> tuple[dict[str, int], int]:
        counts = dict.fromkeys(KINDS, 0)
        for kind, n in self.db.execute("SELECT kind, count(*) FROM found GROUP BY kind"):
            counts[kind] = n
        unconfirmed = self.db.execute("SELECT count(*) FROM found WHERE confirmed = 0").fetchone()[0]
        return counts, int(unconfirmed)


def _observation(parts: list[Any]) -> bytes:
    """A digest of what a candidate depends on: the target item's and the sources' digests (or entry)."""

    def plain(part: Any) -> Any:
        if isinstance(part, bytes):
            return part.hex()
        if isinstance(part, tuple):
            return tuple(plain(p) for p in part)
        return part

    return hashlib.blake2b(repr([plain(p) for p in parts]).encode(), digest_size=16).digest()


# =========================================================================== scanning
def sampled(text: str, fraction: float) -> bool:
    return fraction >= 1 or zlib.crc32(text.encode()) < fraction * 2**32


def _raw_scan_pages(response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any) -> None:
    """botocore's ``before-parse`` hook for Scan: decode the JSON body in C, skip the model walk.

    botocore rebuilds every AttributeValue by walking the service model, which costs more CPU than
    everything else the verifier does per item. A successful Scan body already *is* the wire
    format (DynamoDB JSON; binary as base64 text, which `from_dynamodb_json` decodes), so it is
    handed over as it is through `customized_response_dict`, the hook's documented way to add to
    the parsed response, and the parser is given an empty body. Errors are left to botocore.
    """
    if response_dict.get("status_code") != 200:
        return
    body = json.loads(response_dict["body"])
    # ConsumedCapacity too: shared.core.capacity reads it from the parsed answer.
    customized_response_dict.update({k: body[k] for k in ("Items", "Count", "ConsumedCapacity") if k in body})
    if "LastEvaluatedKey" in body:  # sent back as ExclusiveStartKey, so binary key values as bytes again
        customized_response_dict["LastEvaluatedKey"] = {
            k: {"B": base64.b64decode(v["B"])} if "B" in v else v for k, v in body["LastEvaluatedKey"].items()
        }
    customized_response_dict["RawItems"] = True
    response_dict["body"] = b"{}"


async def scan_segments(client: Any, table: str, segments: int, on_page: Callable[[list[Item]], None]) -> None:
    """Parallel scan of one table, eventually consistent (one full scan of read capacity).

    `on_page` receives items in DynamoDB JSON (see `_raw_scan_pages`), once `raw_scan_pages(client)`
    is registered on the client.
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


def raw_scan_pages(client: Any) -> None:
    """Let this client's Scan calls return DynamoDB JSON unparsed (see `_raw_scan_pages`)."""
    client.meta.events.register("before-parse.dynamodb.Scan", _raw_scan_pages)


@dataclass
class Scanner:
    """Turns scanned pages into spill rows (the CPU side of step 1)."""

    definition: MigrationDefinition
    applier: Applier
    store: SpillStore
    request: VerifyRequest
    observer: Observer

    def source_page(self, table: str, raw_items: list[Item]) -> None:
        source = self.definition.source(table)
        src_rows, exp_rows = [], []
        for raw in raw_items:
            item = from_dynamodb_json(raw)
            ref = source.ref(item)
            ref_text = ref.as_text()
            if not sampled(ref_text, self.request.sample):
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
        self.observer.scanned(table, len(raw_items))

    def target_page(self, table: str, raw_items: list[Item]) -> None:
        rows = []
        selected = set(self.request.tables)
        every_table = selected == {s.name for s in self.definition.sources}
        for raw in raw_items:
            item = from_dynamodb_json(raw)
            key = key_text(self.definition.target_key(item))
            owner = self.definition.owner(item)
            if owner is None:
                if not every_table or not sampled(key, self.request.sample):
                    continue
            elif owner.table not in selected or not sampled(owner.as_text(), self.request.sample):
                continue
            rows.append((key, owner.as_text() if owner else None, digest(item), int(is_leftover(item))))
        self.store.db.executemany("INSERT INTO act VALUES (?, ?, ?, ?)", rows)
        self.observer.scanned(table, len(raw_items))


# =========================================================================== live judgement
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
        return _observation(parts)


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


# =========================================================================== repair
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


# =========================================================================== preflight
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
                raw_scan_pages(client)
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
                        repair = await self._repair(applier, store)
                report = self._report(store, started, repair)
                await store_result(client, self.settings, report)
        finally:
            store.close()
        return report

    async def _load(self, client: Any, control: ControlStore, applier: Applier, store: SpillStore) -> None:
        self.observer.phase("scanning")
        # Streamed into the store a page at a time, without images: the quarantine grows with the
        # tables (1% bad rows of a billion items), so it must not be held in memory.
        rows: list[tuple[str, str]] = []
        # Eventually consistent, like the scans: an entry written or cleared meanwhile is
        # no worse than an item changed meanwhile, and the re-check reads strongly.
        async for ref, reason in control.quarantine_reasons(consistent=False):
            text = ref.as_text()
            if ref.table in self.request.tables and sampled(text, self.request.sample):
                rows.append((text, reason))
            if len(rows) >= QUARANTINE_CHUNK:
                store.db.executemany("INSERT OR REPLACE INTO quar VALUES (?, ?)", rows)
                rows.clear()
        store.db.executemany("INSERT OR REPLACE INTO quar VALUES (?, ?)", rows)
        scanner = Scanner(self.definition, applier, store, self.request, self.observer)
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
            store.add_found([_unconfirmed(subject, value, kind)], confirmed=False)
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

    async def _repair(self, applier: Applier, store: SpillStore) -> dict[str, Any]:
        attempted = fixed = 0
        remaining: list[Difference] = []
        differences = list(store.found())
        for start in range(0, len(differences), RECHECK_CHUNK):
            chunk = differences[start : start + RECHECK_CHUNK]
            for difference in chunk:  # one at a time: repairs of neighbouring keys interact
                await repair_difference(LiveView(applier, self.definition), difference)
                attempted += 1
            view = LiveView(applier, self.definition)
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

    def _report(self, store: SpillStore, started: float, repair: dict[str, Any] | None) -> dict[str, Any]:
        finished = self.clock()
        counts, unconfirmed = store.found_counts()
        source_items, target_items = store.counts("src"), store.counts("act")
        elapsed = max(finished - started, 1e-9)
        differences = sum(counts.values())
        ok = differences == 0 or (repair is not None and repair["remaining"] == 0)
        return {
            "ok": ok,
            "source_items": source_items,
            "target_items": target_items,
            **counts,
            "unconfirmed": unconfirmed,
            "quarantined": store.quarantined_by_reason(),
            "samples": {k: [d.as_dict() for d in store.found(k, SAMPLES_PER_KIND)] for k in KINDS if counts[k]},
            "elapsed_s": round(elapsed, 3),
            "items_per_s": round((source_items + target_items) / elapsed, 1),
            "started_at": started,
            "finished_at": finished,
            "tables": list(self.request.tables),
            "sample": self.request.sample,
            "settle_s": self.request.settle_s,
            "rounds": self.rounds,
            "rechecked": self.rechecked,
            "repair": repair,
            "capacity": self._capacity(source_items + target_items),
        }

    def _capacity(self, items: int) -> dict[str, Any]:
        """Units this run consumed (its control-table reads and result write excepted), priced."""
        region = self.settings.effective_region
        verify_only = self.usage.minus(self.repair_usage)
        out: dict[str, Any] = {
            "region": region,
            "verify": {**verify_only.as_dict(), "usd": capacity.price(verify_only, region),
                       "read_units_per_item": round(verify_only.read_units / items, 4) if items else None},
        }
        if self.request.repair:
            out["repair"] = {**self.repair_usage.as_dict(), "usd": capacity.price(self.repair_usage, region)}
        return out


def _unconfirmed(subject: str, value: str, kind: str) -> Difference:
    if subject == "k":
        return Difference(kind, None, key_from_text(value), {})
    return Difference(kind, value, None, {})


def run(settings: Settings, request: VerifyRequest, observer: Observer | None = None) -> dict[str, Any]:
    """Verify (and with `request.repair`, repair); returns the report, also written to `request.json_path`."""
    report = asyncio.run(VerifyRun(settings, request, observer or Observer()).run())
    if request.json_path is not None:
        write_report(report, request.json_path)
    return report


def write_report(report: dict[str, Any], path: Path) -> None:
    try:
        path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    except OSError as exc:
        raise UsageError(f"--json-file: cannot write {path}: {exc.strerror or exc}") from None


# =========================================================================== the stored result
COUNT_FIELDS = ("source_items", "target_items", *KINDS, "unconfirmed")


def _result_item(report: dict[str, Any], sk: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        **keys.verify_result(sk),
        "ok": {"BOOL": bool(report["ok"])},
        "started_at": {"N": repr(round(report["started_at"], 3))},
        "finished_at": {"N": repr(round(report["finished_at"], 3))},
        "elapsed_s": {"N": repr(report["elapsed_s"])},
        "tables": {"L": [{"S": t} for t in report["tables"]]},
        "sample": {"N": repr(report["sample"])},
        "quarantined": {"M": {k: {"N": str(v)} for k, v in report["quarantined"].items()}},
    }
    for name in COUNT_FIELDS:
        item[name] = {"N": str(int(report[name]))}
    if report.get("repair"):
        item["repaired"] = {"N": str(report["repair"]["fixed"])}
    return item


async def store_result(client: Any, settings: Settings, report: dict[str, Any]) -> None:
    finished_iso = datetime.fromtimestamp(report["finished_at"], UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    history = _result_item(report, f"HIST#{finished_iso}")
    history["expires_at"] = {"N": str(int(report["finished_at"]) + HISTORY_TTL_S)}
    for item in (_result_item(report, "LAST"), history):
        try:
            await client.put_item(TableName=settings.control_table, Item=item)
        except Exception as exc:
            raise translate(exc, "store the verify result") from exc


def last_verify(settings: Settings) -> dict[str, Any] | None:
    """The last verify result (control item VERIFY/LAST), or None if none ran yet.

    Shape: ``{"ok": bool, "finished_at": float, "started_at": float, "elapsed_s": float,
    "tables": [str], "sample": float, "source_items": int, "target_items": int, "missing": int,
    "extra": int, "mismatched": int, "leftover": int, "quarantine_missing": int,
    "quarantine_stale": int, "unconfirmed": int, "quarantined": {reason: int}}``.
    """
    client = aws.dynamodb(settings)
    try:
        response = client.get_item(TableName=settings.control_table,
                                   Key=keys.verify_result(), ConsistentRead=True)
    except Exception as exc:
        raise translate(exc, f"read the last verify result from {settings.control_table}") from exc
    raw = response.get("Item")
    if not raw:
        return None
    item = to_native(raw)
    result: dict[str, Any] = {"ok": bool(item["ok"]), "tables": list(item.get("tables", []))}
    for name in ("finished_at", "started_at", "elapsed_s", "sample"):
        result[name] = float(item.get(name, 0))
    for name in (*COUNT_FIELDS, "repaired"):
        if name in item:
            result[name] = int(item[name])
    result["quarantined"] = {k: int(v) for k, v in item.get("quarantined", {}).items()}
    return result


__all__ = [
    "KINDS", "Difference", "Observer", "VerifyRequest", "attribute_diff", "canonical", "digest", "judge_key",
    "judge_ref", "last_verify", "make_request", "run", "write_report",
]
