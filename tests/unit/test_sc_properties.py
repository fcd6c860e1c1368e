"""Property tests of the sc transform over generated legacy items.

The strategies generate *clean* legacy items in every shape the spec allows
(epoch or ISO timestamps in many forms, mixed-case emails and plans,
isPrivate or visibility, SS or L topics, undocumented attributes of every
DynamoDB type, Unicode everywhere) and *bad* items made by breaking one rule
of a clean item. The laws:

- transform is deterministic and does not touch its input;
- its output is storable: boto3's TypeSerializer accepts every attribute;
- owner() of every output names the source item;
- candidate_keys(x) covers the keys of transform(x);
- reverse(transform(x)) == normalise(x);
- a bad item raises the QuarantineError subclass of the rule it breaks, and
  arbitrary junk raises nothing but QuarantineError.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import Binary, TypeSerializer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.core.definition import SourceRef
from shared.core.errors import (
    InvalidTimestamp,
    MissingAttribute,
    QuarantineError,
    WrongType,
)
from shared.sc import candidate_keys, normalise, owner, reverse, transform
from shared.sc.models import InvalidEmail, InvalidPlan, InvalidStatus

ACCOUNTS = "sc-accounts"
REPOS = "sc-repositories"

ACCOUNT_ATTRS = {
    "accountId", "email", "name", "plan", "status",
    "createdAt", "updatedAt", "teamIds", "settings",
}  # fmt: skip
REPO_ATTRS = {
    "repoId", "accountId", "name", "visibility", "isPrivate", "defaultBranch",
    "createdAt", "updatedAt", "topics", "sizeKb", "archived",
}  # fmt: skip

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------

# Any Unicode except surrogates (not valid UTF-8, so not storable in DynamoDB).
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
ids = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12)
word_chars = st.characters(categories=("L", "N"))

# DynamoDB numbers: up to 38 significant digits, exponent within its range.
numbers = st.one_of(
    st.integers(-(10**20), 10**20).map(Decimal),
    st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-(10**9), max_value=10**9),
)
binaries = st.binary(max_size=8).map(Binary)
scalars = st.one_of(text, numbers, st.booleans(), st.none(), binaries)
sets = st.one_of(
    st.sets(ids, min_size=1, max_size=4),
    st.sets(st.integers(-1000, 1000).map(Decimal), min_size=1, max_size=4),
    st.sets(st.binary(min_size=1, max_size=4).map(Binary), min_size=1, max_size=4),
)
dynamodb_values = st.recursive(
    st.one_of(scalars, sets),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(text, inner, max_size=3),
    ),
    max_leaves=8,
)


def undocumented(documented: set[str]) -> st.SearchStrategy[dict[str, Any]]:
    names = ids.filter(lambda n: n not in documented)
    return st.dictionaries(names, dynamodb_values, max_size=4)


def mixed_case(s: str) -> st.SearchStrategy[str]:
    flips = st.lists(st.booleans(), min_size=len(s), max_size=len(s))
    return flips.map(lambda f: "".join(c.upper() if u else c for c, u in zip(s, f, strict=True)))


# Timestamps: datetimes far enough from the ends of the calendar that any
# offset stays in range, written as epoch seconds or in many ISO forms.
moments = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.none()
)
offsets = st.one_of(
    st.none(),
    st.just(UTC),
    st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m))),
)


@st.composite
def iso_timestamps(draw: st.DrawFn) -> str:
    moment = draw(moments).replace(tzinfo=draw(offsets))
    basic = draw(st.booleans())
    sep = draw(st.sampled_from(["T", " "])) if not basic else "T"
    date = moment.strftime("%Y%m%d" if basic else "%Y-%m-%d")
    if draw(st.booleans()) and not basic:
        return date  # date only
    clock = moment.strftime("%H%M%S" if basic else "%H:%M:%S")
    fraction = draw(st.sampled_from(["", f".{moment.microsecond:06d}", ".5", ".123456789"]))
    zone = ""
    if moment.tzinfo is UTC:
        zone = draw(st.sampled_from(["Z", "+00:00"]))
    elif moment.tzinfo is not None:
        zone = moment.strftime("%z")  # +HHMM
        if not basic:
            zone = zone[:3] + ":" + zone[3:]
    return f"{date}{sep}{clock}{fraction}{zone}"


epoch_timestamps = st.one_of(
    st.integers(-2_000_000_000, 7_000_000_000).map(Decimal),
    st.decimals(min_value=-2_000_000_000, max_value=7_000_000_000, places=3),
    st.integers(0, 2_000_000_000),  # a plain Python int, as a caller may pass
)
timestamps = st.one_of(iso_timestamps(), epoch_timestamps)


@st.composite
def emails(draw: st.DrawFn) -> str:
    local = draw(st.text(word_chars, min_size=1, max_size=8))
    domain = draw(st.text(word_chars, min_size=1, max_size=8))
    email = draw(mixed_case(f"{local}@{domain}.com"))
    pad = st.sampled_from(["", " ", "  ", "\t"])
    return draw(pad) + email + draw(pad)


def optional(items: dict[str, Any], name: str, strategy: Any, draw: st.DrawFn) -> None:
    if draw(st.booleans()):
        items[name] = draw(strategy)


# --------------------------------------------------------------------------
# Clean items
# --------------------------------------------------------------------------


@st.composite
def clean_accounts(draw: st.DrawFn, *, allow_deleted: bool = False) -> dict[str, Any]:
    item: dict[str, Any] = draw(undocumented(ACCOUNT_ATTRS))
    item |= {"accountId": draw(ids), "email": draw(emails()), "createdAt": draw(timestamps)}
    optional(item, "name", text, draw)
    optional(item, "plan", st.sampled_from(["free", "pro", "team", "enterprise"]).flatmap(mixed_case), draw)
    statuses = ["active", "suspended"] + (["deleted"] if allow_deleted else [])
    optional(item, "status", st.sampled_from(statuses), draw)
    optional(item, "updatedAt", timestamps, draw)
    optional(item, "teamIds", st.sets(ids, min_size=1, max_size=4), draw)
    settings_keys = ids.filter(
        lambda k: k not in {"theme", "emailNotifications", "email_notifications"}
    )
    if draw(st.booleans()):
        prefs: dict[str, Any] = draw(st.dictionaries(settings_keys, dynamodb_values, max_size=3))
        optional(prefs, "theme", text, draw)
        optional(prefs, "emailNotifications", st.booleans(), draw)
        item["settings"] = prefs
    return item


@st.composite
def clean_repositories(draw: st.DrawFn) -> dict[str, Any]:
    item: dict[str, Any] = draw(undocumented(REPO_ATTRS))
    item |= {
        "repoId": draw(ids),
        "accountId": draw(ids),
        "name": draw(ids),
        "createdAt": draw(timestamps),
    }
    optional(item, "visibility", st.sampled_from(["public", "private"]), draw)
    optional(item, "isPrivate", st.booleans(), draw)
    optional(item, "defaultBranch", text, draw)
    optional(item, "updatedAt", timestamps, draw)
    optional(item, "topics", st.one_of(st.sets(text, min_size=1, max_size=4), st.lists(text, max_size=5)), draw)
    optional(item, "sizeKb", numbers, draw)
    optional(item, "archived", st.booleans(), draw)
    return item


clean_items = st.one_of(
    clean_accounts().map(lambda i: (ACCOUNTS, i)),
    clean_repositories().map(lambda i: (REPOS, i)),
)


def source_ref(table: str, item: dict[str, Any]) -> SourceRef:
    key = "accountId" if table == ACCOUNTS else "repoId"
    return SourceRef(table, (item[key],))


# --------------------------------------------------------------------------
# Laws of clean items
# --------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(clean_items)
def test_transform_is_deterministic_and_leaves_its_input_alone(case: tuple[str, dict[str, Any]]) -> None:
    # GIVEN a clean legacy item and a deep copy of it
    table, item = case
    before = copy.deepcopy(item)
    # WHEN it is transformed twice
    first, second = transform(table, item), transform(table, copy.deepcopy(item))
    # THEN both runs agree and the input is unchanged
    assert first == second
    assert item == before


@PROPERTY_SETTINGS
@given(clean_items)
def test_every_output_is_storable_in_dynamodb(case: tuple[str, dict[str, Any]]) -> None:
    # GIVEN the target items of a clean legacy item
    table, item = case
    serializer = TypeSerializer()
    for target in transform(table, item):
        # WHEN boto3 serialises each attribute
        # THEN it accepts it (no float, no empty set, no unknown type)
        for value in target.values():
            serializer.serialize(value)
        # AND the key and index attributes are strings
        for name in ("PK", "SK", "GSI1PK", "GSI1SK", "entity"):
            assert isinstance(target[name], str)


@PROPERTY_SETTINGS
@given(clean_items)
def test_every_output_is_owned_by_its_source_item(case: tuple[str, dict[str, Any]]) -> None:
    # GIVEN the target items of a clean legacy item
    table, item = case
    targets = transform(table, item)
    # THEN each names that item as its owner
    assert targets  # clean, non-deleted items always produce something
    assert {owner(t) for t in targets} == {source_ref(table, item)}


@PROPERTY_SETTINGS
@given(clean_items)
def test_candidate_keys_cover_the_keys_of_the_output(case: tuple[str, dict[str, Any]]) -> None:
    # GIVEN a clean legacy item
    table, item = case
    # WHEN its candidate keys and its real output keys are compared
    produced = {(t["PK"], t["SK"]) for t in transform(table, item)}
    # THEN the candidates are a superset
    assert produced <= candidate_keys(table, item)


@PROPERTY_SETTINGS
@given(clean_items)
def test_reverse_of_transform_is_normalise(case: tuple[str, dict[str, Any]]) -> None:
    # GIVEN a clean legacy item
    table, item = case
    # WHEN it goes forward and back
    back = reverse(table, transform(table, item))
    # THEN the legacy table receives exactly the normalised item
    assert back == normalise(table, item)


@PROPERTY_SETTINGS
@given(clean_items)
def test_normalise_is_a_fixed_point_of_the_round_trip(case: tuple[str, dict[str, Any]]) -> None:
    # GIVEN a normalised legacy item
    table, item = case
    normal = normalise(table, item)
    # WHEN it is transformed again
    # THEN it produces the same target items and normalises to itself
    assert transform(table, normal) == transform(table, item)
    assert normalise(table, normal) == normal


@PROPERTY_SETTINGS
@given(clean_accounts(allow_deleted=True))
def test_deleted_accounts_produce_nothing_but_keep_their_candidate_keys(item: dict[str, Any]) -> None:
    # GIVEN an account that becomes deleted
    deleted = item | {"status": "deleted"}
    # THEN it produces no target items, and its candidate keys cover the live version's
    assert transform(ACCOUNTS, deleted) == []
    live = transform(ACCOUNTS, item | {"status": "active"})
    assert {(t["PK"], t["SK"]) for t in live} <= candidate_keys(ACCOUNTS, deleted)


# --------------------------------------------------------------------------
# Bad items
# --------------------------------------------------------------------------

not_a_string = st.one_of(numbers, st.booleans(), binaries, st.lists(text, max_size=2))
not_a_timestamp = st.one_of(
    st.booleans(),
    st.none(),
    binaries,
    st.lists(text, max_size=2),
    st.text(st.characters(categories=("L",)), min_size=1, max_size=8),  # never ISO
    st.integers(10**13, 10**20).map(Decimal),  # far beyond year 9999
)

# (table, attribute, strategy of bad values, expected error)
BREAKAGES: list[tuple[str, str, st.SearchStrategy[Any], type[QuarantineError]]] = [
    (ACCOUNTS, "email", st.just(None), InvalidEmail),
    (ACCOUNTS, "email", st.text(st.characters(exclude_characters="@"), max_size=10), InvalidEmail),
    (ACCOUNTS, "email", st.tuples(text, text).map(lambda p: f"{p[0]}@@{p[1]}"), InvalidEmail),
    (ACCOUNTS, "plan", text.filter(lambda p: p.lower() not in {"free", "pro", "team", "enterprise"}), InvalidPlan),
    (ACCOUNTS, "status", text.filter(lambda s: s not in {"active", "suspended", "deleted"}), InvalidStatus),
    (ACCOUNTS, "createdAt", not_a_timestamp, InvalidTimestamp),
    (ACCOUNTS, "updatedAt", not_a_timestamp, InvalidTimestamp),
    (ACCOUNTS, "teamIds", st.one_of(ids, st.lists(ids, max_size=2), st.just({Decimal(1)})), WrongType),
    (ACCOUNTS, "name", not_a_string, WrongType),
    (ACCOUNTS, "settings", st.one_of(text, st.lists(text, max_size=2)), WrongType),
    (ACCOUNTS, "settings", not_a_string.map(lambda v: {"theme": v}), WrongType),
    (ACCOUNTS, "settings", st.one_of(text, numbers).map(lambda v: {"emailNotifications": v}), WrongType),
    (REPOS, "accountId", st.just(""), MissingAttribute),
    (REPOS, "name", st.just(""), MissingAttribute),
    (REPOS, "createdAt", not_a_timestamp, InvalidTimestamp),
    (REPOS, "sizeKb", st.one_of(text, st.booleans()), WrongType),
    (REPOS, "topics", st.one_of(text, st.lists(numbers, min_size=1, max_size=2)), WrongType),
    (REPOS, "archived", st.one_of(text, numbers), WrongType),
    (REPOS, "isPrivate", st.one_of(text, numbers), WrongType),
    (REPOS, "visibility", st.one_of(numbers, st.booleans()), WrongType),
]


@st.composite
def bad_items(draw: st.DrawFn) -> tuple[str, dict[str, Any], type[QuarantineError]]:
    table, attribute, values, error = draw(st.sampled_from(BREAKAGES))
    item = draw(clean_accounts() if table == ACCOUNTS else clean_repositories())
    if attribute == "createdAt" and draw(st.booleans()):
        item.pop("createdAt")  # missing createdAt is invalid too
    else:
        item[attribute] = draw(values)
    return table, item, error


@PROPERTY_SETTINGS
@given(bad_items())
def test_an_item_breaking_one_rule_raises_that_rules_quarantine_error(
    case: tuple[str, dict[str, Any], type[QuarantineError]],
) -> None:
    # GIVEN a clean item with exactly one rule broken
    table, item, error = case
    # WHEN transformed
    try:
        transform(table, item)
    except QuarantineError as exc:
        # THEN the error is that rule's subclass, with a message a person can act on
        assert isinstance(exc, error), f"{type(exc).__name__}: {exc}"
        assert exc.attribute and exc.message
    else:
        raise AssertionError(f"{item!r} transformed cleanly")


junk_values = st.one_of(dynamodb_values, st.sampled_from(["", "deleted", "x@y", "PRO"]))


@PROPERTY_SETTINGS
@given(
    st.sampled_from([ACCOUNTS, REPOS]),
    st.dictionaries(
        st.sampled_from(sorted(ACCOUNT_ATTRS | REPO_ATTRS)), junk_values, max_size=8
    ),
)
def test_junk_items_raise_only_quarantine_errors(table: str, item: dict[str, Any]) -> None:
    # GIVEN an item whose documented attributes hold arbitrary values
    # WHEN transformed and normalised
    for call in (transform, normalise, candidate_keys):
        try:
            call(table, item)
        # THEN the only exception is a QuarantineError (candidate_keys never raises)
        except QuarantineError:
            assert call is not candidate_keys
