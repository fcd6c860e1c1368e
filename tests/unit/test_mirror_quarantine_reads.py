"""Which chains the forward mirror reads a quarantine entry for (`Chain.may_be_quarantined`).

What must hold: an entry is read for every item that may have one, that is
whose state before the batch is bad or targets a key two items can claim
(a collision), or whose state the batch cannot tell (no OldImage); an
INSERT, or a clean state whose keys no other item can claim, has none to
read (shared/streams/mirror.py, module note). The races themselves, with
the reads cut this way, run against DynamoDB Local in
tests/integration/test_races.py and test_races_property.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.core.codec import from_stream_image, to_wire
from shared.core.definition import get_definition
from shared.core.settings import load_settings
from shared.store.control import CollisionSummary, summary_bucket
from shared.streams.mirror import Chain, MirrorEngine

SC = get_definition("sc")
ACCOUNT = {"accountId": "acc_000001", "email": "one@example.com", "name": "One", "plan": "team",
           "createdAt": "2024-01-02T03:04:05Z", "teamIds": {"team_1"}}
REPO = {"repoId": "r1", "accountId": "acc_000001", "name": "Widget", "createdAt": "2024-01-02T03:04:05Z"}


def record(table: str, event: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    key_attr = SC.source(table).key_attrs[0]
    body: dict[str, Any] = {"Keys": to_wire({key_attr: (new or old)[key_attr]})}  # type: ignore[index]
    if old is not None:
        body["OldImage"] = to_wire(old)
    if new is not None:
        body["NewImage"] = to_wire(new)
    arn = f"arn:aws:dynamodb:us-east-1:000000000000:table/{table}/stream/2024-01-01T00:00:00.000"
    return {"eventName": event, "eventSourceARN": arn, "dynamodb": body}


def chain(*records: dict[str, Any]) -> Chain:
    table = records[0]["eventSourceARN"].split("/")[1]
    return Chain(SC.source(table).ref(from_stream_image(records[0]["dynamodb"]["Keys"])), records=list(records))


def test_an_insert_has_no_entry_to_read() -> None:
    assert not chain(record("sc-accounts", "INSERT", None, ACCOUNT)).may_be_quarantined(SC)
    assert not chain(record("sc-repositories", "INSERT", None, REPO)).may_be_quarantined(SC)


def test_a_clean_state_whose_keys_no_other_item_can_claim_has_none() -> None:
    # an account's profile and memberships embed its own id: no collision, and clean
    renamed = {**ACCOUNT, "name": "Uno"}
    assert not chain(record("sc-accounts", "MODIFY", ACCOUNT, renamed)).may_be_quarantined(SC)
    assert not chain(record("sc-accounts", "REMOVE", ACCOUNT, None)).may_be_quarantined(SC)


def test_a_bad_state_a_claimable_key_or_an_unknown_state_is_read() -> None:
    bad = {**ACCOUNT, "email": "not an email"}
    oversized = {**ACCOUNT, "notes": "x" * 410_000}
    # bad data (the transform refuses it, or its item is over 400 KB): quarantined now, held keys to keep
    assert chain(record("sc-accounts", "MODIFY", bad, ACCOUNT)).may_be_quarantined(SC)
    assert chain(record("sc-accounts", "REMOVE", oversized, None)).may_be_quarantined(SC)
    # a repository's key can be claimed by another repository: it may be waiting on a collision
    assert chain(record("sc-repositories", "MODIFY", REPO, {**REPO, "name": "Gadget"})).may_be_quarantined(SC)
    # a MODIFY without an OldImage (a stream without old images): nothing tells, so read
    assert chain(record("sc-accounts", "MODIFY", None, ACCOUNT)).may_be_quarantined(SC)


@pytest.mark.parametrize("summary_names_the_repository", [False, True])
def test_the_batch_reads_entries_only_for_the_chains_that_may_have_one(summary_names_the_repository: bool) -> None:
    # GIVEN a batch of an account INSERT, a clean account update, an update of a bad account and a repository rename,
    # and a collision summary that does or does not name the repository
    engine = MirrorEngine(load_settings(endpoint_url="http://127.0.0.1:1"), SC)
    bad = {**ACCOUNT, "accountId": "acc_000003", "email": "not an email"}
    records = [record("sc-accounts", "INSERT", None, {**ACCOUNT, "accountId": "acc_000002"}),
               record("sc-accounts", "MODIFY", ACCOUNT, {**ACCOUNT, "name": "Uno"}),
               record("sc-accounts", "MODIFY", bad, {**bad, "email": "three@example.com"}),
               record("sc-repositories", "MODIFY", REPO, {**REPO, "name": "Gadget"})]
    chains = engine._chains(records)
    repo_ref = next(ref for ref in chains if ref.key[0] == "r1")
    asked: list[list[str]] = []
    summaries: list[int] = []

    class Control:
        async def quarantine_get_many(self, refs: Any) -> dict[Any, Any]:
            if refs:
                asked.append(sorted(ref.key[0] for ref in refs))
            return {}

        async def collision_summary(self) -> CollisionSummary:
            summaries.append(1)
            named = {summary_bucket(repo_ref.as_text())} if summary_names_the_repository else set()
            return CollisionSummary(collided=frozenset(named))

    class Applier:
        control = Control()

        async def tombstones_now(self) -> bool:
            return False

    state = type("State", (), {"applier": Applier()})()
    # WHEN its entries are prefetched
    asyncio.run(engine._prefetch(state, chains))  # type: ignore[arg-type]
    # THEN the bad account's entry is read; the repository's (a clean state with a claimable key: only a
    # collision entry is possible) only when the summary, read once, names it
    assert summaries == [1]
    assert asked == ([["acc_000003"], ["r1"]] if summary_names_the_repository else [["acc_000003"]])


def test_a_batch_without_claimable_keys_does_not_read_the_summary() -> None:
    # GIVEN a batch of account changes only (no key two items can claim)
    engine = MirrorEngine(load_settings(endpoint_url="http://127.0.0.1:1"), SC)
    chains = engine._chains([record("sc-accounts", "MODIFY", ACCOUNT, {**ACCOUNT, "name": "Uno"})])

    class Control:
        async def quarantine_get_many(self, refs: Any) -> dict[Any, Any]:
            assert not refs
            return {}

        async def collision_summary(self) -> CollisionSummary:
            raise AssertionError("no chain needs it")

    class Applier:
        control = Control()

        async def tombstones_now(self) -> bool:
            return False

    # WHEN its entries are prefetched, THEN neither entries nor the summary are read
    asyncio.run(engine._prefetch(type("State", (), {"applier": Applier()})(), chains))  # type: ignore[arg-type]
