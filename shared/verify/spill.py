"""The spill store: one verify run's rows in SQLite, in a temporary folder (step 1-2 of the design).

Tables: ``src`` (source ref, digest, quarantine reason if it does not
transform), ``exp`` (target key, claiming source, digest of the expected
item), ``act`` (target key, owner, digest, tombstone?), ``quar`` (the
control table's quarantine, reasons only), ``cand`` (nominated candidates
and their re-check state) and ``found`` (differences). Indexes are built
after the load, so a nomination join is a merge of two B-trees on disk: the
memory stays bounded (the page cache is capped) whatever the table sizes.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from shared.store.control import key_from_text, key_text
from shared.verify.differences import KINDS, Difference, observation_digest

SQLITE_CACHE_KB = 16_384


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
        return observation_digest(parts)

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

