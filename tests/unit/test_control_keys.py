"""The control table's key layout is a stored format: items written by one version are read by the next
(a resumed backfill, a cutover resumed after an upgrade). These are the layouts, written out."""

from __future__ import annotations

from shared.store import keys


def test_every_family_keeps_its_stored_layout():
    def k(pk: str, sk: str) -> dict[str, dict[str, str]]:
        return {"PK": {"S": pk}, "SK": {"S": sk}}

    assert keys.mode() == k("MODE", "MODE")
    assert keys.mirror_start("sc-accounts") == k("MIRROR", "sc-accounts")
    assert keys.checkpoint("arn:s", "shard-1") == k("CHECKPOINT#arn:s", "shard-1")
    assert keys.position("arn:s", "shard-1") == k("DRAINPOS#arn:s", "shard-1")
    assert keys.stale_writer("w1") == k("STALE_WRITERS", "w1")
    assert keys.reverse_state("sc-accounts|a1") == k("REVERSE#sc-accounts|a1", "STATE")
    assert keys.verify_result() == k("VERIFY", "LAST")
    assert keys.backup("2026-01-01T00:00:00.000Z#t#on-demand") == k("BACKUP", "2026-01-01T00:00:00.000Z#t#on-demand")
    assert keys.backfill("sc-accounts", "UNIT#00003") == k("BACKFILL#sc-accounts", "UNIT#00003")


def test_no_two_families_share_a_partition_key_shape():
    # GIVEN every family's fixed partition key or prefix (and the store's other families)
    from shared.core.definition import SourceRef
    from shared.store.control import quarantine_pk
    from shared.store.receipts import RECEIPT_PREFIX, USAGE_PREFIX

    shapes = [keys.MODE_PK, keys.MIRROR_PK, keys.CHECKPOINT_PREFIX, keys.POSITION_PREFIX, keys.STALE_WRITERS_PK,
              keys.REVERSE_PREFIX, keys.VERIFY_PK, keys.BACKUP_PK, keys.BACKFILL_PREFIX, RECEIPT_PREFIX,
              USAGE_PREFIX, quarantine_pk(SourceRef("t", ("k",))).split("#")[0] + "#", "WAIT#"]
    # THEN none is a prefix of another: a Query on one family never reads another's items
    for a in shapes:
        for b in shapes:
            assert a == b or not b.startswith(a), (a, b)
