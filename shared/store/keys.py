"""The control table's item families, by key: the one place that names them.

Every dynashift item in the control table has ``PK`` and ``SK`` (strings). A
family is a partition-key shape; its sort key says which member. The modules
that read and write a family build its keys here, so a family's layout is
written once and a new one cannot take another's name unseen.

| family | PK | SK | owner |
|---|---|---|---|
| mode flag | ``MODE`` | ``MODE`` | `shared.store.mode` |
| mirror start | ``MIRROR`` | logical source table | `shared.streams.coverage` |
| runner checkpoint | ``CHECKPOINT#<stream arn>`` | shard id | `shared.streams.runner` |
| drain position | ``DRAINPOS#<stream arn>`` | shard id | `shared.streams.drain` |
| receipts, usage | ``RECEIPT#<stream arn>``, ``USAGE#<direction>`` | shard id, hour | `shared.store.receipts` |
| quarantine | see `shared.store.control.quarantine_pk` | source ref | `shared.store.control` |
| collision waiters | ``WAIT#<target key>`` | source ref | `shared.store.control` |
| collision summary | ``COLLISIONS`` | ``SUMMARY`` | `shared.store.control` |
| stale writers | ``STALE_WRITERS`` | writer id | `shared.store.control` |
| reverse state | ``REVERSE#<source ref>`` | ``STATE`` | `shared.streams.reverse_mirror` |
| verify result | ``VERIFY`` | ``LAST``, history | `shared.verify.report` |
| backups | ``BACKUP`` | created-at#table#kind | `shared.ops.backup` |
| backfill plan | ``BACKFILL#<source table>`` | ``RUN``, ``UNIT#<n>`` | `backfill.units` |
"""

from __future__ import annotations

from typing import Any

Key = dict[str, Any]  # a wire key: {"PK": {"S": ...}, "SK": {"S": ...}}

MODE_PK = "MODE"
MIRROR_PK = "MIRROR"
CHECKPOINT_PREFIX = "CHECKPOINT#"
POSITION_PREFIX = "DRAINPOS#"
STALE_WRITERS_PK = "STALE_WRITERS"
REVERSE_PREFIX = "REVERSE#"
REVERSE_SK = "STATE"
VERIFY_PK = "VERIFY"
BACKUP_PK = "BACKUP"
BACKFILL_PREFIX = "BACKFILL#"
COLLISIONS_PK = "COLLISIONS"


def key(pk: str, sk: str) -> Key:
    return {"PK": {"S": pk}, "SK": {"S": sk}}


def mode() -> Key:
    return key(MODE_PK, MODE_PK)


def collision_summary() -> Key:
    return key(COLLISIONS_PK, "SUMMARY")


def mirror_start(table: str) -> Key:
    return key(MIRROR_PK, table)


def checkpoint_pk(stream_arn: str) -> str:
    return CHECKPOINT_PREFIX + stream_arn


def checkpoint(stream_arn: str, shard_id: str) -> Key:
    return key(checkpoint_pk(stream_arn), shard_id)


def position_pk(stream_arn: str) -> str:
    return POSITION_PREFIX + stream_arn


def position(stream_arn: str, shard_id: str) -> Key:
    return key(position_pk(stream_arn), shard_id)


def stale_writer(writer_id: str) -> Key:
    return key(STALE_WRITERS_PK, writer_id)


def reverse_state(ref_text: str) -> Key:
    return key(REVERSE_PREFIX + ref_text, REVERSE_SK)


def verify_result(sk: str = "LAST") -> Key:
    return key(VERIFY_PK, sk)


def backup(sk: str) -> Key:
    return key(BACKUP_PK, sk)


def backfill_pk(table: str) -> str:
    return BACKFILL_PREFIX + table


def backfill(table: str, sk: str) -> Key:
    return key(backfill_pk(table), sk)
