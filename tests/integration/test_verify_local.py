"""`dynashift verify` on DynamoDB Local: faults found with the right kind and key, repaired, live-safe."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from shared.core import aws
from shared.core.codec import to_native, to_wire
from shared.core.definition import get_definition
from shared.protocol.apply import tombstone_item
from shared.sc.seed import seed
from shared.sc.workload import Workload
from shared.sim.live import MirrorThread, WorkloadThread
from shared.sim.local_lambda import run_forward_mirror
from shared.verify.convergence import check_tables
from shared.verify.report import last_verify
from shared.verify.verifier import make_request, run
from tests.integration.helpers import make_tables

pytestmark = pytest.mark.integration


def migrated(settings, accounts=30, repos=90, bad=0.05):
    """Legacy tables seeded (bad rows and case collisions included) and mirrored into sc-main."""
    make_tables(settings)
    asyncio.run(seed(settings, accounts, repos, bad, 5))
    run_forward_mirror(settings)
    return aws.dynamodb(settings)


def verify(settings, **options):
    options.setdefault("settle_s", 0.0)
    options.setdefault("segments", 3)
    return run(settings, make_request(settings, **options))


def keys_of(report, kind):
    return {tuple(s["target_key"]) for s in report["samples"].get(kind, []) if s["target_key"]}


def target_items(client, settings):
    items = []
    for page in client.get_paginator("scan").paginate(TableName=settings.target_table, ConsistentRead=True):
        items.extend(to_native(i) for i in page["Items"])
    return items


def test_a_converged_migration_verifies_ok_and_agrees_with_the_reference(sc_settings, tmp_path):
    # GIVEN a migration that converged (bad rows quarantined, case collisions resolved)
    migrated(sc_settings)
    reference = check_tables(sc_settings)
    assert reference.ok, reference.summary()
    # WHEN verify runs, with a JSON report
    report = run(sc_settings, make_request(sc_settings, settle_s=0, segments=3, json_path=tmp_path / "v.json"))
    # THEN it is ok, like the in-memory reference, with the same counts
    assert report["ok"], report["samples"]
    assert report["source_items"] == reference.source_items
    assert report["target_items"] == reference.target_items
    assert report["quarantined"] == reference.quarantined
    assert json.loads((tmp_path / "v.json").read_text())["ok"] is True
    # AND the result is stored for status and the cutover gate
    last = last_verify(sc_settings)
    assert last["ok"] is True and last["missing"] == 0 and last["tables"] == ["sc-accounts", "sc-repositories"]
    assert abs(last["finished_at"] - time.time()) < 120


def test_injected_faults_are_found_with_kind_and_key_then_repaired(sc_settings):
    # GIVEN a converged migration
    client = migrated(sc_settings)
    definition = get_definition("sc")
    items = target_items(client, sc_settings)
    profiles = [i for i in items if i["entity"] == "account"]
    repos = [i for i in items if i["entity"] == "repository"]
    table = sc_settings.target_table
    # AND five faults: a deleted item, an extra item, a changed attribute, a tombstone left over,
    # and a stale key of a repository (its item under a name it no longer has)
    deleted = profiles[0]
    client.delete_item(TableName=table, Key=to_wire({"PK": deleted["PK"], "SK": deleted["SK"]}))
    extra = {"PK": "ACCOUNT#nobody-at-all", "SK": "PROFILE", "entity": "account", "account_id": "nobody-at-all",
             "email": "x@y.z"}
    client.put_item(TableName=table, Item=to_wire(extra))
    changed = profiles[1]
    client.update_item(TableName=table, Key=to_wire({"PK": changed["PK"], "SK": changed["SK"]}),
                       UpdateExpression="SET #p = :p", ExpressionAttributeNames={"#p": "plan"},
                       ExpressionAttributeValues={":p": {"S": "bogus"}})
    tomb = tombstone_item(definition, ("ACCOUNT#gone", "REPO#old"), time.time() - 3600)
    client.put_item(TableName=table, Item=to_wire(tomb))
    stale = dict(repos[0], SK="REPO#an-old-name-of-it")
    client.put_item(TableName=table, Item=to_wire(stale))
    # WHEN verify runs
    report = verify(sc_settings)
    # THEN each fault is reported once, with its kind and target key, and nothing else
    assert not report["ok"]
    assert keys_of(report, "missing") == {(deleted["PK"], deleted["SK"])}
    assert keys_of(report, "extra") == {("ACCOUNT#nobody-at-all", "PROFILE"), (stale["PK"], stale["SK"])}
    assert keys_of(report, "mismatched") == {(changed["PK"], changed["SK"])}
    assert keys_of(report, "leftover") == {("ACCOUNT#gone", "REPO#old")}
    (mismatch,) = report["samples"]["mismatched"]
    assert mismatch["diff"] == {"plan": {"expected": changed["plan"], "actual": "bogus"}}
    assert mismatch["source"] == f"sc-accounts|{changed['account_id']}"
    assert (report["missing"], report["extra"], report["mismatched"], report["leftover"]) == (1, 2, 1, 1)
    assert report["quarantine_missing"] == report["quarantine_stale"] == 0
    # AND the reference check sees the same differences
    reference = check_tables(sc_settings)
    assert set(reference.missing) == keys_of(report, "missing")
    assert set(reference.extra) == keys_of(report, "extra")
    assert {k for k, _ in reference.mismatched} == keys_of(report, "mismatched")
    assert set(reference.leftover) == keys_of(report, "leftover")
    # WHEN verify runs with --repair
    repaired = verify(sc_settings, repair=True)
    # THEN all five are fixed, and a fresh verify (and the reference) is ok
    assert repaired["repair"]["attempted"] == 5 and repaired["repair"]["fixed"] == 5, repaired["repair"]
    assert repaired["ok"]
    again = verify(sc_settings)
    assert again["ok"], again["samples"]
    assert check_tables(sc_settings).ok
    assert last_verify(sc_settings)["ok"] is True


def test_a_quarantine_disagreement_is_found_and_repaired(sc_settings):
    # GIVEN a converged migration whose quarantine lost one entry
    client = migrated(sc_settings)

    async def drop_one():
        from shared.store.control import ControlStore

        async with aws.aio_dynamodb(sc_settings) as aio:
            control = ControlStore(aio, sc_settings.control_table)
            entries = [e for e in await control.quarantine_list() if e.reason != "key_collision"]
            await control.quarantine_clear(entries[0].ref)
            return entries[0]

    lost = asyncio.run(drop_one())
    assert client is not None
    # WHEN verify runs
    report = verify(sc_settings)
    # THEN the unrecorded bad item is reported as quarantine_missing, by its source key
    assert report["quarantine_missing"] == 1 and not report["ok"]
    (sample,) = report["samples"]["quarantine_missing"]
    assert sample["source"] == lost.ref.as_text()
    assert sample["diff"]["reason"]["expected"] == lost.reason
    # AND --repair puts it back in quarantine
    assert verify(sc_settings, repair=True)["ok"]
    assert verify(sc_settings)["ok"]


def test_verify_one_table_and_a_sample(sc_settings):
    # GIVEN a converged migration with one repository item deleted from the target
    client = migrated(sc_settings)
    repo = next(i for i in target_items(client, sc_settings) if i["entity"] == "repository")
    client.delete_item(TableName=sc_settings.target_table, Key=to_wire({"PK": repo["PK"], "SK": repo["SK"]}))
    # WHEN only sc-accounts is verified, THEN it is ok and counts only account-owned target items
    accounts = verify(sc_settings, table="sc-accounts")
    assert accounts["ok"] and accounts["tables"] == ["sc-accounts"]
    assert 0 < accounts["target_items"] < len(target_items(client, sc_settings))
    # WHEN sc-repositories is verified, THEN the deleted item is missing
    repositories = verify(sc_settings, table="sc-repositories")
    assert keys_of(repositories, "missing") == {(repo["PK"], repo["SK"])}
    # WHEN a sample is verified, THEN fewer items are read into the comparison
    half = verify(sc_settings, sample=0.5)
    assert 0 < half["source_items"] < accounts["source_items"] + repositories["source_items"]


@pytest.mark.timeout(240)
def test_live_verify_reports_no_false_difference(sc_settings):
    # GIVEN a converged migration, the mirror running and the application writing
    migrated(sc_settings, accounts=40, repos=120)
    mirror = MirrorThread(sc_settings, start_from="latest").start()
    workload = WorkloadThread(sc_settings, Workload(seed=3), rate_per_s=30).start()
    try:
        time.sleep(1.0)
        # WHEN verify runs while writes continue (short settle, well above the mirror's lag here)
        report = verify(sc_settings, settle_s=8.0)
    finally:
        workload.stop()
        mirror.stop()
    # THEN it reports no difference: whatever the scans saw mid-flight settled
    assert len(workload.acknowledged) > 30
    assert report["ok"], report["samples"]
    assert report["source_items"] >= 160 and report["target_items"] > 0


def test_a_difference_the_mirror_settles_during_the_wait_is_not_reported(sc_settings):
    # GIVEN a converged migration, then application writes the mirror has not applied yet
    client = migrated(sc_settings, accounts=20, repos=40)
    from shared.verify.verifier import Observer

    accounts = sc_settings.physical_name("sc-accounts")
    first = client.scan(TableName=accounts, Limit=5)["Items"]
    for raw in first:
        client.update_item(TableName=accounts, Key={"accountId": raw["accountId"]},
                           UpdateExpression="SET #n = :n", ExpressionAttributeNames={"#n": "name"},
                           ExpressionAttributeValues={":n": {"S": "Renamed While Verifying"}})

    class MirrorDuringSettle(Observer):
        drained = 0

        def phase(self, text):
            if text.startswith("settling") and not self.drained:
                # the mirror catches up meanwhile (in a thread: it runs an event loop of its own)
                drain = threading.Thread(target=lambda: setattr(self, "drained", run_forward_mirror(sc_settings).records))
                drain.start()
                drain.join()

    observer = MirrorDuringSettle()
    # WHEN verify runs: its scans see the writes in the legacy table only
    report = run(sc_settings, make_request(sc_settings, settle_s=1.0, segments=2), observer)
    # THEN the differences were nominated and re-checked after the settle, and none is reported
    assert observer.drained >= 5
    assert report["rechecked"] >= 5 and report["rounds"] >= 1
    assert report["ok"], report["samples"]


def test_the_quarantine_is_read_as_reasons_a_page_at_a_time_without_images(sc_settings):
    # GIVEN a quarantine with entries in every bucket, unicode keys, every reason
    from shared.core.definition import SourceRef
    from shared.store.control import QUARANTINE_BUCKETS, ControlStore, QuarantineEntry, quarantine_pk

    make_tables(sc_settings)
    reasons = ("invalid_timestamp", "key_collision", "missing_field")
    entries = [QuarantineEntry(SourceRef("sc-repositories", (f"acct-{n}", f"répo-{n}-工具")), reasons[n % 3],
                               "test entry", {"accountId": f"acct-{n}", "n": n})
               for n in range(120)]

    async def read():
        async with aws.aio_dynamodb(sc_settings) as client:
            control = ControlStore(client, sc_settings.control_table)
            for start in range(0, len(entries), 20):
                await asyncio.gather(*(control.quarantine_put(e) for e in entries[start : start + 20]))
            calls = []
            original = client.query

            async def spy(**kwargs):
                calls.append(kwargs)
                return await original(**kwargs)

            client.query = spy
            streamed = [pair async for pair in control.quarantine_reasons()]
            return streamed, calls

    streamed, calls = asyncio.run(read())
    # THEN every entry comes back once, with its reason, whatever its bucket
    assert sorted(streamed) == sorted((e.ref, e.reason) for e in entries)
    assert len({quarantine_pk(e.ref) for e in entries}) == QUARANTINE_BUCKETS
    # AND only the reference and the reason were asked for (the images stay in the table)
    assert calls and all(c["ProjectionExpression"] == "#t, #k, #r" for c in calls)
    assert "image" not in {name for c in calls for name in c["ExpressionAttributeNames"].values()}


def test_verify_reads_quarantine_reasons_at_their_projected_size_not_their_images(sc_settings):
    # GIVEN quarantine entries whose source images are ~100 KB each (incompressible, like an oversized item)
    import os

    from shared.core import capacity
    from shared.core.definition import SourceRef
    from shared.store.control import ControlStore, QuarantineEntry

    make_tables(sc_settings)
    entries = [QuarantineEntry(SourceRef("sc-accounts", (f"big-{n}",)), "item_too_large", "test entry",
                               {"accountId": f"big-{n}", "blob": os.urandom(100_000)}) for n in range(4)]

    async def read(consistent: bool) -> tuple[list[tuple[SourceRef, str]], capacity.Usage]:
        async with aws.aio_dynamodb(sc_settings) as client:
            control = ControlStore(client, sc_settings.control_table)
            if consistent:  # first pass: write them
                await asyncio.gather(*(control.quarantine_put(e) for e in entries))
            with capacity.scope("probe") as usage:
                pairs = [pair async for pair in control.quarantine_reasons(consistent=consistent)]
            return pairs, usage

    from_table, table_usage = asyncio.run(read(consistent=True))
    from_index, index_usage = asyncio.run(read(consistent=False))
    # THEN both readers see every entry with its reason
    expected = sorted((e.ref, e.reason) for e in entries)
    assert sorted(from_table) == expected and sorted(from_index) == expected
    # AND the table's read costs the images (>= 4 x 100 KB / 4 KB), the verifier's read only the reasons
    assert table_usage.read_units >= 4 * 100_000 / 4096
    assert index_usage.read_units <= 8 * 0.5, index_usage  # one page per bucket, each under 4 KB


def test_a_control_table_without_the_reasons_index_is_read_from_the_table(sc_settings):
    # GIVEN a control table created before the QuarantineReasons index existed, with entries
    from shared.core.definition import SourceRef
    from shared.store.control import ControlStore, QuarantineEntry

    make_tables(sc_settings)
    old_table = sc_settings.control_table + "-before-index"
    client = aws.dynamodb(sc_settings)
    client.create_table(TableName=old_table, BillingMode="PAY_PER_REQUEST",
                        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("PK", "SK")],
                        KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"},
                                   {"AttributeName": "SK", "KeyType": "RANGE"}])
    entries = [QuarantineEntry(SourceRef("sc-accounts", (f"a{n}",)), "invalid_email", "test entry",
                               {"accountId": f"a{n}"}) for n in range(12)]

    async def read() -> list[tuple[SourceRef, str]]:
        async with aws.aio_dynamodb(sc_settings) as aio:
            control = ControlStore(aio, old_table)
            await asyncio.gather(*(control.quarantine_put(e) for e in entries))
            return [pair async for pair in control.quarantine_reasons(consistent=False)]

    # WHEN the verifier's reader asks for the reasons / THEN it gets every one, from the table
    assert sorted(asyncio.run(read())) == sorted((e.ref, e.reason) for e in entries)
