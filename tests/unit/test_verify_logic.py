"""The verifier's pure parts: canonical digests, attribute diffs, the per-key judgement, the
settle re-check rounds, and the report's JSON shape. No engine: reads come from dicts."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import pytest

from shared.core.capacity import Usage
from shared.core.definition import SourceRef, get_definition
from shared.core.settings import load_settings
from shared.protocol.apply import TOMBSTONE, Applier, tombstone_item
from shared.store.control import QuarantineEntry, key_text
from shared.verify.differences import KINDS, Difference, attribute_diff, canonical, digest
from shared.verify.judge import LiveView, SourceState, judge_key, judge_ref
from shared.verify.report import build_report
from shared.verify.spill import SpillStore
from shared.verify.verifier import VerifyRun, make_request

SC = get_definition("sc")


def repo(repo_id: str, name: str, account: str = "a1", **extra: Any) -> dict[str, Any]:
    return {"repoId": repo_id, "accountId": account, "name": name, "visibility": "public",
            "createdAt": Decimal(1700000000), **extra}


def account(account_id: str, **extra: Any) -> dict[str, Any]:
    return {"accountId": account_id, "email": f"{account_id}@example.com", "createdAt": Decimal(1700000000), **extra}


class DictView(LiveView):
    """A LiveView whose reads come from dicts: sources by ref, target items by key, quarantine by ref."""

    def __init__(self, sources: dict[SourceRef, dict | None], target: list[dict], quarantine: dict[SourceRef, str]):
        applier = Applier(load_settings(), SC, client=None, control=None)  # type: ignore[arg-type]
        super().__init__(applier, SC)
        self.sources = sources
        self.items = {SC.target_key(i): i for i in target}
        self.quarantine = quarantine

    async def source(self, ref):
        image = self.sources.get(ref)
        if image is None:
            return SourceState(None)
        try:
            return SourceState(image, self.applier.transform_checked(ref, image))
        except Exception as exc:  # QuarantineError
            return SourceState(image, error=exc)

    async def target(self, key):
        return self.items.get(key)

    async def entry(self, ref):
        reason = self.quarantine.get(ref)
        return QuarantineEntry(ref, reason, "", None) if reason else None


def R(table: str, key: str) -> SourceRef:
    return SourceRef(table, (key,))


def judge(view: DictView, key, hints=()) -> list[Difference]:
    return asyncio.run(judge_key(view, key, hints))


# ----------------------------------------------------------------------------- canonical form
def test_canonical_form_is_insensitive_to_set_order_and_number_spelling_but_keeps_types():
    # GIVEN values DynamoDB stores equally, and values it stores differently
    assert digest({"s": {"b", "a"}, "n": Decimal("1536.0")}) == digest({"n": Decimal("1536"), "s": {"a", "b"}})
    assert digest({"n": 0}) == digest({"n": Decimal("0.00")})
    # THEN types are kept: a BOOL is not a number, a list is not a set, a string is not a number
    assert digest({"x": True}) != digest({"x": Decimal(1)})
    assert digest({"x": ["a"]}) != digest({"x": {"a"}})
    assert digest({"x": "1"}) != digest({"x": Decimal(1)})
    assert canonical({"m": {"k": None}}) == ["M", {"m": ["M", {"k": ["NULL"]}]}]


def test_numbers_that_differ_only_past_the_28th_digit_are_different():
    # GIVEN two numbers DynamoDB stores apart (it keeps 38 digits; Python's default context rounds to 28)
    a, b = Decimal("12345678901234567890123456789012345671"), Decimal("12345678901234567890123456789012345672")
    # THEN their digests differ, and a number's spelling still does not matter
    assert digest({"n": a}) != digest({"n": b})
    assert digest({"n": Decimal("1.2345678901234567890123456789012345671E+37")}) == digest({"n": a})


def test_attribute_diff_names_only_what_differs():
    expected = {"PK": "A", "plan": "pro", "topics": ["x"], "gone": "y"}
    actual = {"PK": "A", "plan": "free", "topics": ["x"], "new": Decimal(2)}
    assert attribute_diff(expected, actual) == {
        "gone": {"expected": "y", "actual": "<absent>"},
        "new": {"expected": "<absent>", "actual": 2},
        "plan": {"expected": "pro", "actual": "free"},
    }
    assert attribute_diff(expected, dict(expected)) == {}


# ----------------------------------------------------------------------------- judgement per key
def test_judge_finds_each_kind_at_its_key():
    acc = R("sc-accounts", "a1")
    good = account("a1")
    (profile,) = SC.transform("sc-accounts", good)
    key = SC.target_key(profile)
    # missing
    (diff,) = judge(DictView({acc: good}, [], {}), key, [acc])
    assert (diff.kind, diff.source, diff.target_key) == ("missing", acc.as_text(), key)
    # mismatched, with an attribute diff
    (diff,) = judge(DictView({acc: good}, [dict(profile, plan="pro")], {}), key, [acc])
    assert diff.kind == "mismatched" and diff.diff == {"plan": {"expected": "free", "actual": "pro"}}
    # equal: nothing
    assert judge(DictView({acc: good}, [profile], {}), key, [acc]) == []
    # extra: the owner no longer exists
    (diff,) = judge(DictView({}, [profile], {}), key, [])
    assert (diff.kind, diff.source) == ("extra", acc.as_text())
    # leftover: a tombstone nobody needs
    tomb = tombstone_item(SC, ("ACCOUNT#zz", "REPO#old"), 0)
    (diff,) = judge(DictView({}, [tomb], {}), ("ACCOUNT#zz", "REPO#old"), [])
    assert diff.kind == "leftover" and diff.source is None


def test_a_stale_key_after_a_rename_is_extra_and_the_new_key_is_checked():
    ref = R("sc-repositories", "r1")
    (old_item,) = SC.transform("sc-repositories", repo("r1", "Old"))
    view = DictView({ref: repo("r1", "New")}, [old_item], {})
    (diff,) = judge(view, SC.target_key(old_item), [ref])
    assert diff.kind == "extra" and diff.source == ref.as_text()
    (diff,) = judge(view, ("ACCOUNT#a1", "REPO#new"), [ref])
    assert diff.kind == "missing"


def test_quarantined_items_keep_their_last_clean_items_and_a_collision_loser_owns_nothing():
    acc = R("sc-accounts", "a1")
    (profile,) = SC.transform("sc-accounts", account("a1"))
    bad = account("a1", email="no-at-sign")
    # GIVEN an account now bad, quarantined: its old profile is kept on purpose
    assert judge(DictView({acc: bad}, [profile], {acc: "invalid_email"}), SC.target_key(profile), [acc]) == []
    assert asyncio.run(judge_ref(DictView({acc: bad}, [profile], {acc: "invalid_email"}), acc)) == []
    # AND not recorded in quarantine: quarantine_missing, with the reason expected
    (diff,) = asyncio.run(judge_ref(DictView({acc: bad}, [profile], {}), acc))
    assert diff.kind == "quarantine_missing" and diff.diff["reason"]["expected"] == "invalid_email"
    # GIVEN two repositories whose names differ only in case: the holder keeps the key
    r1, r2 = R("sc-repositories", "r1"), R("sc-repositories", "r2")
    sources = {r1: repo("r1", "Tools"), r2: repo("r2", "tools")}
    (held,) = SC.transform("sc-repositories", sources[r1])
    key = SC.target_key(held)
    assert judge(DictView(sources, [held], {r2: "key_collision"}), key, [r1, r2]) == []
    # AND a loser that is not in quarantine is reported as such (not the key)
    (diff,) = judge(DictView(sources, [held], {}), key, [r1, r2])
    assert (diff.kind, diff.source) == ("quarantine_missing", r2.as_text())
    # AND a collision entry whose holder went away is stale
    (diff,) = asyncio.run(judge_ref(DictView({r2: sources[r2]}, [], {r2: "key_collision"}), r2))
    assert diff.kind == "quarantine_stale"


def chained_collision() -> tuple[dict[SourceRef, dict], list[dict], dict[SourceRef, str]]:
    """r1 held "tools" and was renamed onto r3's "lib" (a collision: it keeps "tools"), then
    r2 was renamed from "core" onto "TOOLS" (blocked by r1's kept item: it keeps "core")."""
    r1, r2, r3 = R("sc-repositories", "r1"), R("sc-repositories", "r2"), R("sc-repositories", "r3")
    sources = {r1: repo("r1", "LIB"), r2: repo("r2", "TOOLS"), r3: repo("r3", "lib")}
    target = [SC.transform("sc-repositories", image)[0]
              for image in (repo("r1", "tools"), repo("r2", "core"), repo("r3", "lib"))]
    return sources, target, {r1: "key_collision", r2: "key_collision"}


def test_a_collision_loser_keeps_its_old_key_and_blocks_the_next_item_in_the_chain():
    sources, target, quarantine = chained_collision()
    r1, r2 = R("sc-repositories", "r1"), R("sc-repositories", "r2")
    view = DictView(sources, target, quarantine)
    # THEN nothing is reported at any key, and both entries are right
    for item in target:
        assert judge(view, SC.target_key(item), list(sources)) == []
    assert judge(view, ("ACCOUNT#a1", "REPO#tools"), [r2]) == []
    assert asyncio.run(judge_ref(view, r1)) == [] and asyncio.run(judge_ref(view, r2)) == []
    # AND once r3 leaves "lib", nothing blocks r1, so nothing blocks r2: its entry is stale
    moved = {**sources, R("sc-repositories", "r3"): repo("r3", "web")}
    (diff,) = asyncio.run(judge_ref(DictView(moved, target, quarantine), r2))
    assert diff.kind == "quarantine_stale"
    # AND an item holding a key it no longer claims, with nothing blocking it, is reported
    free = {**sources, r1: repo("r1", "free")}
    assert [d.kind for d in judge(DictView(free, target, {r2: "key_collision"}), ("ACCOUNT#a1", "REPO#tools"),
                                  [r2])] == ["mismatched"]


def test_items_renamed_onto_each_others_names_wait_for_each_other():
    r1, r2 = R("sc-repositories", "r1"), R("sc-repositories", "r2")
    sources = {r1: repo("r1", "B"), r2: repo("r2", "A")}
    target = [SC.transform("sc-repositories", image)[0] for image in (repo("r1", "a"), repo("r2", "b"))]
    view = DictView(sources, target, {r1: "key_collision", r2: "key_collision"})
    for item in target:
        assert judge(view, SC.target_key(item), [r1, r2]) == []
    assert asyncio.run(judge_ref(view, r1)) == [] and asyncio.run(judge_ref(view, r2)) == []


def test_a_tombstone_where_an_item_belongs_is_a_mismatch():
    acc = R("sc-accounts", "a1")
    (profile,) = SC.transform("sc-accounts", account("a1"))
    tomb = tombstone_item(SC, SC.target_key(profile), 0)
    (diff,) = judge(DictView({acc: account("a1")}, [tomb], {}), SC.target_key(profile), [acc])
    assert diff.kind == "mismatched" and diff.diff["entity"] == {"expected": "account", "actual": TOMBSTONE}


# ----------------------------------------------------------------------------- settle rounds

def rounds_run(observations: list[tuple[list[Difference], bytes]], settle_s: float = 5.0):
    """Run the re-check on one nominated key whose judgement returns `observations` in turn."""
    settings = load_settings()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    run = VerifyRun(settings, make_request(settings, settle_s=settle_s), sleep=sleep)
    store = SpillStore()
    try:
        store.db.execute("INSERT INTO act VALUES (?, NULL, ?, 0)", (key_text(("K", "S")), b"scan"))
        store.index()
        store.db.execute("INSERT INTO cand(subject, value, kind) VALUES ('k', ?, 'extra')", (key_text(("K", "S")),))
        calls = iter(observations)

        async def fake_judge(view, store_, subject, value):
            return next(calls)

        run._judge = fake_judge  # type: ignore[method-assign]
        asyncio.run(run._recheck(Applier(settings, SC, client=None, control=None), store))  # type: ignore[arg-type]
        return store.found_counts()[0], run.rounds, slept
    finally:
        store.close()


def test_a_difference_gone_after_the_settle_is_not_reported():
    counts, rounds, slept = rounds_run([([], b"x")])
    assert counts["extra"] == 0 and rounds == 1 and slept == [5.0]


def test_a_difference_that_keeps_moving_is_looked_at_again_then_reported():
    extra = Difference("extra", None, ("K", "S"))
    # GIVEN a difference whose inputs change between looks (the application is writing it)
    counts, rounds, slept = rounds_run([([extra], b"one"), ([extra], b"two"), ([], b"three")])
    # THEN it is re-checked after each settle, and not reported once it settled
    assert rounds == 3 and slept == [5.0, 5.0, 5.0] and counts["extra"] == 0
    # GIVEN a difference whose inputs stopped moving, THEN it is confirmed at the next look
    counts, rounds, _ = rounds_run([([extra], b"one"), ([extra], b"one")])
    assert rounds == 2 and counts["extra"] == 1


# ----------------------------------------------------------------------------- report shape
def test_report_json_has_every_documented_field(tmp_path):
    settings = load_settings()
    store = SpillStore()
    try:
        store.db.execute("INSERT INTO src VALUES ('sc-accounts|a1', x'00', NULL)")
        store.db.execute("INSERT INTO src VALUES ('sc-accounts|a2', x'01', 'invalid_email')")
        store.db.execute("INSERT INTO act VALUES ('K', NULL, x'02', 0)")
        store.add_found([Difference("extra", None, ("K", "S"), {"PK": {"expected": "<absent>", "actual": "K"}})] * 25
                        + [Difference("extra", None, (f"K{i}", "S")) for i in range(24)], confirmed=True)
        report = build_report(store, started=100.0, finished=101.0, tables=("sc-accounts",), sample=1.0,
                              settle_s=0, rounds=1, rechecked=0, repair=None, usage=Usage(), repair_usage=None,
                              region=settings.effective_region)
    finally:
        store.close()
    expected = {"ok", "source_items", "target_items", "missing", "extra", "mismatched", "leftover", "quarantined",
                "samples", "elapsed_s", "items_per_s", "started_at", "finished_at"}
    assert expected <= set(report)
    assert set(KINDS) <= set(report)
    assert report["ok"] is False and report["extra"] == 25 and report["missing"] == 0
    assert report["source_items"] == 2 and report["target_items"] == 1
    assert report["quarantined"] == {"invalid_email": 1}
    assert len(report["samples"]["extra"]) == 20
    assert set(report["samples"]["extra"][0]) == {"kind", "source", "target_key", "diff"}
    json.loads(json.dumps(report))  # JSON-able as it is


@pytest.mark.parametrize(
    ("options", "named"),
    [({"sample": 0}, "--sample"), ({"sample": 1.5}, "--sample"), ({"segments": 0}, "--segments"),
     ({"settle_s": -1}, "--settle"), ({"table": "nope"}, "--table")],
)
def test_bad_options_name_themselves(options, named):
    from shared.core.errors import UsageError

    with pytest.raises(UsageError, match=named):
        make_request(load_settings(), **options)


def test_only_keys_two_items_can_claim_are_looked_up_for_waiters():
    # GIVEN an applier with no control table at all: a waiter lookup would fail
    applier = Applier(load_settings(), SC, client=None, control=None)  # type: ignore[arg-type]
    (profile,) = SC.transform("sc-accounts", account("a1"))
    # WHEN a profile's key (it embeds its account's id) is released
    # THEN nobody is looked up: no other source item can claim it
    assert asyncio.run(applier._wake(profile)) == 0
    # AND a repository's key, which a case-different name can claim, is one to look up
    (held,) = SC.transform("sc-repositories", repo("r1", "Tools"))
    assert SC.shared_key(SC.target_key(held)) and not SC.shared_key(SC.target_key(profile))
