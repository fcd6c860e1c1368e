"""The control table: dynashift's own state, one item family per concern.

Layout (hash key PK, range key SK, TTL attribute `expires_at`):

| PK                         | SK                  | what                                         |
|----------------------------|---------------------|----------------------------------------------|
| `QUARANTINE#<bucket>`      | `<source ref>`      | a source item that cannot be migrated        |
| `WAIT#<target key>`        | `<source ref>`      | a source item waiting for a key to be free   |
| `COLLISIONS`               | `SUMMARY`           | which items may have collided, which keys may have waiters |
| `CHECKPOINT#<stream arn>`  | `<shard id>`        | last sequence number fully applied           |
| `MODE`                     | `MODE`              | the cutover flag                             |
| `REVERSE#<source ref>`     | `STATE`             | reverse replication: version + held keys     |

Quarantine is spread over a few buckets so listing it is a handful of
queries, not a scan, and no single partition takes every write. An entry
keeps the full source image (zlib-compressed DynamoDB JSON, so even a
~400 KB legacy item fits), its table and key, a reason code and a message a
person can act on, and `held_keys`: the target keys the item's last clean
version left in the target, which the next clean version must clean up.
The image is personal data (emails): an operator's listing reads entries
without it (`quarantine_list(with_images=False)` projects it, the held keys
and the collision key away), and only an explicit request fetches it.

A projection does not lower what a read costs: the entry's full size,
image included (an oversized item's image is hundreds of KB). Readers that
need every entry's reason and nothing else (verify) therefore query the
sparse index `QUARANTINE_INDEX` instead, keyed by the entry's bucket
(``quarantine_bucket``, which only quarantine entries carry) and projecting
only the source table, key and reason: a read there costs the projected
size. An index is eventually consistent, which those readers accept (they
re-check strongly what they find); a control table created before the index
existed is read from the table itself.

All reads here are strongly consistent: the no-lost-wake-up argument for
key collisions (see `shared.protocol.apply`) depends on it.

**The collision summary** lets the forward mirror skip reads that almost
always find nothing (issue 14: they were most of its read units). One item
holds two number sets of 14-bit hash buckets (`summary_bucket`): `collided`,
the source items that may have a collision entry, and `waited`, the target
keys that may have waiters. A writer adds both *before* it records a
collision and registers as a waiter (`note_collision`), and nothing is ever
taken out, so the summary over-approximates what was written before any
read of it: a bucket that is absent proves that no collision entry (no
waiter) was written for that item (key) before the read began. A present
bucket only means "read the entry (query the waiters) as before". The sets
are bounded by the bucket count (16,384 values: at most ~64 KB, 16 read
units; a migration with a few dozen collisions keeps it under one 4 KB read
unit, with a false-positive rate of well under 1%). Growing the item costs
its writer the item's size in write units, once per collision.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from boto3.dynamodb.types import Binary

from shared.core.aws import batch_get_items, translate
from shared.core.codec import from_dynamodb_json, to_dynamodb_json
from shared.core.definition import Item, SourceRef, TargetKey
from shared.store import keys

QUARANTINE_BUCKETS = 8
QUARANTINE_INDEX = "QuarantineReasons"  # template.yaml's sparse index of every entry's reason (module note)
KEY_SEP = "\x1f"
SUMMARY_BUCKETS = 1 << 14  # hash buckets of the collision summary (module note)


def key_text(key: TargetKey) -> str:
    return KEY_SEP.join(key)


def key_from_text(text: str) -> TargetKey:
    return tuple(text.split(KEY_SEP))


def summary_bucket(text: str) -> int:
    return zlib.crc32(text.encode()) & (SUMMARY_BUCKETS - 1)


@dataclass(frozen=True)
class CollisionSummary:
    """What the collision summary said when read (module note): over-approximations only."""

    collided: frozenset[int] = frozenset()
    waited: frozenset[int] = frozenset()

    def may_have_collided(self, ref: SourceRef) -> bool:
        """False proves the item had no collision entry written before the read."""
        return summary_bucket(ref.as_text()) in self.collided

    def may_be_waited_for(self, key: TargetKey) -> bool:
        """False proves no waiter registered on the key before the read."""
        return summary_bucket(key_text(key)) in self.waited


def quarantine_pk(ref: SourceRef) -> str:
    bucket = zlib.crc32(ref.as_text().encode()) % QUARANTINE_BUCKETS
    return f"QUARANTINE#{bucket}"


class _NoIndex(Exception):
    """The control table has no `QUARANTINE_INDEX` (created before it existed)."""


@dataclass
class QuarantineEntry:
    ref: SourceRef
    reason: str
    message: str
    image: Item | None
    held_keys: set[TargetKey] = field(default_factory=set)
    detected_at: float = 0.0
    collision_key: TargetKey | None = None
    write_token: str | None = None  # changes with every write of the entry (as read; None when building one)


def encode_image(image: Item | None) -> bytes:
    return zlib.compress(json.dumps(to_dynamodb_json(image or {}), separators=(",", ":")).encode(), 6)


def decode_image(blob: Any) -> Item:
    raw = blob.value if isinstance(blob, Binary) else blob
    return from_dynamodb_json(json.loads(zlib.decompress(raw)))


class ControlStore:
    """Async access to the control table through an aiobotocore client."""

    def __init__(self, client: Any, table: str, clock: Any = time.time) -> None:
        self.client = client
        self.table = table
        self.clock = clock

    # ------------------------------------------------------------ quarantine
    async def quarantine_put(
        self, entry: QuarantineEntry, *, only_if_absent: bool = False, unless_changed: dict[str, Any] | None = None
    ) -> str | None:
        """Record (or refresh) an entry; returns its write token (None if it existed
        and `only_if_absent` was asked, as stale writers do). `held_keys` are *added* to what is stored:
        a writer that knows less (the backfill, from an old read) must never make
        the mirror forget which target keys a quarantined item still holds, and a
        superset is harmless because every removal checks ownership.

        `unless_changed`: a `ConditionCheck` on the source item (a validated
        writer's read); the entry is written in one transaction with it, and
        not at all (None) if the source changed since: the mirror may already
        have recorded the newer state, which this entry must not replace."""
        names = {"#r": "reason", "#m": "message", "#i": "image", "#d": "detected_at", "#t": "source_table",
                 "#k": "source_key", "#c": "collision_key", "#b": "quarantine_bucket"}
        values: dict[str, Any] = {
            ":b": {"S": quarantine_pk(entry.ref)},
            ":t": {"S": entry.ref.table},
            ":k": {"L": [{"S": k} for k in entry.ref.key]},
            ":r": {"S": entry.reason},
            ":m": {"S": entry.message[:2000]},
            ":i": {"B": encode_image(entry.image)},
            ":d": {"N": repr(round(entry.detected_at or self.clock(), 3))},
        }
        token = uuid.uuid4().hex
        names["#w"] = "write_token"
        values[":w"] = {"S": token}
        update = "SET #t = :t, #k = :k, #r = :r, #m = :m, #i = :i, #d = :d, #w = :w, #b = :b"
        if entry.collision_key:
            update += ", #c = :c"
            values[":c"] = {"S": key_text(entry.collision_key)}
        else:
            update += " REMOVE #c"
        if entry.held_keys:
            update += " ADD #h :h"
            names["#h"] = "held_keys"
            values[":h"] = {"SS": sorted(key_text(k) for k in entry.held_keys)}
        extra = {"ConditionExpression": "attribute_not_exists(PK)"} if only_if_absent else {}
        request = {
            "TableName": self.table,
            "Key": {"PK": {"S": quarantine_pk(entry.ref)}, "SK": {"S": entry.ref.as_text()}},
            "UpdateExpression": update,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            **extra,
        }
        if unless_changed is not None:
            return await self._put_if_source_unchanged(request, unless_changed, token)
        try:
            await self.client.update_item(**request)
        except Exception as exc:
            if only_if_absent and getattr(exc, "response", {}).get("Error", {}).get("Code") == (
                "ConditionalCheckFailedException"
            ):
                return None
            raise translate(exc, "store quarantine entry") from exc
        return token

    async def _put_if_source_unchanged(self, request: dict[str, Any], check: dict[str, Any], token: str) -> str | None:
        try:
            await self.client.transact_write_items(TransactItems=[{"ConditionCheck": check}, {"Update": request}])
        except Exception as exc:
            response = getattr(exc, "response", {})
            if response.get("Error", {}).get("Code") == "TransactionCanceledException":
                codes = [r.get("Code") for r in response.get("CancellationReasons", [])]
                if codes and codes[0] == "ConditionalCheckFailed":
                    return None  # the source changed since it was read
            raise translate(exc, "store quarantine entry") from exc
        return token

    async def quarantine_clear(self, ref: SourceRef, *, token: str | None = None) -> None:
        """Delete an entry; with `token`, only if it is still the one written with it."""
        extra: dict[str, Any] = {}
        if token:
            extra = {"ConditionExpression": "#w = :w", "ExpressionAttributeNames": {"#w": "write_token"},
                     "ExpressionAttributeValues": {":w": {"S": token}}}
        try:
            await self.client.delete_item(
                TableName=self.table, Key={"PK": {"S": quarantine_pk(ref)}, "SK": {"S": ref.as_text()}}, **extra
            )
        except Exception as exc:
            if token and getattr(exc, "response", {}).get("Error", {}).get("Code") == (
                "ConditionalCheckFailedException"
            ):
                return  # rewritten since by someone who knows better: keep theirs
            raise translate(exc, "clear quarantine entry") from exc

    def quarantine_settle_action(self, ref: SourceRef, entry: QuarantineEntry | None) -> dict[str, Any]:
        """A transaction action that clears `entry` exactly as it was read (its write
        token), or, with no entry read, checks there still is none. A validated
        write carries it, so the held keys it removes are those of the entry it
        clears, and an entry written meanwhile cancels the write (it is re-read)."""
        key = {"PK": {"S": quarantine_pk(ref)}, "SK": {"S": ref.as_text()}}
        if entry is None:
            return {"ConditionCheck": {"TableName": self.table, "Key": key,
                                       "ConditionExpression": "attribute_not_exists(PK)"}}
        if entry.write_token is None:
            raise ValueError(f"quarantine entry of {ref.as_text()} was not read from the table (no write token)")
        return {"Delete": {"TableName": self.table, "Key": key, "ConditionExpression": "#w = :w",
                           "ExpressionAttributeNames": {"#w": "write_token"},
                           "ExpressionAttributeValues": {":w": {"S": entry.write_token}}}}

    async def quarantine_get_many(self, refs: Iterable[SourceRef]) -> dict[SourceRef, QuarantineEntry]:
        """Strongly consistent BatchGetItem of the entries for `refs` (missing = not quarantined)."""
        keys = [{"PK": {"S": quarantine_pk(r)}, "SK": {"S": r.as_text()}} for r in dict.fromkeys(refs)]
        entries = (self._entry(raw) for raw in await batch_get_items(self.client, self.table, keys,
                                                                     "read quarantine entries"))
        return {entry.ref: entry for entry in entries}

    async def quarantine_list(self, reason: str | None = None, *, with_images: bool = True) -> list[QuarantineEntry]:
        """Every entry (of `reason`), sorted by source item.

        `with_images=False` is the listing an operator sees by default: the
        read projects away the image (personal data, e.g. emails), the held
        keys and the collision key (target keys can embed an email), so they
        are not even fetched; those entries carry ``image=None`` and no held
        keys, and must not be used to re-apply or clear anything.
        """
        projection: dict[str, Any] = {}
        if not with_images:
            projection = {"ProjectionExpression": "#t, #k, #r, #m, #d",
                          "ExpressionAttributeNames": {"#t": "source_table", "#k": "source_key", "#r": "reason",
                                                       "#m": "message", "#d": "detected_at"}}
        entries = []
        for bucket in range(QUARANTINE_BUCKETS):
            async for raw in self._query(f"QUARANTINE#{bucket}", **projection):
                entry = self._entry(raw)
                if reason is None or entry.reason == reason:
                    entries.append(entry)
        return sorted(entries, key=lambda e: e.ref)

    async def quarantine_reasons(self, *, consistent: bool = True) -> AsyncIterator[tuple[SourceRef, str]]:
        """Every entry's item and reason, a page at a time, without the images.

        For readers that only count or compare: memory stays one page, not the whole
        quarantine. `consistent=False` is for a reader that re-checks strongly what it finds
        (the verifier): it reads the sparse index (module note), where a read costs the
        projected size instead of the entries' images; a table without the index is read
        eventually consistently (half the units; a projection does not lower them).
        """
        if not consistent:
            try:
                async for pair in self._reasons_from_index():
                    yield pair
                return
            except _NoIndex:
                pass  # a control table created before the index: read the table itself
        projection: dict[str, Any] = {
            "ProjectionExpression": "#t, #k, #r",
            "ExpressionAttributeNames": {"#t": "source_table", "#k": "source_key", "#r": "reason"},
            "ConsistentRead": consistent,
        }
        for bucket in range(QUARANTINE_BUCKETS):
            async for raw in self._query(f"QUARANTINE#{bucket}", **projection):
                yield self._ref(raw), raw["reason"]["S"]

    async def _reasons_from_index(self) -> AsyncIterator[tuple[SourceRef, str]]:
        for bucket in range(QUARANTINE_BUCKETS):
            kwargs: dict[str, Any] = {
                "TableName": self.table, "IndexName": QUARANTINE_INDEX,
                "KeyConditionExpression": "#b = :b", "ExpressionAttributeNames": {"#b": "quarantine_bucket"},
                "ExpressionAttributeValues": {":b": {"S": f"QUARANTINE#{bucket}"}},
            }
            try:
                async for raw in self._pages(kwargs):
                    yield self._ref(raw), raw["reason"]["S"]
            except Exception as exc:
                error = getattr(exc, "response", {}).get("Error", {})
                first_query = bucket == 0 and "ExclusiveStartKey" not in kwargs  # nothing yielded yet
                if first_query and error.get("Code") == "ValidationException" and "index" in str(
                        error.get("Message", "")).lower():
                    raise _NoIndex from exc
                raise translate(exc, f"query the control table's {QUARANTINE_INDEX} index") from exc

    async def quarantine_counts(self) -> dict[str, int]:
        """Entries per reason, sorted by reason; streamed, so memory holds the reasons only."""
        counts: dict[str, int] = {}
        async for _, reason in self.quarantine_reasons():
            counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items()))

    @staticmethod
    def _ref(raw: dict[str, Any]) -> SourceRef:
        return SourceRef(raw["source_table"]["S"], tuple(k["S"] for k in raw["source_key"]["L"]))

    @classmethod
    def _entry(cls, raw: dict[str, Any]) -> QuarantineEntry:
        return QuarantineEntry(
            ref=cls._ref(raw),
            reason=raw["reason"]["S"],
            message=raw["message"]["S"],
            image=decode_image(raw["image"]["B"]) if "image" in raw else None,  # absent: projected away
            held_keys={key_from_text(k) for k in raw.get("held_keys", {}).get("SS", [])},
            detected_at=float(raw["detected_at"]["N"]),
            collision_key=key_from_text(raw["collision_key"]["S"]) if "collision_key" in raw else None,
            write_token=raw["write_token"]["S"] if "write_token" in raw else None,
        )

    # --------------------------------------------------------------- waiters
    async def note_collision(self, ref: SourceRef, keys_wanted: Iterable[TargetKey]) -> None:
        """Add the item and the keys it waits for to the collision summary (module note);
        called before the collision entry and the waiters are written."""
        try:
            await self.client.update_item(
                TableName=self.table,
                Key=keys.collision_summary(),
                UpdateExpression="ADD collided :c, waited :w",
                ExpressionAttributeValues={
                    ":c": {"NS": [str(summary_bucket(ref.as_text()))]},
                    ":w": {"NS": sorted({str(summary_bucket(key_text(k))) for k in keys_wanted}) or ["0"]},
                },
            )
        except Exception as exc:
            raise translate(exc, "note a key collision") from exc

    async def collision_summary(self) -> CollisionSummary:
        """Strongly consistent read of the collision summary."""
        try:
            response = await self.client.get_item(
                TableName=self.table, Key=keys.collision_summary(), ConsistentRead=True
            )
        except Exception as exc:
            raise translate(exc, "read the collision summary") from exc
        item = response.get("Item") or {}
        return CollisionSummary(
            collided=frozenset(int(n) for n in item.get("collided", {}).get("NS", [])),
            waited=frozenset(int(n) for n in item.get("waited", {}).get("NS", [])),
        )

    async def waiter_add(self, key: TargetKey, ref: SourceRef) -> str:
        token = uuid.uuid4().hex
        try:
            await self.client.put_item(
                TableName=self.table,
                Item={
                    "PK": {"S": "WAIT#" + key_text(key)},
                    "SK": {"S": ref.as_text()},
                    "token": {"S": token},
                    "registered_at": {"N": repr(round(self.clock(), 3))},
                },
            )
        except Exception as exc:
            raise translate(exc, "register key waiter") from exc
        return token

    async def waiters(self, key: TargetKey) -> list[tuple[SourceRef, str]]:
        return [
            (SourceRef.from_text(raw["SK"]["S"]), raw["token"]["S"])
            async for raw in self._query("WAIT#" + key_text(key))
        ]

    async def waiter_remove(self, key: TargetKey, ref: SourceRef, token: str | None = None) -> None:
        kwargs: dict[str, Any] = {}
        if token:
            kwargs = {"ConditionExpression": "#t = :t", "ExpressionAttributeNames": {"#t": "token"},
                      "ExpressionAttributeValues": {":t": {"S": token}}}
        try:
            await self.client.delete_item(
                TableName=self.table, Key={"PK": {"S": "WAIT#" + key_text(key)}, "SK": {"S": ref.as_text()}}, **kwargs
            )
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return  # re-registered meanwhile by a newer collision: keep it
            raise translate(exc, "remove key waiter") from exc

    # ---------------------------------------------------------------- helpers
    async def _query(self, pk: str, **extra: Any) -> Any:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "PK = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ConsistentRead": True,
            **extra,
        }
        try:
            async for raw in self._pages(kwargs):
                yield raw
        except Exception as exc:
            raise translate(exc, f"query control table {pk}") from exc

    async def _pages(self, kwargs: dict[str, Any]) -> Any:
        """Every item a Query returns, a page at a time (`kwargs` ends holding the last page's start)."""
        while True:
            page = await self.client.query(**kwargs)
            for raw in page.get("Items", []):
                yield raw
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class StaleWriterRegistry:
    """Who may currently write from an outdated read (the backfill's workers).

    Each stale writer holds a lease item `STALE_WRITERS` / `<writer id>`.
    The mirror writes tombstones only while some lease is valid; it re-reads
    the registry at least every `refresh_s`. A new writer therefore waits
    `fence_s` = refresh + margin after registering before its first read:
    any removal the mirror made without a tombstone happened before the
    writer could read the removed item.

    A lease also says what its writer may still write: `reads_since` is a
    lower bound on the read time of every stale write the writer has in
    flight or will still issue (the registration time for a writer that has
    not read yet; the oldest page still being written, at each heartbeat).
    A write *issued* within the horizon of its read can *land* much later (a
    slow engine, botocore's retries), so the tombstone sweeper keeps every
    tombstone such a write could still need (`oldest_read`). A live lease
    without `reads_since` protects every tombstone.

    A lease counts as live for `LANDING_GRACE_S` past its end. The writer's
    gate (`backfill.lease`) sends a request only while the lease will
    outlive it by `consistency_margin_s`, but a request is *sent* before it
    *lands*: on a loaded engine, behind a slow proxy or a full connection
    pool, a write sent in time can reach the table after the lease ended.
    Had the mirror stopped leaving tombstones (or the sweeper removed them)
    at the lease's end, such a late write could bring back a key removed
    in between. A writer that deregisters has no write left in flight
    (`gather_settled`), so the grace only holds for a lease that lapsed or
    whose writer died; it costs tombstones for a few seconds more.
    """

    PK = keys.STALE_WRITERS_PK
    LANDING_GRACE_S = 10.0

    def __init__(self, client: Any, table: str, clock: Any = time.time) -> None:
        self.client = client
        self.table = table
        self.clock = clock

    async def register(self, writer_id: str, kind: str, lease_s: float, *, reads_since: float | None = None) -> float:
        """Take or renew the lease. `reads_since`: no write still to come from this
        writer rests on a read older than this (default: now, right only for a
        writer that has not read yet; a renewal must pass its oldest page in flight)."""
        now = self.clock()
        until = now + lease_s
        since = now if reads_since is None else min(reads_since, now)
        try:
            await self.client.put_item(
                TableName=self.table,
                Item={
                    "PK": {"S": self.PK},
                    "SK": {"S": writer_id},
                    "kind": {"S": kind},
                    "lease_until": {"N": repr(round(until, 3))},
                    "reads_since": {"N": repr(math.floor(since * 1000) / 1000)},
                    "expires_at": {"N": str(int(until) + 3600)},
                },
            )
        except Exception as exc:
            raise translate(exc, "register stale writer") from exc
        return until

    async def deregister(self, writer_id: str) -> None:
        try:
            await self.client.delete_item(TableName=self.table, Key=keys.stale_writer(writer_id))
        except Exception as exc:
            raise translate(exc, "deregister stale writer") from exc

    async def active(self) -> bool:
        return bool(await self._live())

    async def live_until(self) -> float | None:
        """When the last lease seen now stops counting (its end plus the landing
        grace), if it is not renewed; None when no stale writer is live."""
        live = await self._live()
        return max(float(i["lease_until"]["N"]) for i in live) + self.LANDING_GRACE_S if live else None

    async def oldest_read(self) -> float | None:
        """The oldest read a live stale writer may still write from (None: no live
        writer; -inf: one that does not say, so every tombstone must stay)."""
        live = await self._live()
        if not live:
            return None
        return min(float(i["reads_since"]["N"]) if "reads_since" in i else -math.inf for i in live)

    async def _live(self) -> list[dict[str, Any]]:
        now = self.clock()
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "PK = :pk",
            "ExpressionAttributeValues": {":pk": {"S": self.PK}},
            "ConsistentRead": True,
        }
        while True:
            try:
                page = await self.client.query(**kwargs)
            except Exception as exc:
                raise translate(exc, "read stale writer registry") from exc
            items.extend(i for i in page.get("Items", []) if float(i["lease_until"]["N"]) + self.LANDING_GRACE_S > now)
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


class StaleWriterWatch:
    """The registry's answer to "may a stale writer be about?", re-read once
    it is older than `refresh_s`.

    Age is measured from when the read was *sent*, so an answer is at least
    as fresh as it claims. That is what the fence needs from every remover:
    a removal decided on an answer read at t0 removes a key the source gave
    up before the decision, so before t0 + refresh; a stale writer unseen at
    t0 registered after it and reads only after t0 + refresh + margin, when
    its (eventually consistent) read already shows the change. A single read
    is shared by concurrent askers, so a busy batch does not query the
    registry per removal.
    """

    def __init__(self, registry: StaleWriterRegistry, refresh_s: float, monotonic: Any = time.monotonic) -> None:
        self.registry = registry
        self.refresh_s = refresh_s
        self.monotonic = monotonic
        self._sent_at = -math.inf
        self._active = True  # until the registry says otherwise
        self._lock = asyncio.Lock()

    async def stale_writers_about(self) -> bool:
        if self.monotonic() - self._sent_at >= self.refresh_s:
            async with self._lock:
                sent_at = self.monotonic()
                if sent_at - self._sent_at >= self.refresh_s:
                    self._active = await self.registry.active()
                    self._sent_at = sent_at
        return self._active
