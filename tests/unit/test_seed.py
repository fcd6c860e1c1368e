"""The seed generator: counts, reproducibility, legacy variants, bad data."""

from __future__ import annotations

import re
import time
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import TypeSerializer

from shared.core.errors import UsageError
from shared.core.itemsize import MAX_ITEM_BYTES, item_size_bytes
from shared.sc.seed import ACCOUNTS, REPOSITORIES, SeedData, generate

REASONS = {
    "missing_attribute",
    "wrong_type",
    "invalid_email",
    "invalid_plan",
    "invalid_status",
    "invalid_timestamp",
    "item_too_large",
}
ACCOUNT_CASES = {
    "email_missing", "email_empty", "email_no_at", "email_two_at", "email_nothing_before_at",
    "email_nothing_after_at", "plan_unknown", "status_unknown", "created_missing", "created_garbage",
    "updated_garbage", "team_ids_string", "settings_string", "too_large",
}
REPOSITORY_CASES = {
    "account_id_missing", "name_missing", "created_missing", "created_garbage", "updated_garbage",
    "size_kb_string", "archived_string", "topics_string", "too_large",
}
DOCUMENTED = {
    ACCOUNTS: {"accountId", "email", "name", "plan", "status", "createdAt", "updatedAt", "teamIds", "settings"},
    REPOSITORIES: {"repoId", "accountId", "name", "visibility", "isPrivate", "defaultBranch", "createdAt",
                   "updatedAt", "topics", "sizeKb", "archived"},
}


@pytest.fixture(scope="module")
def data() -> SeedData:
    return generate(400, 1200, 0.05, seed=42)


def good(data: SeedData, table: str) -> list[dict[str, Any]]:
    key = "accountId" if table == ACCOUNTS else "repoId"
    return [item for item in data.tables[table] if (table, item[key]) not in data.bad]


# ---------------------------------------------------------------- counts and keys
@pytest.mark.parametrize(("accounts", "repos"), [(0, 0), (1, 0), (0, 3), (3, 7), (400, 1200)])
def test_exact_counts_and_unique_keys(accounts: int, repos: int) -> None:
    # GIVEN requested table sizes, some tiny
    # WHEN generating with bad data
    data = generate(accounts, repos, 0.1, seed=1)
    # THEN each table has exactly that many items, each with a unique hash key
    assert len(data.accounts) == accounts
    assert len(data.repositories) == repos
    assert len({a["accountId"] for a in data.accounts}) == accounts
    assert len({r["repoId"] for r in data.repositories}) == repos
    assert all(a["accountId"] for a in data.accounts) and all(r["repoId"] for r in data.repositories)


def test_invalid_arguments_are_refused() -> None:
    # GIVEN arguments outside their ranges  WHEN generating  THEN a UsageError names them
    with pytest.raises(UsageError, match="bad_fraction"):
        generate(10, 10, 1.5, seed=1)
    with pytest.raises(UsageError, match="negative"):
        generate(-1, 10, 0.1, seed=1)


# ---------------------------------------------------------------- reproducibility
def test_same_seed_gives_identical_data() -> None:
    # GIVEN two generations with the same arguments
    first = generate(200, 600, 0.05, seed=7)
    second = generate(200, 600, 0.05, seed=7)
    # THEN items, bad keys and collisions are identical
    assert first.accounts == second.accounts
    assert first.repositories == second.repositories
    assert first.bad == second.bad and first.bad_cases == second.bad_cases
    assert first.collisions == second.collisions


def test_different_seed_gives_different_data() -> None:
    # GIVEN two seeds  WHEN generating  THEN the ids, the items and the bad keys differ
    first = generate(200, 600, 0.05, seed=7)
    second = generate(200, 600, 0.05, seed=8)
    assert {a["accountId"] for a in first.accounts}.isdisjoint({a["accountId"] for a in second.accounts})
    assert first.repositories != second.repositories
    assert set(first.bad) != set(second.bad)


# ---------------------------------------------------------------- legacy variants
def _timestamp_kinds(value: Any) -> set[str]:
    if isinstance(value, Decimal):
        return {"epoch"}
    assert isinstance(value, str), value
    kinds = {"iso"}
    if value.endswith("Z"):
        kinds.add("z")
    if re.search(r"[+-]\d\d:\d\d$", value):
        kinds.add("offset")
    if "+02:00" in value:
        kinds.add("+02:00")
    if re.search(r"T\d\d:\d\d:\d\d\.\d+", value):
        kinds.add("fraction")
    if not value.endswith("Z") and not re.search(r"[+-]\d\d:\d\d$", value):
        kinds.add("naive")
    return kinds


def _legacy_types(items: list[dict[str, Any]], table: str) -> set[str]:
    types: set[str] = set()
    for item in items:
        for name, value in item.items():
            if name not in DOCUMENTED[table]:
                types.add(next(iter(TypeSerializer().serialize(value))))
                if isinstance(value, dict) and any(isinstance(v, dict) for v in value.values()):
                    types.add("M nested")
    return types


def test_every_account_variant_is_present(data: SeedData) -> None:
    # GIVEN a moderate data set  WHEN looking at its good accounts
    accounts = good(data, ACCOUNTS)
    n = len(accounts)
    # THEN timestamps come in every legacy form, updatedAt sometimes missing
    created = set().union(*(_timestamp_kinds(a["createdAt"]) for a in accounts))
    updated = set().union(*(_timestamp_kinds(a["updatedAt"]) for a in accounts if "updatedAt" in a))
    for kinds in (created, updated):
        assert {"epoch", "z", "offset", "+02:00", "fraction", "naive"} <= kinds
    assert any("updatedAt" not in a for a in accounts)
    # emails in mixed case and with surrounding spaces
    emails = [a["email"] for a in accounts]
    assert any(e.strip() != e.strip().lower() for e in emails)
    assert any(e != e.strip() for e in emails)
    assert any(e == e.strip().lower() for e in emails)
    # plans in several letter cases, and missing
    plans = [a.get("plan") for a in accounts]
    assert None in plans
    assert {p.lower() for p in plans if p} == {"free", "pro", "team", "enterprise"}
    assert any(p and p.isupper() for p in plans) and any(p and p.istitle() for p in plans)
    # every status, missing, and a few percent deleted
    statuses = Counter(a.get("status") for a in accounts)
    assert set(statuses) == {None, "active", "suspended", "deleted"}
    assert 0.01 * n <= statuses["deleted"] <= 0.08 * n
    # teamIds as a string set, sometimes absent
    assert any(isinstance(a.get("teamIds"), set) for a in accounts)
    assert any("teamIds" not in a for a in accounts)
    # settings: both keys, extra keys, empty, absent
    settings = [a.get("settings") for a in accounts]
    assert any(s and {"theme", "emailNotifications"} <= set(s) for s in settings)
    assert any(s and set(s) - {"theme", "emailNotifications"} for s in settings)
    assert {} in settings and None in settings
    # unicode names: accents, CJK, emoji; missing and empty names
    names = [a.get("name") for a in accounts]
    assert any(n and re.search(r"[À-ɏ]", n) for n in names)
    assert any(n and re.search(r"[\u4e00-\u9fff\uac00-\ud7af]", n) for n in names)
    assert any(n and re.search(r"[\U0001F300-\U0001FAFF]", n) for n in names)
    assert None in names and "" in names
    # undocumented attributes of every DynamoDB type
    assert _legacy_types(accounts, ACCOUNTS) >= {
        "S", "N", "B", "BOOL", "NULL", "SS", "NS", "BS", "L", "M", "M nested"
    }


def test_every_repository_variant_is_present(data: SeedData) -> None:
    # GIVEN a moderate data set  WHEN looking at its good repositories
    repos = good(data, REPOSITORIES)
    account_ids = {a["accountId"] for a in data.accounts}
    # THEN visibility comes as visibility or as legacy isPrivate (both values)
    assert {r["visibility"] for r in repos if "visibility" in r} == {"public", "private"}
    assert {r["isPrivate"] for r in repos if "isPrivate" in r} == {True, False}
    assert not any("visibility" in r and "isPrivate" in r for r in repos)
    # defaultBranch, sizeKb and archived are sometimes missing
    for attr in ("defaultBranch", "sizeKb", "archived"):
        assert any(attr not in r for r in repos) and any(attr in r for r in repos)
    assert {r["archived"] for r in repos if "archived" in r} == {True, False}
    # topics as SS, as L of S with duplicates, or absent
    topics = [r.get("topics") for r in repos]
    assert any(isinstance(t, set) for t in topics)
    assert any(isinstance(t, list) and len(t) != len(set(t)) for t in topics)
    assert None in topics
    # every timestamp form
    created = set().union(*(_timestamp_kinds(r["createdAt"]) for r in repos))
    assert {"epoch", "z", "offset", "fraction", "naive"} <= created
    assert any("updatedAt" not in r for r in repos)
    # owned by generated accounts, a few by unknown ones
    owners = Counter(r["accountId"] in account_ids for r in repos)
    assert owners[True] > 0.95 * len(repos) and owners[False] >= 1
    # several repositories per account for some owners
    assert max(Counter(r["accountId"] for r in repos).values()) >= 5
    assert _legacy_types(repos, REPOSITORIES) >= {
        "S", "N", "B", "BOOL", "NULL", "SS", "NS", "BS", "L", "M", "M nested"
    }


def test_case_colliding_repository_names(data: SeedData) -> None:
    # GIVEN the generated collisions
    by_id = {r["repoId"]: r for r in data.repositories}
    # THEN there are a few, each two good repositories of one owner whose names
    # differ only in letter case
    assert 3 <= len(data.collisions) <= 10
    for first, second in data.collisions:
        a, b = by_id[first], by_id[second]
        assert a["accountId"] == b["accountId"]
        assert a["name"] != b["name"] and a["name"].lower() == b["name"].lower()
        assert (REPOSITORIES, first) not in data.bad and (REPOSITORIES, second) not in data.bad
    # and no other two repositories of one owner share a lower-cased name
    keys = Counter((r["accountId"], r["name"].lower()) for r in data.repositories if "name" in r and "accountId" in r)
    assert sum(1 for n in keys.values() if n > 1) == len(data.collisions)
    assert max(keys.values()) == 2


# ---------------------------------------------------------------- bad data
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.05, 0.333, 1.0])
def test_bad_fraction_is_exact(fraction: float) -> None:
    # GIVEN a bad fraction  WHEN generating
    data = generate(300, 500, fraction, seed=3)
    # THEN exactly round(fraction * n) items of each table are flagged bad,
    # and every flagged key exists in its table
    per_table = Counter(table for table, _ in data.bad)
    assert per_table[ACCOUNTS] == round(fraction * 300)
    assert per_table[REPOSITORIES] == round(fraction * 500)
    keys = {ACCOUNTS: {a["accountId"] for a in data.accounts}, REPOSITORIES: {r["repoId"] for r in data.repositories}}
    assert all(key in keys[table] for table, key in data.bad)
    assert set(data.bad) == set(data.bad_cases)


def test_every_bad_reason_and_case_is_represented(data: SeedData) -> None:
    # GIVEN 5 % bad items of 400 accounts and 1200 repositories
    # THEN every quarantine reason, and every specific defect, is there
    assert set(data.bad.values()) == REASONS
    cases = {(table, case) for (table, _), case in data.bad_cases.items()}
    assert cases == {(ACCOUNTS, c) for c in ACCOUNT_CASES} | {(REPOSITORIES, c) for c in REPOSITORY_CASES}
    # and oversized items stay few (each weighs ~400 KB)
    assert 1 <= Counter(data.bad.values())["item_too_large"] <= 4


def test_bad_items_carry_their_defect(data: SeedData) -> None:
    # GIVEN the flagged items  THEN each shows the defect its case names
    items = {(ACCOUNTS, a["accountId"]): a for a in data.accounts}
    items |= {(REPOSITORIES, r["repoId"]): r for r in data.repositories}
    checks = {
        "email_missing": lambda i: "email" not in i,
        "email_empty": lambda i: i["email"].strip() == "",
        "email_no_at": lambda i: "@" not in i["email"],
        "email_two_at": lambda i: i["email"].count("@") == 2,
        "email_nothing_before_at": lambda i: i["email"].strip().startswith("@"),
        "email_nothing_after_at": lambda i: i["email"].strip().endswith("@"),
        "plan_unknown": lambda i: i["plan"].lower() not in {"free", "pro", "team", "enterprise"},
        "status_unknown": lambda i: i["status"] not in {"active", "suspended", "deleted"},
        "created_missing": lambda i: "createdAt" not in i,
        "created_garbage": lambda i: isinstance(i["createdAt"], str),
        "updated_garbage": lambda i: isinstance(i["updatedAt"], str),
        "team_ids_string": lambda i: isinstance(i["teamIds"], str),
        "settings_string": lambda i: isinstance(i["settings"], str),
        "account_id_missing": lambda i: "accountId" not in i,
        "name_missing": lambda i: "name" not in i,
        "size_kb_string": lambda i: isinstance(i["sizeKb"], str),
        "archived_string": lambda i: isinstance(i["archived"], str),
        "topics_string": lambda i: isinstance(i["topics"], str),
        "too_large": lambda i: item_size_bytes(i) > MAX_ITEM_BYTES - 2048,
    }
    for key, case in data.bad_cases.items():
        assert checks[case](items[key]), (key, case)


# ---------------------------------------------------------------- wire and size
def test_every_item_serialises_and_fits_in_400_kb(data: SeedData) -> None:
    # GIVEN every generated item, good or bad
    serializer = TypeSerializer()
    oversized = {key for key, reason in data.bad.items() if reason == "item_too_large"}
    for table, key_attr in ((ACCOUNTS, "accountId"), (REPOSITORIES, "repoId")):
        for item in data.tables[table]:
            # WHEN serialised as DynamoDB wants it  THEN nothing is refused
            wire = {k: serializer.serialize(v) for k, v in item.items()}
            assert wire[key_attr]["S"]
            # and the source item itself is under DynamoDB's limit, so it can be written
            size = item_size_bytes(item)
            assert size < MAX_ITEM_BYTES, (table, item[key_attr], size)
            if (table, item[key_attr]) in oversized:
                # close enough to the limit that its target cannot fit
                assert size > MAX_ITEM_BYTES - 1024
            else:
                assert size < 8 * 1024


def test_generating_8000_items_is_fast() -> None:
    # GIVEN the demo's size  WHEN generating  THEN it takes well under two seconds
    started = time.perf_counter()
    generate(2000, 6000, 0.02, seed=1)
    assert time.perf_counter() - started < 2.0


# ---------------------------------------------------------------- against the transform
@pytest.mark.parametrize("seed", [None, 1, 2])
def test_bad_items_quarantine_with_the_intended_reason_and_good_ones_transform(
    data: SeedData, seed: int | None
) -> None:
    transform_module = pytest.importorskip("shared.sc.transform")
    from shared.core.errors import QuarantineError

    # GIVEN every item of the shared data set, or of a smaller one with more bad data
    if seed is not None:
        data = generate(150, 450, 0.3, seed=seed)
    # WHEN transformed
    for table, key_attr in ((ACCOUNTS, "accountId"), (REPOSITORIES, "repoId")):
        for item in data.tables[table]:
            intended = data.bad.get((table, item[key_attr]))
            if intended is None or intended == "item_too_large":
                # THEN a good item transforms cleanly (an oversized one may be
                # refused by the transform, or left to the engine's size check)
                try:
                    targets = transform_module.transform(table, item)
                except QuarantineError as exc:
                    assert intended == "item_too_large" and exc.reason == "item_too_large", (item, exc)
                    continue
                if intended == "item_too_large":
                    assert max(item_size_bytes(t) for t in targets) > MAX_ITEM_BYTES
                else:
                    assert all(item_size_bytes(t) < MAX_ITEM_BYTES for t in targets)
            else:
                # THEN a bad item raises a QuarantineError with the intended reason
                with pytest.raises(QuarantineError) as caught:
                    transform_module.transform(table, item)
                assert caught.value.reason == intended, (data.bad_cases[(table, item[key_attr])], caught.value)
