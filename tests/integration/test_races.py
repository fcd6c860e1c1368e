"""One deterministic test per race in design-notes.md (1-7), on DynamoDB Local.

Each drives the exact interleaving through `RaceHarness`: application writes
are real, the stream records they produce reach the mirror when the test
says so, and the backfill's read and write are separate steps. Each test
fails if the protection that closes its race is taken away (for example a
backfill write that is a plain put, a mirror that deletes without a
tombstone while a backfill runs, or a waiter that registers without
re-checking).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from decimal import Decimal
from typing import Any

import pytest

from backfill.lease import PAGE_EPOCH, LeaseLapsed, StaleWriterLease
from shared.cli.status import retry_quarantine
from shared.core import aws
from shared.core.definition import SourceRef
from shared.core.settings import load_settings
from shared.protocol.apply import Applier, sweep_tombstones
from shared.store.control import ControlStore, QuarantineEntry, StaleWriterRegistry
from tests.conftest import drop_tables
from tests.integration.race_harness import RaceHarness

pytestmark = pytest.mark.integration

ACC, REPO = "sc-accounts", "sc-repositories"


@pytest.fixture(params=["put", "insert"])
def harness(request, sc_settings):
    """The harness; a backfill race runs once per write path: conditional puts, and the
    batched INSERTs with their fallback (the default mode's)."""
    if request.param == "insert" and "stale_write(" not in inspect.getsource(request.function):
        pytest.skip("no backfill write in this race: one write path is enough")
    settings = load_settings(
        **{**sc_settings.model_dump(include={"endpoint_url", "table_names", "target_table", "control_table"})},
        consistency_margin_s=0.3,
        stale_writer_refresh_s=0.05,
    )
    h = RaceHarness(settings, stale_path=request.param)
    yield h
    h.close()
    drop_tables(settings)


def account(account_id="a1", **extra):
    item = {"accountId": account_id, "email": f"{account_id}@example.com", "createdAt": Decimal(1700000000)}
    item.update(extra)
    return item


def repo(repo_id="r1", account_id="a1", name="Tools", **extra):
    item = {"repoId": repo_id, "accountId": account_id, "name": name, "createdAt": Decimal(1700000000)}
    item.update(extra)
    return item


def test_race1_backfill_copy_of_v1_does_not_land_over_mirrored_v2(harness):
    # GIVEN an account V1 that existed before the mirror started, and a backfill that read it
    harness.put(ACC, account(plan="free"))
    harness.start_backfill()
    v1, read_at = harness.read(ACC, {"accountId": "a1"})
    # WHEN the application writes V2 and the mirror applies it, then the backfill writes V1
    harness.mirror([harness.put(ACC, account(plan="pro"))])
    result = harness.stale_write(ACC, v1, read_at)
    # THEN V2 stays
    assert harness.target("ACCOUNT#a1", "PROFILE")["plan"] == "pro"
    assert result.skipped == 1
    harness.finish_backfill()
    assert harness.converged().ok


def test_race2_backfill_does_not_resurrect_an_item_deleted_before_the_target_had_it(harness):
    # GIVEN a repository that existed before the mirror, read by the backfill
    harness.put(REPO, repo())
    harness.start_backfill()
    v1, read_at = harness.read(REPO, {"repoId": "r1"})
    # WHEN the application deletes it and the mirror applies the delete first
    harness.mirror([harness.delete(REPO, {"repoId": "r1"})])
    harness.stale_write(REPO, v1, read_at)
    # THEN the backfill's V1 did not resurrect it, and no tombstone is left once the backfill is done
    assert harness.live("ACCOUNT#a1", "REPO#tools") is None
    harness.finish_backfill()
    assert harness.target_keys() == set()
    assert harness.converged().ok


@pytest.mark.parametrize("move", ["rename", "transfer"])
def test_race3_stale_backfill_write_under_an_old_key_does_not_survive(harness, move):
    # GIVEN a repository read by the backfill under its old key
    harness.put(REPO, repo(name="Old"))
    harness.start_backfill()
    v1, read_at = harness.read(REPO, {"repoId": "r1"})
    # WHEN it is renamed (or transferred) and the mirror moves the key, then the backfill writes
    moved = repo(name="New") if move == "rename" else repo(account_id="a2", name="Old")
    harness.mirror([harness.put(REPO, moved)])
    harness.stale_write(REPO, v1, read_at)
    harness.finish_backfill()
    # THEN only the new key exists
    new_key = ("ACCOUNT#a1", "REPO#new") if move == "rename" else ("ACCOUNT#a2", "REPO#old")
    assert harness.target_keys() == {new_key}
    assert harness.converged().ok


def test_race4_removed_team_membership_goes_even_if_backfill_wrote_it_from_an_older_image(harness):
    # GIVEN an account in teams t1 and t2, read by the backfill
    harness.put(ACC, account(teamIds={"t1", "t2"}))
    harness.start_backfill()
    v1, read_at = harness.read(ACC, {"accountId": "a1"})
    # WHEN t2 is removed and mirrored, then the backfill writes the older image
    harness.mirror([harness.put(ACC, account(teamIds={"t1"}))])
    harness.stale_write(ACC, v1, read_at)
    harness.finish_backfill()
    # THEN the t2 membership is gone
    assert harness.live("TEAM#t2", "MEMBER#a1") is None
    assert harness.target("TEAM#t1", "MEMBER#a1") is not None
    assert harness.converged().ok


def test_race4b_backfill_first_then_team_removal_removes_the_membership(harness):
    # GIVEN the backfill copied the account with t1 and t2 before the change was mirrored
    harness.put(ACC, account(teamIds={"t1", "t2"}))
    harness.start_backfill()
    v1, read_at = harness.read(ACC, {"accountId": "a1"})
    harness.stale_write(ACC, v1, read_at)
    # WHEN t2 is removed and mirrored
    harness.mirror([harness.put(ACC, account(teamIds={"t1"}))])
    harness.finish_backfill()
    # THEN the membership is gone
    assert harness.live("TEAM#t2", "MEMBER#a1") is None
    assert harness.converged().ok


def test_race5_second_repository_on_a_key_is_quarantined_then_takes_the_key_when_free(harness):
    # GIVEN r1 holds ACCOUNT#a1/REPO#tools
    harness.mirror([harness.put(REPO, repo("r1", name="Tools"))])
    # WHEN r2 arrives with a name differing only in case
    harness.mirror([harness.put(REPO, repo("r2", name="tools"))])
    # THEN r2 is quarantined for the collision and r1 was not overwritten
    assert harness.target("ACCOUNT#a1", "REPO#tools")["repo_id"] == "r1"
    assert harness.quarantine() == {SourceRef(REPO, ("r2",)): "key_collision"}
    # WHEN r1 is renamed away
    harness.mirror([harness.put(REPO, repo("r1", name="Hammer"))])
    # THEN r2 takes the key by itself and leaves quarantine
    assert harness.target("ACCOUNT#a1", "REPO#tools")["repo_id"] == "r2"
    assert harness.quarantine() == {}
    assert harness.converged().ok


@pytest.mark.parametrize("step", ["note_collision", "waiter_add"],
                         ids=["before-the-collision-is-noted", "between-the-noted-collision-and-the-waiter"])
def test_race5_no_lost_wakeup_when_release_happens_inside_the_newcomers_collision(harness, step):
    # GIVEN r1 holds the key, and r2's collision is about to note itself in the collision
    # summary, or has done so and is about to register as a waiter
    harness.mirror([harness.put(REPO, repo("r1", name="Tools"))])
    release = harness.put(REPO, repo("r1", name="Hammer"))
    r2_record = harness.put(REPO, repo("r2", name="tools"))
    # r1's batch removes the key and looks for waiters (the summary names neither r2 nor the
    # key yet, or no waiter is registered yet) exactly then
    harness.before_next_call(harness.engine.applier.control, step, lambda: harness.apply_batch([release]))
    # WHEN r2's record is applied
    harness.mirror([r2_record])
    # THEN r2's writes (summary, entry, waiter) all come before its re-try, which finds the key free
    assert harness.target("ACCOUNT#a1", "REPO#tools")["repo_id"] == "r2"
    assert harness.quarantine() == {}
    assert harness.converged().ok


def test_race5_no_lost_wakeup_when_the_newcomer_waits_while_the_release_batch_is_under_way(harness):
    # GIVEN r1 holds the key and is renamed away; r2 wants the key
    harness.mirror([harness.put(REPO, repo("r1", name="Tools"))])
    release = harness.put(REPO, repo("r1", name="Hammer"))
    r2_record = harness.put(REPO, repo("r2", name="tools"))
    applier = harness.engine.applier

    async def collide():
        # r2 collides with r1 (still the holder), is noted, registers and re-tries in vain
        await harness.apply_batch([r2_record])
        entries = await applier.control.quarantine_get_many([SourceRef(REPO, ("r2",))])
        assert [e.reason for e in entries.values()] == ["key_collision"]

    harness.before_next_call(applier, "_remove", collide)
    # WHEN r1's batch removes the key (its first reads are long done: the summary it read then named nobody)
    assert not harness.mirror([release])
    # THEN the summary read after the removal names the key, and r2 is woken
    assert harness.target("ACCOUNT#a1", "REPO#tools")["repo_id"] == "r2"
    assert harness.quarantine() == {}
    assert harness.converged().ok


def test_race5_a_collision_loser_renamed_elsewhere_leaves_quarantine(harness):
    # GIVEN r2 lost a collision on r1's key (its entry is a collision's: its state is clean)
    harness.mirror([harness.put(REPO, repo("r1", name="Tools"))])
    harness.mirror([harness.put(REPO, repo("r2", name="tools"))])
    assert harness.quarantine() == {SourceRef(REPO, ("r2",)): "key_collision"}
    # WHEN r2 is renamed to a free name
    harness.mirror([harness.put(REPO, repo("r2", name="Drill"))])
    # THEN the mirror read its entry (the summary names r2) and cleared it; r1 kept its key
    assert harness.target("ACCOUNT#a1", "REPO#drill")["repo_id"] == "r2"
    assert harness.target("ACCOUNT#a1", "REPO#tools")["repo_id"] == "r1"
    assert harness.quarantine() == {}
    assert harness.converged().ok


@pytest.mark.parametrize("backfill_during_first_attempt", [True, False], ids=["tombstone-then-delete", "delete"])
def test_race5_wakeup_interrupted_by_a_fault_is_redone_when_the_release_is_redelivered(
    harness, backfill_during_first_attempt
):
    # GIVEN r1 holds ACCOUNT#a1/REPO#tools and r2 waits for it (a collision)
    harness.mirror([harness.put(REPO, repo("r1", name="Tools"))])
    harness.mirror([harness.put(REPO, repo("r2", name="tools"))])
    assert harness.quarantine() == {SourceRef(REPO, ("r2",)): "key_collision"}
    if backfill_during_first_attempt:
        harness.start_backfill()
    # WHEN r1 is renamed away: the mirror releases the key (a tombstone while the
    # backfill runs, a delete otherwise), then the wake-up's write is throttled
    release = harness.put(REPO, repo("r1", name="Hammer"))
    harness.faults.fail_next["transact_write_items"] = 1
    assert harness.mirror([release]), "the throttled wake-up must fail the record"
    assert harness.live("ACCOUNT#a1", "REPO#tools") is None
    if backfill_during_first_attempt:
        # and the backfill ends before the stream redelivers: no more tombstones
        harness.run(harness.registry.deregister("race-backfill"))
        time.sleep(harness.settings.stale_writer_refresh_s * 2)
    harness.mirror_until_done([release])
    # THEN the redelivery finds the key already released and still wakes r2
    assert harness.target("ACCOUNT#a1", "REPO#tools")["repo_id"] == "r2"
    assert harness.quarantine() == {}
    assert harness.converged().ok


def test_race5_collision_met_by_the_backfill_is_quarantined_and_woken(harness):
    # GIVEN two pre-existing repositories of one account whose names differ in case
    harness.put(REPO, repo("r1", name="Tools"))
    harness.put(REPO, repo("r2", name="tools"))
    harness.start_backfill()
    for repo_id in ("r1", "r2"):
        image, read_at = harness.read(REPO, {"repoId": repo_id})
        harness.stale_write(REPO, image, read_at)
    assert harness.target("ACCOUNT#a1", "REPO#tools")["repo_id"] == "r1"
    assert harness.quarantine() == {SourceRef(REPO, ("r2",)): "key_collision"}
    # WHEN r1 is deleted
    harness.mirror([harness.delete(REPO, {"repoId": "r1"})])
    harness.finish_backfill()
    # THEN r2 holds the key
    assert harness.target("ACCOUNT#a1", "REPO#tools")["repo_id"] == "r2"
    assert harness.quarantine() == {}
    assert harness.converged().ok


def test_race3_woken_collision_leaves_a_tombstone_at_an_old_key_the_target_never_had(harness):
    # GIVEN r1 "docs" written before the mirror started (its record never reaches
    # it, so only the backfill can copy it), and r2 holding ACCOUNT#a1/REPO#tools
    harness.put(REPO, repo("r1", name="docs"))
    harness.mirror([harness.put(REPO, repo("r2", name="tools"))])
    harness.start_backfill()
    old_image, read_at = harness.read(REPO, {"repoId": "r1"})  # a scan page reads r1 as "docs"
    # WHEN r1 is renamed onto r2's key (a collision: quarantined, holding its old key)
    harness.mirror([harness.put(REPO, repo("r1", name="TOOLS"))])
    assert harness.quarantine() == {SourceRef(REPO, ("r1",)): "key_collision"}
    # AND r2 moves away, which wakes r1: a validated write takes the key and settles the entry
    harness.mirror([harness.put(REPO, repo("r2", name="hammer"))])
    assert harness.live("ACCOUNT#a1", "REPO#tools")["repo_id"] == "r1"
    assert harness.quarantine() == {}
    # AND the backfill's write of the page it read before the rename lands now
    harness.stale_write(REPO, old_image, read_at)
    harness.finish_backfill()
    # THEN the old key stays empty: the validated write left a tombstone there
    # although the target never had it (only keys held by another item are skipped)
    assert harness.live("ACCOUNT#a1", "REPO#docs") is None
    assert harness.converged().ok


def test_race7_collision_settled_by_its_own_retry_keeps_the_held_keys_until_they_are_removed(harness):
    # GIVEN r1 clean as "docs", then bad and renamed to "other": its entry holds REPO#docs
    harness.mirror([harness.put(REPO, repo("r1", name="docs"))])
    harness.mirror([harness.put(REPO, repo("r1", name="other", createdAt="yesterday"))])
    assert harness.quarantine() == {SourceRef(REPO, ("r1",)): "invalid_timestamp"}
    # AND r2 holds REPO#tools, and r1 is renamed onto it, clean again
    harness.mirror([harness.put(REPO, repo("r2", name="tools"))])
    release = harness.put(REPO, repo("r2", name="hammer"))
    onto = harness.put(REPO, repo("r1", name="TOOLS"))
    harness.apply_before_next_waiter_registers(release)  # r2 moves away: r1's own re-try takes the key
    # WHEN r1's record takes the key, but removing its old key REPO#docs fails (a crash there is the same)
    harness.faults.fail_once_when = lambda name, kw: name == "delete_item" and kw.get("Key", {}).get(
        "SK", {}).get("S") == "REPO#docs"
    assert harness.mirror([onto]), "the failed removal must fail the record"
    assert harness.live("ACCOUNT#a1", "REPO#tools")["repo_id"] == "r1"
    # THEN the entry, with the held key, is still there for the redelivery, which removes REPO#docs
    assert SourceRef(REPO, ("r1",)) in harness.quarantine()
    harness.mirror_until_done([onto])
    assert harness.live("ACCOUNT#a1", "REPO#docs") is None
    assert harness.quarantine() == {}
    assert harness.converged().ok


def test_race6_retried_earlier_record_never_stays_applied_over_a_later_one(harness):
    # GIVEN one batch with two versions of an account, and the first write of it fails transiently
    v1 = harness.put(ACC, account(plan="free"))
    v2 = harness.put(ACC, account(plan="enterprise"))
    other = harness.put(ACC, account("a2", plan="team"))
    harness.faults.fail_next["put_item"] = 1
    # WHEN Lambda delivers, gets partial failures, and redelivers from the lowest failed record
    first = harness.mirror([v1, v2, other])
    assert first, "the injected throttling must fail a record"
    assert v2["dynamodb"]["SequenceNumber"] in first, "a later record of a failed item must not count as done"
    harness.mirror_until_done([v1, v2, other])
    # THEN the newest version is what stays
    assert harness.target("ACCOUNT#a1", "PROFILE")["plan"] == "enterprise"
    assert harness.target("ACCOUNT#a2", "PROFILE")["plan"] == "team"
    assert harness.converged().ok


def _pending_tasks(harness) -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks(harness.loop) if not t.done()]


def test_race6_a_failed_record_leaves_no_write_in_flight_to_land_after_its_redelivery(harness):
    # GIVEN an account that joins team t1; its profile write is throttled and
    # its membership write is slow (a loaded engine, or botocore backing off)
    joined = harness.put(ACC, account(teamIds={"t1"}))
    harness.faults.fail_next["put_item"] = 1  # the first write sent: the profile
    harness.faults.hold(lambda name, kw: name == "put_item" and kw["Item"]["SK"]["S"] == "MEMBER#a1", at_most_s=1.0)
    # WHEN the batch fails
    assert harness.mirror([joined]), "the throttled profile write must fail the record"
    # THEN the handler returned only once the slow write had landed: nothing of
    # the failed batch is left to resume in the engine's (Lambda container's) loop
    assert harness.faults.held == 1
    assert _pending_tasks(harness) == []
    # WHEN the account leaves the team and the stream redelivers both records in order
    harness.faults.hold_when = None
    left = harness.put(ACC, account())
    harness.mirror_until_done([joined, left])
    harness.faults.release()
    harness.run(asyncio.sleep(0.3))  # give anything still in flight its chance to land
    # THEN the membership stays removed: no write of the failed attempt landed after the redelivery
    assert harness.live("TEAM#t1", "MEMBER#a1") is None
    assert harness.converged().ok


def test_race7_bad_record_is_quarantined_and_does_not_block_its_shard(harness):
    # GIVEN a clean account, then a batch where it turns bad, followed by another item's record
    harness.mirror([harness.put(ACC, account(plan="pro"))])
    bad = harness.put(ACC, account(plan="platinum"))
    after = harness.put(ACC, account("a2"))
    # WHEN the batch is applied
    failed = harness.mirror([bad, after])
    # THEN nothing is retried, the bad item is quarantined with its reason, its
    # target stays as the last clean version, and the next record was applied
    assert failed == []
    assert harness.quarantine() == {SourceRef(ACC, ("a1",)): "invalid_plan"}
    assert harness.target("ACCOUNT#a1", "PROFILE")["plan"] == "pro"
    assert harness.target("ACCOUNT#a2", "PROFILE") is not None
    # WHEN a later clean write arrives THEN it leaves quarantine by itself
    harness.mirror([harness.put(ACC, account(plan="team"))])
    assert harness.quarantine() == {}
    assert harness.converged().ok


@pytest.mark.parametrize("fallback", ["past_the_horizon", "refused_by_a_tombstone"])
def test_race7_backfill_validated_fallback_does_not_strand_a_quarantined_items_held_key(harness, fallback):
    # GIVEN a repository mirrored under its old name, then renamed with bad data (quarantined,
    # holding the old key), then renamed again with clean data, not yet mirrored
    harness.mirror([harness.put(REPO, repo(name="Old"))])
    harness.mirror([harness.put(REPO, repo(name="Mid", createdAt="not a time"))])
    assert harness.quarantine() == {SourceRef(REPO, ("r1",)): "invalid_timestamp"}
    clean = harness.put(REPO, repo(name="New"))
    harness.start_backfill()
    v3, read_at = harness.read(REPO, {"repoId": "r1"})
    if fallback == "past_the_horizon":
        # the page is written too late to trust its read
        read_at -= harness.settings.stale_write_horizon_s + 1
    else:
        # the new key was another repository's, deleted while the backfill runs
        harness.mirror([harness.put(REPO, repo("r2", name="new"))])
        harness.mirror([harness.delete(REPO, {"repoId": "r2"})])
        assert harness.target("ACCOUNT#a1", "REPO#new")["entity"] == "_dynashift_tombstone"
        read_at = time.time() - harness.settings.consistency_margin_s - 1
    # WHEN the backfill's write falls back to a validated write of the current (clean) image
    harness.stale_write(REPO, v3, read_at)
    # THEN the old key the quarantine held went with it, in the same transaction that cleared the entry
    assert harness.live("ACCOUNT#a1", "REPO#old") is None
    assert harness.live("ACCOUNT#a1", "REPO#new")["repo_id"] == "r1"
    assert harness.quarantine() == {}
    # AND once the mirror applies the clean record (its chain only knows the bad image's key), all converge
    harness.mirror([clean])
    harness.finish_backfill()
    assert harness.target_keys() == {("ACCOUNT#a1", "REPO#new")}
    assert harness.converged().ok


def test_race7_backfill_quarantining_first_does_not_make_the_mirror_forget_the_last_clean_keys(harness):
    # GIVEN an account in two teams, mirrored, then turned bad (and moved to another team) at the source
    harness.mirror([harness.put(ACC, account(teamIds={"t1", "t2"}))])
    bad = harness.put(ACC, account(plan="platinum", teamIds={"t3"}))
    # WHEN the backfill reads the bad version and quarantines it (knowing no held keys) before the mirror
    harness.start_backfill()
    image, read_at = harness.read(ACC, {"accountId": "a1"})
    harness.stale_write(ACC, image, read_at)
    assert harness.quarantine() == {SourceRef(ACC, ("a1",)): "invalid_plan"}
    harness.mirror([bad])
    # AND a clean version with no team arrives (its chain only knows the bad image's team)
    harness.mirror([harness.put(ACC, account(plan="pro"))])
    harness.finish_backfill()
    # THEN the memberships of the last clean version went too
    assert harness.target_keys() == {("ACCOUNT#a1", "PROFILE")}
    assert harness.quarantine() == {}
    assert harness.converged().ok


@pytest.mark.parametrize("before", ["its_insert", "a_clean_mirrored_version"])
@pytest.mark.parametrize("then", ["made_clean", "deleted"])
def test_race7_backfill_entry_for_a_bad_state_inside_one_mirror_batch_does_not_stay_behind(harness, before, then):
    # GIVEN an account that turned bad at the source after its creation (or after a clean, mirrored version)
    first = harness.put(ACC, account(plan="pro"))
    batch = [first] if before == "its_insert" else []
    if before == "a_clean_mirrored_version":
        harness.mirror([first])
    batch.append(harness.put(ACC, account(plan="platinum")))
    # AND the backfill read the bad state and quarantined it; its re-read found the source unchanged, so the
    # entry stays
    harness.start_backfill()
    image, read_at = harness.read(ACC, {"accountId": "a1"})
    harness.stale_write(ACC, image, read_at)
    assert harness.quarantine() == {SourceRef(ACC, ("a1",)): "invalid_plan"}
    # WHEN the account is then made clean (or deleted), and the mirror gets the bad record and the next in one
    # batch: a chain whose first image is clean (or an INSERT), the bad state only in its middle
    batch.append(harness.put(ACC, account(plan="team")) if then == "made_clean"
                 else harness.delete(ACC, {"accountId": "a1"}))
    harness.mirror(batch)
    harness.finish_backfill()
    # THEN the backfill's entry did not stay behind: the mirror read it, because a state in the middle of the
    # chain was bad
    assert harness.quarantine() == {}
    assert harness.converged().ok


def test_race5_backfill_collision_entry_for_a_state_inside_one_mirror_batch_does_not_stay_behind(harness):
    # GIVEN a repository holding a name, and a second one created and renamed onto that name at the source
    harness.mirror([harness.put(REPO, repo("r1", name="Tools"))])
    created = harness.put(REPO, repo("r2", name="Other"))
    renamed = harness.put(REPO, repo("r2", name="TOOLS"))
    # AND the backfill read the colliding state: its write met the holder, and its validated fallback
    # recorded the collision (the source still held that state)
    harness.start_backfill()
    image, read_at = harness.read(REPO, {"repoId": "r2"})
    harness.stale_write(REPO, image, read_at)
    assert harness.quarantine() == {SourceRef(REPO, ("r2",)): "key_collision"}
    # WHEN r2 is renamed to a free name and the mirror gets its three records in one batch (a chain that
    # starts with an INSERT, the collision only in its middle)
    harness.mirror([created, renamed, harness.put(REPO, repo("r2", name="Spare"))])
    harness.finish_backfill()
    # THEN the collision entry did not stay behind
    assert harness.quarantine() == {}
    assert harness.live("ACCOUNT#a1", "REPO#spare")["repo_id"] == "r2"
    assert harness.converged().ok


def test_race7_validated_write_refuses_to_clear_an_entry_rewritten_since_it_was_read(harness):
    # GIVEN a quarantined repository holding its old key, now clean at the source
    harness.mirror([harness.put(REPO, repo(name="Old"))])
    harness.mirror([harness.put(REPO, repo(name="Mid", createdAt="not a time"))])
    harness.put(REPO, repo(name="New"))
    ref = SourceRef(REPO, ("r1",))
    control = harness.backfill.control
    original = control.quarantine_get_many
    rewrites = []

    async def entry_rewritten_after_the_read(refs):
        # the first read of the entry is followed by a rewrite (as the mirror's, merging one
        # more held key) before the write commits
        found = await original(refs)
        if not rewrites:
            rewrites.append(found[ref].write_token)
            await control.quarantine_put(QuarantineEntry(
                ref, "invalid_timestamp", "rewritten by the mirror", found[ref].image,
                held_keys={("ACCOUNT#a1", "REPO#old"), ("ACCOUNT#a1", "REPO#mid")}))
        return found

    control.quarantine_get_many = entry_rewritten_after_the_read
    try:
        # WHEN a validated write runs on the entry as first read
        result = harness.run(harness.backfill.apply_validated(ref))
    finally:
        control.quarantine_get_many = original
    # THEN its first transaction was cancelled (the entry changed), and the retry removed every held key
    assert rewrites and rewrites[0] is not None
    assert result.retried >= 1 and result.quarantined is None
    assert harness.live("ACCOUNT#a1", "REPO#old") is None
    assert harness.live("ACCOUNT#a1", "REPO#new")["repo_id"] == "r1"
    assert harness.quarantine() == {}


def test_race5_collision_then_bad_data_in_one_batch_is_quarantined_for_the_bad_data(harness):
    # GIVEN a repository under its old name and another holding "tools"
    harness.mirror([harness.put(REPO, repo("r2", name="tools"))])
    harness.mirror([harness.put(REPO, repo(name="Old"))])
    # WHEN one batch renames it onto "tools" (a collision), then turns it bad
    colliding = harness.put(REPO, repo(name="TOOLS"))
    bad = harness.put(REPO, repo(name="Later", createdAt="not a time"))
    assert harness.mirror([colliding, bad]) == []
    # THEN it is quarantined for what it is now, still holding its old key
    assert harness.quarantine() == {SourceRef(REPO, ("r1",)): "invalid_timestamp"}
    assert harness.live("ACCOUNT#a1", "REPO#old")["repo_id"] == "r1"
    assert harness.converged().ok
    # AND a clean version later takes it out, old key and all
    harness.mirror([harness.put(REPO, repo(name="Fine"))])
    assert harness.target_keys() == {("ACCOUNT#a1", "REPO#tools"), ("ACCOUNT#a1", "REPO#fine")}
    assert harness.quarantine() == {}
    assert harness.converged().ok


def test_race5_validated_collision_does_not_overwrite_what_the_mirror_recorded_after_the_read(harness):
    # GIVEN a repository quarantined for a collision with "tools", holding its old key
    harness.mirror([harness.put(REPO, repo("r2", name="tools"))])
    harness.mirror([harness.put(REPO, repo(name="Old"))])
    harness.mirror([harness.put(REPO, repo(name="TOOLS"))])
    ref = SourceRef(REPO, ("r1",))
    assert harness.quarantine() == {ref: "key_collision"}
    control = harness.backfill.control
    original = control.quarantine_put
    bad = repo(name="Later", createdAt="not a time")
    records = []

    async def source_turns_bad_first(entry, **kwargs):
        # after the validated write read the colliding image and met the holder, and before it
        # records the collision: the application turns the item bad and the mirror records that
        if not records:
            records.append(harness.put(REPO, bad))
            await original(QuarantineEntry(ref, "invalid_timestamp", "as the mirror records it", bad,
                                           held_keys={("ACCOUNT#a1", "REPO#old")}))
        return await original(entry, **kwargs)

    control.quarantine_put = source_turns_bad_first
    try:
        # WHEN a validated write (a waker, say) runs
        result = harness.run(harness.backfill.apply_validated(ref))
    finally:
        control.quarantine_put = original
    # THEN its collision entry was refused (the source changed), and the mirror's entry stands
    assert records and result.retried >= 1
    assert harness.quarantine() == {ref: "invalid_timestamp"}
    # AND when the mirror applies the bad record and a clean one later, everything converges
    harness.mirror(records)
    harness.mirror([harness.put(REPO, repo(name="Fine"))])
    assert harness.target_keys() == {("ACCOUNT#a1", "REPO#tools"), ("ACCOUNT#a1", "REPO#fine")}
    assert harness.converged().ok


def test_race2_quarantine_retry_decides_tombstones_per_removal_not_once_per_run(harness, monkeypatch):
    # GIVEN two quarantined repositories, each holding an old key, both clean again at the source
    for rid in ("r1", "r2"):
        harness.mirror([harness.put(REPO, repo(rid, name=f"old-{rid}"))])
        harness.mirror([harness.put(REPO, repo(rid, name=f"mid-{rid}", createdAt="not a time"))])
        harness.put(REPO, repo(rid, name=f"new-{rid}"))
    answers = []

    async def a_backfill_registers_after_the_first_read(self):
        answers.append(bool(answers))  # none at the first read, one at every later read
        return answers[-1]

    monkeypatch.setattr(StaleWriterRegistry, "active", a_backfill_registers_after_the_first_read)
    # WHEN the quarantine retry runs (the registry answer ages past its refresh period between items)
    settings = harness.settings.model_copy(update={"stale_writer_refresh_s": 0.001})
    report = harness.run(retry_quarantine(settings))
    # THEN the first removal was a plain delete, and the one after the backfill registered left a tombstone
    assert report.left == 2 and len(answers) >= 2
    olds = [harness.target("ACCOUNT#a1", f"REPO#old-{rid}") for rid in ("r1", "r2")]
    assert sorted("absent" if o is None else o["entity"] for o in olds) == ["_dynashift_tombstone", "absent"]


def test_race7_only_transient_faults_fail_a_record(harness):
    # GIVEN a throttled write
    record = harness.put(ACC, account())
    harness.faults.fail_next["put_item"] = 1
    # WHEN applied THEN the record fails (Lambda will retry it), and a retry succeeds
    assert harness.mirror([record]) == [record["dynamodb"]["SequenceNumber"]]
    assert harness.mirror([record]) == []
    assert harness.converged().ok


def test_tombstones_only_while_a_backfill_may_write(harness):
    # GIVEN no backfill: a delete leaves nothing behind
    harness.mirror([harness.put(REPO, repo())])
    harness.mirror([harness.delete(REPO, {"repoId": "r1"})])
    assert harness.target_keys() == set()
    # GIVEN a backfill: a delete leaves a tombstone, swept once the backfill is done
    harness.start_backfill()
    harness.mirror([harness.put(REPO, repo())])
    harness.mirror([harness.delete(REPO, {"repoId": "r1"})])
    assert harness.target("ACCOUNT#a1", "REPO#tools")["entity"] == "_dynashift_tombstone"
    assert harness.finish_backfill() == 1
    assert harness.target_keys() == set()


class HeldPuts:
    """Delegates to an aiobotocore client; every put_item is held until released
    (a request the engine is slow to apply, or one botocore retries later)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def put_item(self, **kwargs: Any) -> Any:
        self.sent.set()
        await self.release.wait()
        return await self.inner.put_item(**kwargs)


def test_race3_stale_write_landing_after_an_idle_sweep_is_still_stopped_by_its_tombstone(harness):
    # GIVEN a repository read by the backfill under its old key, then renamed, and the rename mirrored
    harness.put(REPO, repo(name="Old"))
    harness.start_backfill()
    v1, read_at = harness.read(REPO, {"repoId": "r1"})
    harness.mirror([harness.put(REPO, repo(name="New"))])
    assert harness.target("ACCOUNT#a1", "REPO#old")["entity"] == "_dynashift_tombstone"
    settings = harness.settings
    life = settings.stale_write_horizon_s + settings.consistency_margin_s
    held = HeldPuts(harness.backfill.client)
    harness.backfill.client = held

    async def late_landing() -> int:
        # WHEN the backfill sends its write within the horizon, but the request
        # reaches the table only after the mirror's idle sweep ran at a moment
        # when the tombstone was older than horizon + margin
        write = asyncio.ensure_future(harness.backfill.write_stale(SourceRef(REPO, ("r1",)), v1, read_at))
        await asyncio.wait_for(held.sent.wait(), timeout=30)
        later = time.time() + life + 1.0
        swept = await sweep_tombstones(settings, harness.definition, held.inner, older_than_s=life,
                                       clock=lambda: later)
        held.release.set()
        await write
        return swept

    swept = harness.run(late_landing())
    harness.finish_backfill()
    # THEN the old key did not come back: the sweep kept the tombstone the in-flight write needed
    assert harness.target_keys() == {("ACCOUNT#a1", "REPO#new")}
    assert swept == 0
    assert harness.converged().ok



class ShiftedClock:
    """The backfill host's clock, which the test can move on (a stalled renewal)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_race3_backfill_write_of_a_page_read_before_its_lease_lapsed_is_dropped_not_landed(harness):
    settings = harness.settings
    # GIVEN a repository in sc-main, and a backfill worker past its fence with a page read under its lease
    harness.mirror([harness.put(REPO, repo(name="Old"))])
    stack = contextlib.AsyncExitStack()
    client = harness.run(stack.enter_async_context(aws.aio_dynamodb(settings)))
    clock = ShiftedClock()
    registry = StaleWriterRegistry(client, settings.control_table, clock)
    lease = StaleWriterLease(registry, "lapsing-backfill", lease_s=30.0, guard_s=1.0, clock=clock,
                             fence_s=settings.stale_writer_refresh_s + settings.consistency_margin_s)
    lease.install(client)
    backfill = Applier(settings, harness.definition, client, ControlStore(client, settings.control_table))
    harness.run(lease.renew())
    epoch = harness.run(lease.ready())
    v1, read_at = harness.read(REPO, {"repoId": "r1"})
    # WHEN its renewals stall: the registration runs out, the mirror sees no stale
    # writer any more and applies a rename by deleting the old key without a tombstone
    harness.run(harness.registry.deregister("lapsing-backfill"))
    time.sleep(settings.stale_writer_refresh_s * 4)
    harness.mirror_until_done([harness.put(REPO, repo(name="New"))])
    left = harness.target("ACCOUNT#a1", "REPO#old")
    assert left is None, f"the rename left {left}: the race needs a removal without a tombstone"
    clock.offset = 30.0

    async def page_write_then_late_renewal() -> bool:
        async def page_write() -> Any:
            PAGE_EPOCH.set(epoch)
            return await backfill.write_stale(SourceRef(REPO, ("r1",)), v1, read_at)

        # AND the page's write is due while the lease cannot outlive it, then the renewal comes back late
        write = asyncio.ensure_future(page_write())
        await asyncio.sleep(0.5)
        held = not write.done()
        await lease.renew()
        with pytest.raises(LeaseLapsed):
            await write
        return held

    held = harness.run(page_write_then_late_renewal())
    # THEN the write was held, never sent, and dropped: the old key did not come back
    assert held and lease.lapses == 1
    assert harness.target_keys() == {("ACCOUNT#a1", "REPO#new")}
    # AND the page read again after the new fence writes nothing stale
    new_epoch = harness.run(lease.ready())
    v2, read_at = harness.read(REPO, {"repoId": "r1"})

    async def page_again() -> Any:
        PAGE_EPOCH.set(new_epoch)
        return await backfill.write_stale(SourceRef(REPO, ("r1",)), v2, read_at)

    harness.run(page_again())
    harness.run(lease.close())
    harness.run(stack.aclose())
    harness.finish_backfill()
    assert harness.target_keys() == {("ACCOUNT#a1", "REPO#new")}
    assert harness.converged().ok
