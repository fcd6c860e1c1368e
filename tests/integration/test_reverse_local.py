"""Reverse replication, the mode gates and the drain, on DynamoDB Local.

The application's writes to sc-main are real writes (items built with the
forward transform, as an application on the new schema would write them).
The end-to-end tests run the local reverse runner over sc-main's real
stream; the race tests hand the engine Lambda-shaped records in an order the
test chooses, in separate batches.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

import pytest

from shared.core import aws
from shared.core.codec import to_native, to_wire
from shared.core.definition import SourceRef, get_definition
from shared.core.errors import UsageError
from shared.protocol.apply import Applier
from shared.sc.transform import normalise, reverse, transform
from shared.sim.local_lambda import run_forward_mirror, run_reverse_mirror
from shared.store.control import ControlStore
from shared.store.mode import Mode, ModeState, ModeStore
from shared.streams.drain import is_drained, lag_s, measure, wait_drained
from shared.streams.reverse_mirror import ReverseEngine, reverse_quarantine_ref
from tests.integration.helpers import make_tables

pytestmark = pytest.mark.integration

ACC, REPO = "sc-accounts", "sc-repositories"
DEFINITION = get_definition("sc")


# ------------------------------------------------------------------- helpers
def account(account_id: str, *, teams: set[str] | None = None, email: str | None = None, **extra: Any) -> dict:
    item = {"accountId": account_id, "email": email or f"{account_id}@example.com", "createdAt": Decimal(1700000000),
            "plan": "pro", **extra}
    if teams:
        item["teamIds"] = set(teams)
    return item


def repo(repo_id: str, account_id: str, name: str, **extra: Any) -> dict:
    return {"repoId": repo_id, "accountId": account_id, "name": name, "createdAt": Decimal(1700000000),
            "updatedAt": Decimal(1700000100), **extra}


class App:
    """The application after cutover: writes sc-main's single-table items directly."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.client = aws.dynamodb(settings)

    def put(self, *items: dict) -> None:
        for item in items:
            self.client.put_item(TableName=self.settings.target_table, Item=to_wire(item))

    def delete(self, pk: str, sk: str) -> None:
        self.client.delete_item(TableName=self.settings.target_table, Key=to_wire({"PK": pk, "SK": sk}))

    def get(self, pk: str, sk: str) -> dict | None:
        item = self.client.get_item(TableName=self.settings.target_table, Key=to_wire({"PK": pk, "SK": sk}),
                                    ConsistentRead=True).get("Item")
        return to_native(item) if item else None

    def write_account(self, legacy: dict) -> None:
        self.put(*transform(ACC, legacy))

    def write_repo(self, legacy: dict) -> dict:
        (item,) = transform(REPO, legacy)
        self.put(item)
        return item


def scan(settings, table: str) -> list[dict]:
    client = aws.dynamodb(settings)
    items, kwargs = [], {"TableName": table, "ConsistentRead": True}
    while True:
        page = client.scan(**kwargs)
        items.extend(to_native(i) for i in page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def legacy_items(settings) -> dict[SourceRef, dict]:
    found = {}
    for source in DEFINITION.sources:
        for item in scan(settings, settings.physical_name(source.name)):
            found[source.ref(item)] = item
    return found


def expected_legacy(settings) -> dict[SourceRef, dict]:
    """The reverse of sc-main as it is: one legacy item per owner that can be rebuilt."""
    by_owner: dict[SourceRef, list[dict]] = defaultdict(list)
    for item in scan(settings, settings.target_table):
        ref = DEFINITION.owner(item)
        if ref is not None and not str(item.get("entity", "")).startswith("_dynashift"):
            by_owner[ref].append(item)
    expected = {}
    for ref, items in by_owner.items():
        if ref.table == ACC and not any(i["entity"] == "account" for i in items):
            continue
        expected[ref] = reverse(ref.table, items)
    return expected


def set_mode(settings, *path: ModeState) -> None:
    store = ModeStore(aws.dynamodb(settings), settings.control_table)
    for state in path:
        store.write(state, store.read().version)


def to_new(settings) -> None:
    set_mode(settings, ModeState(Mode.FREEZE, Mode.NEW), ModeState(Mode.NEW))


def stream_record_count(settings, table: str) -> int:
    client, streams = aws.dynamodb(settings), aws.streams(settings)
    arn = client.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    total = 0
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            total += len(page["Records"])
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return total


_seq = [0]


def record(name: str, old: dict | None = None, new: dict | None = None) -> dict:
    """A Lambda-shaped sc-main stream record."""
    _seq[0] += 1
    image = new or old
    body: dict[str, Any] = {"Keys": to_wire({"PK": image["PK"], "SK": image["SK"]}),
                            "SequenceNumber": f"{_seq[0]:021d}", "StreamViewType": "NEW_AND_OLD_IMAGES"}
    if old is not None:
        body["OldImage"] = to_wire(old)
    if new is not None:
        body["NewImage"] = to_wire(new)
    return {"eventID": str(_seq[0]), "eventName": name, "eventVersion": "1.1", "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1", "dynamodb": body,
            "eventSourceARN": "arn:aws:dynamodb:us-east-1:000000000000:table/sc-main/stream/2024-01-01T00:00:00.000"}


@pytest.fixture
def tables(sc_settings):
    make_tables(sc_settings)
    return sc_settings


@pytest.fixture
def engine(tables):
    reverse_engine = ReverseEngine(tables)
    yield reverse_engine
    reverse_engine.close()


# ------------------------------------------------------------ end to end
def test_app_writes_in_mode_new_reach_the_legacy_tables_as_their_reverse(tables):
    # GIVEN mode new and an application writing sc-main
    to_new(tables)
    app = App(tables)
    app.write_account(account("a1", teams={"t1", "t2"}, settings={"theme": "dark"}, legacyFlag="x"))
    app.write_account(account("a2", teams={"t9"}))
    app.write_account(account("a3"))
    app.put({"PK": "TEAM#t3", "SK": "MEMBER#a1", "entity": "membership", "team_id": "t3", "account_id": "a1",
             "GSI1PK": "ACCOUNT#a1", "GSI1SK": "TEAM#t3"})  # add a team
    app.delete("TEAM#t1", "MEMBER#a1")  # remove a team
    profile = app.get("ACCOUNT#a1", "PROFILE")
    app.put({**profile, "email": "ada@new.example", "GSI1PK": "EMAIL#ada@new.example"})  # change email
    r1 = app.write_repo(repo("r1", "a1", "Tools", isPrivate=True, topics=["b", "a"]))
    r2 = app.write_repo(repo("r2", "a1", "Site"))
    r3 = app.write_repo(repo("r3", "a3", "Gone"))
    app.write_repo(repo("r1", "a1", "Tools2", isPrivate=True, updatedAt=Decimal(1700000200)))  # rename
    app.delete(r1["PK"], r1["SK"])
    app.write_repo(repo("r2", "a3", "Site", updatedAt=Decimal(1700000200)))  # transfer
    app.delete(r2["PK"], r2["SK"])
    app.delete(r3["PK"], r3["SK"])  # repository deleted
    app.delete("ACCOUNT#a2", "PROFILE")  # account deleted: profile and memberships
    app.delete("TEAM#t9", "MEMBER#a2")
    # WHEN the reverse runner drains sc-main's stream
    report = run_reverse_mirror(tables)
    # THEN the legacy tables hold exactly the reverse of sc-main
    assert report.records > 0
    legacy = legacy_items(tables)
    assert legacy == expected_legacy(tables)
    assert set(legacy) == {SourceRef(ACC, ("a1",)), SourceRef(ACC, ("a3",)), SourceRef(REPO, ("r1",)),
                           SourceRef(REPO, ("r2",))}
    # AND with the normalised values the spec asks for
    a1 = legacy[SourceRef(ACC, ("a1",))]
    assert a1["email"] == "ada@new.example" and a1["teamIds"] == {"t2", "t3"} and a1["legacyFlag"] == "x"
    assert a1["createdAt"] == Decimal(1700000000) and a1["settings"] == {"theme": "dark"}
    assert legacy[SourceRef(REPO, ("r1",))] == normalise(
        REPO, repo("r1", "a1", "Tools2", isPrivate=True, updatedAt=Decimal(1700000200)))
    assert legacy[SourceRef(REPO, ("r2",))]["accountId"] == "a3"
    # AND consuming is exact: the reverse consumer is drained, per shard
    assert is_drained(tables, "reverse")


def test_forward_and_backfill_writes_in_mode_old_never_echo_back(tables):
    # GIVEN mode old, legacy items that existed before the mirror (the backfill copies them)
    client = aws.dynamodb(tables)
    accounts, repos = tables.physical_name(ACC), tables.physical_name(REPO)
    client.put_item(TableName=accounts, Item=to_wire(account("old1", teams={"t1"})))
    client.put_item(TableName=repos, Item=to_wire(repo("rold", "old1", "Lib")))
    run_forward_mirror(tables)  # applies those two as well

    async def backfill_write() -> None:
        async with aws.aio_dynamodb(tables) as aio:
            applier = Applier(tables, DEFINITION, aio, ControlStore(aio, tables.control_table))
            import time

            await applier.write_stale(SourceRef(ACC, ("b1",)), account("b1", teams={"t2"}), time.time())

    client.put_item(TableName=accounts, Item=to_wire(account("b1", teams={"t2"})))
    import asyncio

    asyncio.run(backfill_write())
    # AND live application writes that the forward mirror applies
    client.put_item(TableName=accounts, Item=to_wire(account("old1", teams={"t1", "t5"}, plan="team")))
    client.put_item(TableName=repos, Item=to_wire(repo("rnew", "old1", "App")))
    run_forward_mirror(tables)
    assert App(tables).get("TEAM#t5", "MEMBER#old1") is not None
    before = legacy_items(tables)
    legacy_records = stream_record_count(tables, accounts) + stream_record_count(tables, repos)
    # WHEN the reverse consumer reads sc-main's stream while the mode is old (drains, skipping)
    report = run_reverse_mirror(tables)
    # AND the cutover then flips to new, and the reverse consumer runs again
    to_new(tables)
    again = run_reverse_mirror(tables)
    # THEN every forward/backfill record was consumed, none was applied, nothing echoed
    assert report.records > 0 and again.records == 0
    assert legacy_items(tables) == before
    assert stream_record_count(tables, accounts) + stream_record_count(tables, repos) == legacy_records


def test_forward_mirror_skips_in_mode_new(tables):
    # GIVEN mode new, and a legacy write (as reverse replication makes them)
    to_new(tables)
    client = aws.dynamodb(tables)
    client.put_item(TableName=tables.physical_name(ACC), Item=to_wire(account("z1")))
    # WHEN the forward mirror runs
    report = run_forward_mirror(tables)
    # THEN it consumed the record and wrote nothing to sc-main
    assert report.records == 1
    assert scan(tables, tables.target_table) == []
    assert is_drained(tables, "forward")


def test_backfill_refuses_to_start_unless_mode_is_old(tables):
    from backfill.run import BackfillRequest, plan_runs

    set_mode(tables, ModeState(Mode.FREEZE, Mode.NEW))
    import asyncio

    with pytest.raises(UsageError, match="only in mode old.*freeze"):
        asyncio.run(plan_runs(tables, BackfillRequest(table="all", allow_no_mirror=True), [ACC, REPO]))


def test_poison_item_is_quarantined_and_the_shard_moves_on(tables):
    # GIVEN mode new, a profile the application wrote with an unparsable timestamp, then a good account
    to_new(tables)
    app = App(tables)
    good, bad = transform(ACC, account("ok1")), transform(ACC, account("bad1"))
    app.put({**bad[0], "created_at": "yesterday-ish"})
    app.put(*good)
    # WHEN the reverse runner drains
    run_reverse_mirror(tables)
    # THEN the bad owner is quarantined with a reason, the good one went through, the shard is drained
    legacy = legacy_items(tables)
    assert SourceRef(ACC, ("ok1",)) in legacy and SourceRef(ACC, ("bad1",)) not in legacy
    entries = quarantine(tables)
    assert list(entries) == [reverse_quarantine_ref(SourceRef(ACC, ("bad1",)))]
    assert is_drained(tables, "reverse")
    # AND once the application fixes the item, the entry clears and the legacy item appears
    app.put(bad[0])
    run_reverse_mirror(tables)
    assert quarantine(tables) == {}
    assert legacy_items(tables)[SourceRef(ACC, ("bad1",))] == normalise(ACC, account("bad1"))


def quarantine(settings) -> dict[SourceRef, str]:
    import asyncio

    async def go():
        async with aws.aio_dynamodb(settings) as client:
            return await ControlStore(client, settings.control_table).quarantine_list()

    return {e.ref: e.reason for e in asyncio.run(go())}


# ------------------------------------------------------------------ races
@pytest.mark.parametrize("order", ["remove-first", "insert-first"])
def test_repo_rename_records_in_either_order_across_batches(tables, engine, order):
    # GIVEN mode new, repository r1 reversed once under its old name
    to_new(tables)
    app = App(tables)
    old = app.write_repo(repo("r1", "a1", "Tools"))
    assert engine.apply_records([record("INSERT", new=old)]) == set()
    # AND the application renames it (new key written, old key deleted)
    new = app.write_repo(repo("r1", "a1", "Tools2", updatedAt=Decimal(1700000200)))
    app.delete(old["PK"], old["SK"])
    insert, remove = record("INSERT", new=new), record("REMOVE", old=old)
    batches = [[remove], [insert]] if order == "remove-first" else [[insert], [remove]]
    # WHEN the two records arrive in separate batches, in this order
    for batch in batches:
        assert engine.apply_records(batch) == set()
        # THEN after each batch the legacy repository reflects the item under the new key
        assert legacy_items(tables)[SourceRef(REPO, ("r1",))]["name"] == "Tools2"


def test_repo_transfer_remove_arriving_after_a_later_delete_deletes(tables, engine):
    # GIVEN a repository transferred, then deleted, by the application
    to_new(tables)
    app = App(tables)
    old = app.write_repo(repo("r1", "a1", "Tools"))
    engine.apply_records([record("INSERT", new=old)])
    new = app.write_repo(repo("r1", "a2", "Tools", updatedAt=Decimal(1700000200)))
    app.delete(old["PK"], old["SK"])
    # WHEN only the transfer's INSERT arrives
    engine.apply_records([record("INSERT", new=new)])
    assert legacy_items(tables)[SourceRef(REPO, ("r1",))]["accountId"] == "a2"
    # AND the repository is deleted, and the old key's REMOVE arrives late, before the new key's
    app.delete(new["PK"], new["SK"])
    engine.apply_records([record("REMOVE", old=old)])
    # THEN the legacy repository is gone (no item anywhere), and the last REMOVE changes nothing
    assert SourceRef(REPO, ("r1",)) not in legacy_items(tables)
    engine.apply_records([record("REMOVE", old=new)])
    assert SourceRef(REPO, ("r1",)) not in legacy_items(tables)


def test_key_reused_by_another_repo_rebuilds_both_owners(tables, engine):
    # GIVEN r1 named Tools, then renamed away, and r2 renamed onto Tools (same key)
    to_new(tables)
    app = App(tables)
    r1_old = app.write_repo(repo("r1", "a1", "Tools"))
    engine.apply_records([record("INSERT", new=r1_old)])
    r1_new = app.write_repo(repo("r1", "a1", "Old-Tools", updatedAt=Decimal(1700000200)))
    r2 = app.write_repo(repo("r2", "a1", "tools", updatedAt=Decimal(1700000300)))  # overwrites r1's old key
    # WHEN only the overwrite record arrives (old image r1, new image r2)
    engine.apply_records([record("MODIFY", old=r1_old, new=r2)])
    # THEN both legacy repositories are current
    legacy = legacy_items(tables)
    assert legacy[SourceRef(REPO, ("r1",))]["name"] == "Old-Tools"
    assert legacy[SourceRef(REPO, ("r2",))]["name"] == "tools"
    assert r1_new["PK"] == r2["PK"]


def test_concurrent_rebuilds_of_one_owner_last_commit_sees_final_state(tables, engine):
    # GIVEN mode new and account a1 with team t1, reversed once
    to_new(tables)
    app = App(tables)
    app.write_account(account("a1", teams={"t1"}))
    engine.apply_records([record("INSERT", new=app.get("ACCOUNT#a1", "PROFILE"))])
    # AND a rebuild (for a profile change) that has read the state, but not committed yet...
    real_read = engine._read_owned
    raced = []

    async def read_then_race(ref, candidates):
        owned = await real_read(ref, candidates)
        if not raced:
            raced.append(True)
            # ...when the application adds team t2 (another shard: another partition key)
            # and that record's rebuild commits first
            member = {"PK": "TEAM#t2", "SK": "MEMBER#a1", "entity": "membership", "team_id": "t2",
                      "account_id": "a1", "GSI1PK": "ACCOUNT#a1", "GSI1SK": "TEAM#t2"}
            app.put(member)
            assert await engine.rebuild(ref, {("TEAM#t2", "MEMBER#a1")}) == "written"
            assert legacy_items(tables)[ref]["teamIds"] == {"t1", "t2"}
        return owned

    engine._read_owned = read_then_race  # type: ignore[method-assign]
    # WHEN the slow rebuild commits
    assert engine.apply_records([record("MODIFY", new=app.get("ACCOUNT#a1", "PROFILE"))]) == set()
    # THEN it lost the race, rebuilt again, and did not overwrite the newer legacy item
    assert engine.last_stats.conflicts == 1
    assert legacy_items(tables)[SourceRef(ACC, ("a1",))]["teamIds"] == {"t1", "t2"}


def test_new_membership_missing_from_gsi_is_still_seen_by_later_rebuilds(tables, engine):
    # GIVEN mode new, account a1 reversed with team t1, then a membership t2 reversed from its record
    to_new(tables)
    app = App(tables)
    app.write_account(account("a1", teams={"t1"}))
    engine.apply_records([record("INSERT", new=app.get("ACCOUNT#a1", "PROFILE"))])
    member = {"PK": "TEAM#t2", "SK": "MEMBER#a1", "entity": "membership", "team_id": "t2", "account_id": "a1",
              "GSI1PK": "ACCOUNT#a1", "GSI1SK": "TEAM#t2"}
    app.put(member)
    engine.apply_records([record("INSERT", new=member)])
    # WHEN a later profile rebuild runs with a GSI that lags (returns nothing)
    async def lagging_index(ref):
        return set()

    engine._indexed_keys = lagging_index  # type: ignore[method-assign]
    profile = app.get("ACCOUNT#a1", "PROFILE")
    app.put({**profile, "plan": "team"})
    engine.apply_records([record("MODIFY", old=profile, new={**profile, "plan": "team"})])
    # THEN the held keys kept in the control table still name t2
    legacy = legacy_items(tables)[SourceRef(ACC, ("a1",))]
    assert legacy["plan"] == "team" and legacy["teamIds"] == {"t1", "t2"}


def test_retried_batch_is_idempotent_and_tombstones_are_never_reversed(tables, engine):
    to_new(tables)
    app = App(tables)
    app.write_account(account("a1"))
    profile = app.get("ACCOUNT#a1", "PROFILE")
    batch = [record("INSERT", new=profile)]
    assert engine.apply_records(batch) == set()
    first = legacy_items(tables)
    assert engine.apply_records(batch) == set()
    assert legacy_items(tables) == first
    # GIVEN a tombstone record (the sweeper deleting one)
    tomb = {"PK": "ACCOUNT#zz", "SK": "PROFILE", "entity": "_dynashift_tombstone", "_ds_deleted_at": 1}
    assert engine.apply_records([record("REMOVE", old=tomb)]) == set()
    # THEN nothing is reversed for it
    assert engine.last_stats.artifacts == 1 and engine.last_stats.owners == 0
    assert legacy_items(tables) == first


# ------------------------------------------------------------------- drain
def test_drain_reports_progress_and_ends_per_shard(tables):
    # GIVEN legacy writes nobody has consumed yet
    client = aws.dynamodb(tables)
    client.put_item(TableName=tables.physical_name(ACC), Item=to_wire(account("d1")))
    client.put_item(TableName=tables.physical_name(REPO), Item=to_wire(repo("dr", "d1", "x")))
    # THEN the forward consumer is not drained: two shards (one per legacy table), nothing acknowledged,
    # one record pending in each, with its age as the lag
    shards = measure(tables, "forward")
    assert len(shards) == 2 and all(s.confirmed is None and s.pending == 1 for s in shards)
    ends = {s.shard_id: s.last_read for s in shards}
    assert all(e is not None for e in ends.values())
    assert not is_drained(tables, "forward") and lag_s(tables, "forward") >= 0
    with pytest.raises(Exception, match="did not acknowledge every record"):
        wait_drained(tables, "forward", timeout=0.3, poll_s=0.1)
    # WHEN the forward mirror runs / THEN every shard is confirmed to its end, from the handler's receipts
    run_forward_mirror(tables)
    assert {s.shard_id: s.confirmed for s in measure(tables, "forward")} == ends
    assert wait_drained(tables, "forward", timeout=5) >= 0
    # AND sc-main's stream (the mirror's writes) is not drained for reverse until the reverse consumer runs
    assert not is_drained(tables, "reverse")
    run_reverse_mirror(tables)
    assert is_drained(tables, "reverse")
