"""Example-based tests of the sc transform, one per rule of schema-changes.md.

Each table row, default and quarantine reason of the spec has a test here;
the property tests (test_sc_properties.py) cover the space between them.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.conditions import ConditionBase, ConditionExpressionBuilder
from boto3.dynamodb.types import Binary
from pydantic import ValidationError

from shared.core.definition import SourceRef, get_definition
from shared.core.errors import (
    ConfigError,
    InvalidTimestamp,
    MissingAttribute,
    QuarantineError,
    WrongType,
)
from shared.sc import (
    DEFINITION,
    candidate_keys,
    normalise,
    owner,
    owner_condition,
    reverse,
    transform,
)
from shared.sc.models import InvalidEmail, InvalidPlan, InvalidStatus

ACCOUNTS = "sc-accounts"
REPOS = "sc-repositories"
MARCH_1_NOON = Decimal(1709294400)  # 2024-03-01T12:00:00Z


def account(**changes: Any) -> dict[str, Any]:
    """A clean legacy account; `changes` override it (None value = remove)."""
    item: dict[str, Any] = {
        "accountId": "a1",
        "email": "alice@example.com",
        "createdAt": MARCH_1_NOON,
    }
    return _apply(item, changes)


def repo(**changes: Any) -> dict[str, Any]:
    """A clean legacy repository; `changes` override it (None value = remove)."""
    item: dict[str, Any] = {
        "repoId": "r1",
        "accountId": "a1",
        "name": "Widget",
        "createdAt": MARCH_1_NOON,
    }
    return _apply(item, changes)


_REMOVE = None


def _apply(item: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for name, value in changes.items():
        if value is _REMOVE:
            item.pop(name, None)
        else:
            item[name] = value
    return item


def profile_of(item: dict[str, Any]) -> dict[str, Any]:
    (profile,) = [t for t in transform(ACCOUNTS, item) if t["SK"] == "PROFILE"]
    return profile


def repo_item_of(item: dict[str, Any]) -> dict[str, Any]:
    (target,) = transform(REPOS, item)
    return target


def keys(items: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(t["PK"], t["SK"]) for t in items}


# --------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------


def test_sc_definition_is_registered_with_its_tables_and_functions() -> None:
    # GIVEN the sc package (imported above)
    # WHEN the engine looks the migration up by name
    definition = get_definition("sc")
    # THEN it finds the sc definition, wired to these functions and tables
    assert definition is DEFINITION
    assert definition.source("sc-accounts").key_attrs == ("accountId",)
    assert definition.source("sc-repositories").key_attrs == ("repoId",)
    assert definition.target_key_attrs == ("PK", "SK")
    assert definition.transform is transform and definition.reverse is reverse
    assert definition.candidate_keys is candidate_keys and definition.owner is owner
    assert definition.owner_condition is owner_condition


def test_unknown_source_table_is_a_config_error_not_a_quarantine() -> None:
    # GIVEN a table the migration does not have
    # WHEN it is transformed / reversed / normalised
    # THEN the engine gets a ConfigError naming the table
    for call in (
        lambda: transform("sc-teams", account()),
        lambda: reverse("sc-teams", []),
        lambda: normalise("sc-teams", account()),
        lambda: owner_condition(SourceRef("sc-teams", ("x",))),
    ):
        with pytest.raises(ConfigError, match="sc-teams"):
            call()


# --------------------------------------------------------------------------
# Account → profile item
# --------------------------------------------------------------------------


def test_profile_item_of_a_minimal_account_has_every_attribute_and_default() -> None:
    # GIVEN an account with only the required attributes
    # WHEN it is transformed
    items = transform(ACCOUNTS, account())
    # THEN exactly one profile item comes out, defaults filled in
    assert items == [
        {
            "PK": "ACCOUNT#a1",
            "SK": "PROFILE",
            "entity": "account",
            "account_id": "a1",
            "email": "alice@example.com",
            "display_name": "alice",
            "plan": "free",
            "status": "active",
            "created_at": "2024-03-01T12:00:00Z",
            "updated_at": "2024-03-01T12:00:00Z",
            "GSI1PK": "EMAIL#alice@example.com",
            "GSI1SK": "ACCOUNT#a1",
        }
    ]


def test_email_is_trimmed_and_lower_cased_everywhere_it_appears() -> None:
    # GIVEN a legacy email with mixed case and surrounding spaces
    item = account(email="  Alice.Smith@Example.COM\t")
    # WHEN transformed
    profile = profile_of(item)
    # THEN the email, the GSI key and the default display name use the normal form
    assert profile["email"] == "alice.smith@example.com"
    assert profile["GSI1PK"] == "EMAIL#alice.smith@example.com"
    assert profile["display_name"] == "alice.smith"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Alice Smith", "Alice Smith"),  # present: kept as written
        ("", "alice"),  # empty: falls back to the email's local part
        (_REMOVE, "alice"),  # missing: same
        ("  ", "  "),  # non-empty (spaces are text): kept
    ],
)
def test_display_name_is_name_else_email_local_part(name: str | None, expected: str) -> None:
    # GIVEN an account whose name is present, empty or missing
    # WHEN transformed
    # THEN display_name follows the spec's rule
    assert profile_of(account(name=name, email="Alice@Example.com"))["display_name"] == expected


@pytest.mark.parametrize(
    ("plan", "expected"),
    [("free", "free"), ("PRO", "pro"), ("Team", "team"), ("eNtErPrIsE", "enterprise"), (_REMOVE, "free")],
)
def test_plan_is_lower_cased_and_defaults_to_free(plan: str | None, expected: str) -> None:
    # GIVEN a plan in any letter case, or none
    # WHEN transformed
    # THEN the plan is lower-case, and missing means free
    assert profile_of(account(plan=plan))["plan"] == expected


@pytest.mark.parametrize(
    ("status", "expected"), [("active", "active"), ("suspended", "suspended"), (_REMOVE, "active")]
)
def test_status_is_copied_and_defaults_to_active(status: str | None, expected: str) -> None:
    # GIVEN a status or none
    # WHEN transformed
    # THEN it is copied; missing means active
    assert profile_of(account(status=status))["status"] == expected


def test_updated_at_defaults_to_created_at_and_is_converted_when_present() -> None:
    # GIVEN one account without updatedAt and one with an ISO updatedAt
    without = profile_of(account(createdAt="2024-01-02T03:04:05Z"))
    with_ = profile_of(account(updatedAt="2024-05-06T07:08:09+02:00"))
    # THEN the first repeats createdAt, the second is converted to UTC
    assert without["created_at"] == without["updated_at"] == "2024-01-02T03:04:05Z"
    assert with_["updated_at"] == "2024-05-06T05:08:09Z"


def test_settings_become_preferences_with_renamed_keys_and_other_keys_unchanged() -> None:
    # GIVEN settings with both documented keys and an undocumented one
    settings = {"theme": "dark", "emailNotifications": False, "fontSize": Decimal(14)}
    # WHEN transformed
    profile = profile_of(account(settings=settings))
    # THEN theme stays, emailNotifications is renamed, the rest is unchanged
    assert profile["preferences"] == {
        "theme": "dark",
        "email_notifications": False,
        "fontSize": Decimal(14),
    }


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"theme": "light"}, {"theme": "light"}),
        ({"emailNotifications": True}, {"email_notifications": True}),
        ({}, {}),
    ],
)
def test_preferences_hold_only_the_settings_keys_present(
    settings: dict[str, Any], expected: dict[str, Any]
) -> None:
    # GIVEN settings with some documented keys missing
    # WHEN transformed
    # THEN missing keys are absent from preferences (not NULL)
    assert profile_of(account(settings=settings))["preferences"] == expected


def test_preferences_are_absent_when_settings_are_absent() -> None:
    # GIVEN an account without settings
    # WHEN transformed
    # THEN the profile has no preferences attribute at all
    assert "preferences" not in profile_of(account())


def test_undocumented_attributes_of_every_type_go_to_legacy_unchanged() -> None:
    # GIVEN an account with undocumented attributes of every DynamoDB type
    extras = {
        "nickname": "Ally",
        "score": Decimal("12.50"),
        "beta": True,
        "deletedBy": None,
        "avatar": Binary(b"\x89PNG"),
        "tags": {"x", "y"},
        "lucky": {Decimal(7), Decimal(13)},
        "keys": {Binary(b"k1"), Binary(b"k2")},
        "history": ["a", Decimal(1), {"nested": [None, False]}],
        "address": {"city": "Zürich", "geo": {"lat": Decimal("47.37")}},
        "isPrivate": True,  # only documented for repositories
    }
    # WHEN transformed
    profile = profile_of(account() | extras)
    # THEN each lands in legacy, under its own name, with its own value
    assert profile["legacy"] == extras


def test_legacy_is_absent_when_every_attribute_is_documented() -> None:
    # GIVEN an account using every documented attribute and nothing else
    item = account(
        name="A",
        plan="pro",
        status="active",
        updatedAt=MARCH_1_NOON,
        teamIds={"t1"},
        settings={"theme": "dark"},
    )
    # WHEN transformed
    # THEN there is no legacy attribute
    assert "legacy" not in profile_of(item)


def test_transform_does_not_share_mutable_values_with_the_source() -> None:
    # GIVEN an account with nested undocumented values and settings
    item = account(extra={"list": [1]}, settings={"theme": "dark", "more": {"a": [1]}})
    profile = profile_of(item)
    # WHEN the output is mutated
    profile["legacy"]["extra"]["list"].append(2)
    profile["preferences"]["more"]["a"].append(2)
    # THEN the source item is untouched
    assert item["extra"] == {"list": [1]}
    assert item["settings"]["more"] == {"a": [1]}


# --------------------------------------------------------------------------
# Account → membership items, deleted accounts
# --------------------------------------------------------------------------


def test_each_team_id_gives_one_membership_item() -> None:
    # GIVEN an account in two teams
    items = transform(ACCOUNTS, account(teamIds={"t2", "t1"}))
    # WHEN transformed
    # THEN one profile and one membership per team come out, in a stable order
    assert [(t["PK"], t["SK"]) for t in items] == [
        ("ACCOUNT#a1", "PROFILE"),
        ("TEAM#t1", "MEMBER#a1"),
        ("TEAM#t2", "MEMBER#a1"),
    ]
    assert items[1] == {
        "PK": "TEAM#t1",
        "SK": "MEMBER#a1",
        "entity": "membership",
        "team_id": "t1",
        "account_id": "a1",
        "GSI1PK": "ACCOUNT#a1",
        "GSI1SK": "TEAM#t1",
    }


def test_account_without_team_ids_gives_only_its_profile() -> None:
    # GIVEN an account without teamIds
    # WHEN transformed
    # THEN only the profile item comes out
    assert keys(transform(ACCOUNTS, account())) == {("ACCOUNT#a1", "PROFILE")}


def test_deleted_account_gives_no_items_even_if_otherwise_invalid() -> None:
    # GIVEN deleted accounts, one clean and one whose email is broken
    clean = account(status="deleted", teamIds={"t1"})
    broken = account(status="deleted", email="nobody")
    # WHEN transformed
    # THEN neither produces any target item (its old items must go)
    assert transform(ACCOUNTS, clean) == []
    assert transform(ACCOUNTS, broken) == []


# --------------------------------------------------------------------------
# Repository → repository item
# --------------------------------------------------------------------------


def test_repository_item_of_a_minimal_repository_has_every_attribute_and_default() -> None:
    # GIVEN a repository with only the required attributes
    # WHEN transformed
    # THEN the single target item carries every attribute, defaults filled in
    assert transform(REPOS, repo()) == [
        {
            "PK": "ACCOUNT#a1",
            "SK": "REPO#widget",
            "entity": "repository",
            "repo_id": "r1",
            "account_id": "a1",
            "name": "Widget",
            "visibility": "public",
            "default_branch": "main",
            "created_at": "2024-03-01T12:00:00Z",
            "updated_at": "2024-03-01T12:00:00Z",
            "topics": [],
            "size_bytes": 0,
            "archived": False,
            "GSI1PK": "REPO#r1",
            "GSI1SK": "REPO#r1",
        }
    ]


def test_repository_key_lower_cases_the_name_but_the_name_keeps_its_case() -> None:
    # GIVEN a repository name in mixed case
    target = repo_item_of(repo(name="MyWidget-Ü"))
    # THEN the sort key is lower-cased, the name attribute is not
    assert target["SK"] == "REPO#mywidget-ü"
    assert target["name"] == "MyWidget-Ü"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"visibility": "private"}, "private"),
        ({"visibility": "public"}, "public"),
        ({"isPrivate": True}, "private"),
        ({"isPrivate": False}, "public"),
        ({}, "public"),
        ({"visibility": "public", "isPrivate": True}, "public"),  # visibility wins
        ({"visibility": "internal"}, "internal"),  # carried as written
    ],
)
def test_visibility_comes_from_visibility_else_is_private_else_public(
    changes: dict[str, Any], expected: str
) -> None:
    # GIVEN visibility, isPrivate, both or neither
    # WHEN transformed
    # THEN visibility follows the spec's precedence
    assert repo_item_of(repo(**changes))["visibility"] == expected


def test_is_private_counts_as_documented_and_never_goes_to_legacy() -> None:
    # GIVEN a legacy repository with isPrivate and one undocumented attribute
    target = repo_item_of(repo(isPrivate=True, stars=Decimal(3)))
    # THEN legacy holds only the undocumented attribute
    assert target["legacy"] == {"stars": Decimal(3)}


def test_default_branch_is_copied_and_defaults_to_main() -> None:
    # GIVEN repositories with and without defaultBranch
    # THEN default_branch is copied, or main
    assert repo_item_of(repo(defaultBranch="trunk"))["default_branch"] == "trunk"
    assert repo_item_of(repo())["default_branch"] == "main"


@pytest.mark.parametrize(
    "topics",
    [{"rust", "cli", "db"}, ["rust", "cli", "db", "cli"], ["db", "rust", "cli"]],
)
def test_topics_from_a_set_or_a_list_become_a_sorted_distinct_list(topics: Any) -> None:
    # GIVEN topics as SS, or as L of S with duplicates
    # WHEN transformed
    # THEN topics is the sorted list of distinct topics
    assert repo_item_of(repo(topics=topics))["topics"] == ["cli", "db", "rust"]


def test_topics_default_to_an_empty_list() -> None:
    # GIVEN a repository without topics, or with an empty list
    # THEN topics is []
    assert repo_item_of(repo())["topics"] == []
    assert repo_item_of(repo(topics=[]))["topics"] == []


@pytest.mark.parametrize(
    ("size_kb", "expected"),
    [(Decimal(0), 0), (Decimal(3), 3072), (Decimal("1.5"), 1536), (7, 7168), (_REMOVE, 0)],
)
def test_size_bytes_is_size_kb_times_1024(size_kb: Any, expected: int) -> None:
    # GIVEN sizeKb as an integer, a fraction, a Python int, or missing
    size_bytes = repo_item_of(repo(sizeKb=size_kb))["size_bytes"]
    # THEN size_bytes is sizeKb × 1024, as an exact number (never a float)
    assert size_bytes == expected
    assert isinstance(size_bytes, Decimal | int) and not isinstance(size_bytes, bool)


def test_archived_is_copied_and_defaults_to_false() -> None:
    # GIVEN repositories archived, not archived, and silent about it
    # THEN archived is copied, or False
    assert repo_item_of(repo(archived=True))["archived"] is True
    assert repo_item_of(repo(archived=False))["archived"] is False
    assert repo_item_of(repo())["archived"] is False


def test_repository_legacy_is_absent_when_there_is_nothing_undocumented() -> None:
    # GIVEN a repository with every documented attribute and nothing else
    item = repo(
        visibility="private",
        isPrivate=True,
        defaultBranch="dev",
        updatedAt=MARCH_1_NOON,
        topics=["a"],
        sizeKb=Decimal(1),
        archived=True,
    )
    # THEN there is no legacy attribute
    assert "legacy" not in repo_item_of(item)


def test_repository_timestamps_convert_like_account_timestamps() -> None:
    # GIVEN a repository with ISO createdAt and epoch updatedAt
    target = repo_item_of(repo(createdAt="2024-03-01T12:00:00+01:00", updatedAt=Decimal(0)))
    # THEN both are ISO-8601 UTC with Z
    assert target["created_at"] == "2024-03-01T11:00:00Z"
    assert target["updated_at"] == "1970-01-01T00:00:00Z"


# --------------------------------------------------------------------------
# Timestamps
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("2024-03-01T12:00:00Z", "2024-03-01T12:00:00Z"),
        ("2024-03-01T12:00:00+00:00", "2024-03-01T12:00:00Z"),
        ("2024-03-01T14:00:00+02:00", "2024-03-01T12:00:00Z"),
        ("2024-03-01T06:30:00-05:30", "2024-03-01T12:00:00Z"),
        ("2024-03-01T23:30:00-01:00", "2024-03-02T00:30:00Z"),  # day rolls over
        ("2024-03-01T12:00:00.999999Z", "2024-03-01T12:00:00Z"),  # fraction dropped
        ("2024-03-01T12:00:00.5+01:00", "2024-03-01T11:00:00Z"),
        ("2024-03-01T12:00:00.123456789Z", "2024-03-01T12:00:00Z"),  # nanoseconds
        ("2024-03-01T12:00:00,25Z", "2024-03-01T12:00:00Z"),  # comma fraction
        ("2024-03-01T12:00:00", "2024-03-01T12:00:00Z"),  # no offset = UTC
        ("2024-03-01 12:00:00", "2024-03-01T12:00:00Z"),  # space separator
        ("2024-03-01 12:00:00+01:00", "2024-03-01T11:00:00Z"),
        ("20240301T120000Z", "2024-03-01T12:00:00Z"),  # basic format
        ("20240301T140000+0200", "2024-03-01T12:00:00Z"),
        ("2024-03-01T12:00", "2024-03-01T12:00:00Z"),  # minutes only
        ("2024-03-01", "2024-03-01T00:00:00Z"),  # date only
        ("2024-02-29T23:59:59Z", "2024-02-29T23:59:59Z"),  # leap day
        ("0999-06-01T00:00:00Z", "0999-06-01T00:00:00Z"),  # 4-digit year kept
        (MARCH_1_NOON, "2024-03-01T12:00:00Z"),
        (int(MARCH_1_NOON), "2024-03-01T12:00:00Z"),  # Python int
        (Decimal("1709294400.999"), "2024-03-01T12:00:00Z"),  # fraction dropped
        (Decimal("1.7092944E+9"), "2024-03-01T12:00:00Z"),  # exponent form
        (Decimal(0), "1970-01-01T00:00:00Z"),
        (Decimal("-1.5"), "1969-12-31T23:59:58Z"),  # before 1970: floored like ISO
    ],
)
def test_timestamps_become_iso_utc_with_z_and_whole_seconds(source: Any, expected: str) -> None:
    # GIVEN createdAt as epoch seconds or any ISO-8601 form
    # WHEN transformed
    profile = profile_of(account(createdAt=source))
    # THEN created_at (and the defaulted updated_at) is UTC, Z, second precision
    assert profile["created_at"] == expected
    assert profile["updated_at"] == expected


@pytest.mark.parametrize(
    "bad",
    [
        "yesterday",
        "",
        "1709294400",  # a numeric *string* is S, and not ISO-8601
        "2024-13-01T00:00:00Z",
        "2024-03-01T25:00:00Z",
        "0001-01-01T00:00:00+01:00",  # before year 1 once in UTC
        True,  # BOOL is not N
        None,  # explicit NULL
        ["2024-03-01"],
        {"epoch": Decimal(1)},
        Binary(b"2024-03-01"),
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("1E+20"),  # far beyond year 9999
        Decimal("-1E+15"),
    ],
)
def test_unusable_timestamps_quarantine_as_invalid_timestamp(bad: Any) -> None:
    # GIVEN createdAt, or updatedAt, that is neither N nor parsable ISO-8601
    cases = [
        (ACCOUNTS, account() | {"createdAt": bad}),
        (ACCOUNTS, account() | {"updatedAt": bad}),
        (REPOS, repo() | {"updatedAt": bad}),
    ]
    for table, item in cases:
        # WHEN transformed
        with pytest.raises(InvalidTimestamp) as caught:
            transform(table, item)
        # THEN the reason names the attribute
        assert caught.value.attribute in {"createdAt", "updatedAt"}
        assert caught.value.attribute in caught.value.message


def test_missing_created_at_quarantines_but_missing_updated_at_does_not() -> None:
    # GIVEN an account and a repository without createdAt
    for table, item in ((ACCOUNTS, account(createdAt=_REMOVE)), (REPOS, repo(createdAt=_REMOVE))):
        # WHEN transformed
        with pytest.raises(InvalidTimestamp, match="createdAt is missing") as caught:
            transform(table, item)
        # THEN the reason is invalid_timestamp on createdAt
        assert caught.value.attribute == "createdAt"
        assert caught.value.reason == "invalid_timestamp"


# --------------------------------------------------------------------------
# Quarantine reasons
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "email",
    [_REMOVE, "", "   ", "alice.example.com", "a@b@c", "@example.com", "alice@", " @x", "x@ ", "@"],
)
def test_bad_email_quarantines_as_invalid_email(email: str | None) -> None:
    # GIVEN an email missing, empty, or without exactly one '@' with text around it
    # WHEN transformed
    with pytest.raises(InvalidEmail) as caught:
        transform(ACCOUNTS, account(email=email))
    # THEN the reason is invalid_email on email
    assert caught.value.attribute == "email"
    assert caught.value.reason == "invalid_email"


def test_null_email_counts_as_missing_email() -> None:
    # GIVEN an email attribute holding NULL
    # WHEN transformed
    with pytest.raises(InvalidEmail, match="missing") as caught:
        transform(ACCOUNTS, account() | {"email": None})
    # THEN the reason is invalid_email on email
    assert caught.value.attribute == "email"
    assert caught.value.reason == "invalid_email"


def test_invalid_email_message_shows_the_bad_value_truncated() -> None:
    # GIVEN a long email without '@'
    bad = "x" * 500
    # WHEN transformed
    with pytest.raises(InvalidEmail) as caught:
        transform(ACCOUNTS, account(email=bad))
    # THEN the message shows the start of the value but stays short
    assert "xxxxxxxx" in caught.value.message
    assert len(caught.value.message) < 200


@pytest.mark.parametrize("email", ["a@b", "  A@B  ", "first.last+tag@sub.example.co.uk"])
def test_minimal_and_rich_emails_are_accepted(email: str) -> None:
    # GIVEN emails with exactly one '@' and text on both sides
    # WHEN transformed
    # THEN they are accepted, normalised
    assert profile_of(account(email=email))["email"] == email.strip().lower()


@pytest.mark.parametrize("plan", ["gold", "", " pro", "pro ", "free-trial"])
def test_plan_outside_allowed_values_quarantines_as_invalid_plan(plan: str) -> None:
    # GIVEN a plan that is not allowed even after lower-casing
    # WHEN transformed
    with pytest.raises(InvalidPlan) as caught:
        transform(ACCOUNTS, account(plan=plan))
    # THEN the reason is invalid_plan, with the value in the message
    assert caught.value.attribute == "plan"
    assert repr(plan) in caught.value.message


@pytest.mark.parametrize("status", ["banned", "", "Active", "DELETED", "suspended "])
def test_status_outside_allowed_values_quarantines_as_invalid_status(status: str) -> None:
    # GIVEN a status that is not exactly one of the allowed values (case-sensitive)
    # WHEN transformed
    with pytest.raises(InvalidStatus) as caught:
        transform(ACCOUNTS, account(status=status))
    # THEN the reason is invalid_status
    assert caught.value.attribute == "status"
    assert repr(status) in caught.value.message


@pytest.mark.parametrize("missing", ["accountId", "name", "repoId"])
def test_repository_without_required_ids_quarantines_as_missing_attribute(missing: str) -> None:
    # GIVEN a repository without accountId, name (or repoId)
    for item in (repo(**{missing: _REMOVE}), repo(**{missing: ""})):
        # WHEN transformed
        with pytest.raises(MissingAttribute) as caught:
            transform(REPOS, item)
        # THEN the reason is missing_attribute on that attribute
        assert caught.value.attribute == missing
        assert missing in caught.value.message


def test_account_with_empty_account_id_quarantines_as_missing_attribute() -> None:
    # GIVEN an account whose accountId is empty
    # WHEN transformed
    # THEN it is missing_attribute
    with pytest.raises(MissingAttribute):
        transform(ACCOUNTS, account(accountId=""))


WRONG_TYPES_ACCOUNT = [
    ("teamIds", "t1"),  # the spec's own example: a string, not SS
    ("teamIds", ["t1", "t2"]),  # L, not SS
    ("teamIds", {Decimal(1)}),  # NS
    ("teamIds", None),
    ("accountId", Decimal(1)),
    ("email", Decimal(1)),
    ("name", Decimal(5)),
    ("name", None),
    ("plan", True),
    ("plan", None),
    ("status", None),
    ("status", ["active"]),
    ("settings", "dark"),
    ("settings", ["theme"]),
    ("settings", None),
    ("settings", {"theme": Decimal(1)}),
    ("settings", {"theme": None}),
    ("settings", {"emailNotifications": "true"}),
    ("settings", {"emailNotifications": Decimal(1)}),
]


@pytest.mark.parametrize(("attribute", "value"), WRONG_TYPES_ACCOUNT)
def test_account_attribute_of_the_wrong_type_quarantines_as_wrong_type(
    attribute: str, value: Any
) -> None:
    # GIVEN an account attribute whose type does not match the spec's table
    # WHEN transformed
    with pytest.raises(WrongType) as caught:
        transform(ACCOUNTS, account() | {attribute: value})
    # THEN the reason is wrong_type, naming the attribute (dotted when nested)
    assert caught.value.attribute is not None
    assert caught.value.attribute.split(".")[0] == attribute
    assert attribute in caught.value.message


WRONG_TYPES_REPO = [
    ("sizeKb", "12"),  # the spec's own example: a string, not N
    ("sizeKb", True),
    ("sizeKb", Decimal("NaN")),
    ("topics", "rust"),
    ("topics", ["rust", Decimal(1)]),
    ("topics", {Decimal(1)}),
    ("archived", "false"),
    ("archived", Decimal(0)),
    ("isPrivate", "true"),
    ("visibility", True),
    ("defaultBranch", Decimal(1)),
    ("defaultBranch", None),
    ("name", Decimal(1)),
    ("accountId", {"a1"}),
    ("repoId", Decimal(1)),
]


@pytest.mark.parametrize(("attribute", "value"), WRONG_TYPES_REPO)
def test_repository_attribute_of_the_wrong_type_quarantines_as_wrong_type(
    attribute: str, value: Any
) -> None:
    # GIVEN a repository attribute whose type does not match the spec's table
    # WHEN transformed
    with pytest.raises(WrongType) as caught:
        transform(REPOS, repo() | {attribute: value})
    # THEN the reason is wrong_type, naming the attribute and the bad value
    assert caught.value.attribute == attribute
    assert attribute in caught.value.message


def test_wrong_type_message_names_expected_and_actual_dynamodb_types() -> None:
    # GIVEN sizeKb held as a string
    with pytest.raises(WrongType) as caught:
        transform(REPOS, repo(sizeKb="12"))
    # THEN a person reads what was expected and what was found
    assert caught.value.message == "sizeKb must be N, got S '12'"
    assert str(caught.value) == "wrong_type: sizeKb must be N, got S '12'"


def test_several_problems_are_all_named_and_the_first_decides_the_reason() -> None:
    # GIVEN an account with a bad email and a bad plan
    # WHEN transformed
    with pytest.raises(InvalidEmail) as caught:
        transform(ACCOUNTS, account(email="nope", plan="gold"))
    # THEN the message mentions both, so one fix clears them all
    assert "email" in caught.value.message and "'gold'" in caught.value.message


def test_settings_key_that_collides_with_the_renamed_key_is_quarantined() -> None:
    # GIVEN settings holding both emailNotifications and email_notifications
    item = account(settings={"emailNotifications": True, "email_notifications": "x"})
    # WHEN transformed
    with pytest.raises(QuarantineError) as caught:
        transform(ACCOUNTS, item)
    # THEN it is quarantined (one would overwrite the other) with an actionable reason
    assert caught.value.attribute == "settings"
    assert "email_notifications" in caught.value.message


def test_no_pydantic_error_ever_escapes() -> None:
    # GIVEN items with every documented attribute of a wrong type at once
    junk = {"x": 1}
    bad_account = {a: junk for a in ("accountId", "email", "name", "plan", "status", "createdAt")}
    bad_repo = {a: junk for a in ("repoId", "accountId", "name", "topics", "sizeKb", "archived")}
    for table, item in ((ACCOUNTS, bad_account), (REPOS, bad_repo), (ACCOUNTS, {}), (REPOS, {})):
        # WHEN transformed
        try:
            transform(table, item)
        except ValidationError as exc:  # pragma: no cover - the failure being tested
            pytest.fail(f"pydantic error escaped: {exc}")
        # THEN only QuarantineErrors come out
        except QuarantineError:
            pass
        else:  # pragma: no cover
            pytest.fail("a junk item transformed")


# --------------------------------------------------------------------------
# Unicode
# --------------------------------------------------------------------------


def test_unicode_ids_names_and_emails_travel_intact() -> None:
    # GIVEN an account with non-ASCII id, name, email and settings
    item = account(
        accountId="账户-1",
        email="  ÉLODIE@Exämple.ORG ",
        name="Élodie 🚀",
        teamIds={"équipe"},
        settings={"theme": "黒"},
    )
    # WHEN transformed
    profile, membership = transform(ACCOUNTS, item)
    # THEN text is lower-cased by Unicode rules and otherwise unchanged
    assert profile["PK"] == "ACCOUNT#账户-1"
    assert profile["email"] == "élodie@exämple.org"
    assert profile["display_name"] == "Élodie 🚀"
    assert profile["preferences"] == {"theme": "黒"}
    assert (membership["PK"], membership["SK"]) == ("TEAM#équipe", "MEMBER#账户-1")


def test_unicode_repository_name_is_lower_cased_in_the_key_only() -> None:
    # GIVEN a repository with a non-ASCII name
    target = repo_item_of(repo(name="ÜBER-Ω", topics=["ß", "α", "a"]))
    # THEN the key lower-cases it and topics sort by code point
    assert target["SK"] == "REPO#über-ω"
    assert target["name"] == "ÜBER-Ω"
    assert target["topics"] == ["a", "ß", "α"]


# --------------------------------------------------------------------------
# Key moves: what must be removed when a source item changes
# --------------------------------------------------------------------------


def stale_keys(table: str, old: dict[str, Any], new: dict[str, Any]) -> set[tuple[str, str]]:
    """Keys the old image may have produced that the new image no longer produces."""
    return candidate_keys(table, old) - keys(transform(table, new))


def test_repository_rename_moves_its_key() -> None:
    # GIVEN a repository renamed from Widget to Gadget
    old, new = repo(name="Widget"), repo(name="Gadget")
    # THEN the old key goes and the new one appears
    assert stale_keys(REPOS, old, new) == {("ACCOUNT#a1", "REPO#widget")}
    assert keys(transform(REPOS, new)) == {("ACCOUNT#a1", "REPO#gadget")}


def test_repository_rename_in_letter_case_only_keeps_its_key() -> None:
    # GIVEN a repository renamed from Widget to WIDGET
    old, new = repo(name="Widget"), repo(name="WIDGET")
    # THEN nothing is removed: the key is the same, only the name changes
    assert stale_keys(REPOS, old, new) == set()
    assert repo_item_of(new)["name"] == "WIDGET"


def test_repository_transfer_moves_its_key() -> None:
    # GIVEN a repository transferred from a1 to a2
    old, new = repo(accountId="a1"), repo(accountId="a2")
    # THEN the key under a1 goes and one under a2 appears
    assert stale_keys(REPOS, old, new) == {("ACCOUNT#a1", "REPO#widget")}
    assert keys(transform(REPOS, new)) == {("ACCOUNT#a2", "REPO#widget")}


def test_removing_a_team_id_removes_only_that_membership() -> None:
    # GIVEN an account leaving team t2
    old, new = account(teamIds={"t1", "t2"}), account(teamIds={"t1"})
    # THEN only the t2 membership is stale
    assert stale_keys(ACCOUNTS, old, new) == {("TEAM#t2", "MEMBER#a1")}


def test_removing_the_last_team_id_removes_every_membership() -> None:
    # GIVEN an account whose teamIds attribute disappears
    old, new = account(teamIds={"t1", "t2"}), account()
    # THEN both memberships are stale, the profile is not
    assert stale_keys(ACCOUNTS, old, new) == {("TEAM#t1", "MEMBER#a1"), ("TEAM#t2", "MEMBER#a1")}


def test_account_becoming_deleted_removes_everything_the_old_image_produced() -> None:
    # GIVEN an account that becomes deleted
    old = account(teamIds={"t1"})
    new = account(teamIds={"t1"}, status="deleted")
    # THEN every item of the old image is stale
    assert stale_keys(ACCOUNTS, old, new) == keys(transform(ACCOUNTS, old))


def test_candidate_keys_of_a_deleted_account_still_name_its_items() -> None:
    # GIVEN an already-deleted account image (e.g. the old image of a source delete)
    image = account(status="deleted", teamIds={"t1"})
    # THEN its candidate keys still cover what a live version of it produced
    assert candidate_keys(ACCOUNTS, image) == {
        ("ACCOUNT#a1", "PROFILE"),
        ("TEAM#t1", "MEMBER#a1"),
    }


def test_candidate_keys_cover_an_image_that_does_not_transform() -> None:
    # GIVEN images that would be quarantined
    bad_account = account(email="broken", teamIds=["t1", Decimal(2)])
    bad_repo = repo(sizeKb="big", name="Widget")
    # THEN candidate_keys still names every key they could have produced
    assert candidate_keys(ACCOUNTS, bad_account) == {
        ("ACCOUNT#a1", "PROFILE"),
        ("TEAM#t1", "MEMBER#a1"),
    }
    assert candidate_keys(REPOS, bad_repo) == {("ACCOUNT#a1", "REPO#widget")}


@pytest.mark.parametrize(
    ("table", "image"),
    [
        (ACCOUNTS, {}),
        (ACCOUNTS, {"accountId": Decimal(1), "teamIds": {"t"}}),
        (REPOS, {"accountId": "a1"}),
        (REPOS, {"name": "x"}),
        (REPOS, {"accountId": None, "name": None}),
        ("sc-unknown", account()),
        (ACCOUNTS, "not a dict"),
    ],
)
def test_candidate_keys_never_raise(table: str, image: Any) -> None:
    # GIVEN images without usable key attributes (or an unknown table)
    # WHEN candidate keys are asked for
    # THEN the answer is empty, not an exception
    assert candidate_keys(table, image) == set()


def test_candidate_keys_read_a_team_id_string_as_nothing() -> None:
    # GIVEN an account whose teamIds is a plain string
    # THEN only the profile key is a candidate (no TEAM#t, TEAM#1 ... per character)
    assert candidate_keys(ACCOUNTS, account(teamIds="t1")) == {("ACCOUNT#a1", "PROFILE")}


# --------------------------------------------------------------------------
# Ownership
# --------------------------------------------------------------------------


def test_every_target_item_is_owned_by_its_source_item() -> None:
    # GIVEN the target items of an account and of a repository
    account_items = transform(ACCOUNTS, account(teamIds={"t1", "t2"}))
    repo_items = transform(REPOS, repo())
    # THEN owner() names the source item of each
    assert {owner(t) for t in account_items} == {SourceRef("sc-accounts", ("a1",))}
    assert {owner(t) for t in repo_items} == {SourceRef("sc-repositories", ("r1",))}


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"PK": "ACCOUNT#a#1", "SK": "PROFILE"}, SourceRef("sc-accounts", ("a#1",))),
        ({"PK": "TEAM#t1", "SK": "MEMBER#a1"}, SourceRef("sc-accounts", ("a1",))),
        ({"PK": "ACCOUNT#a1", "SK": "REPO#x", "repo_id": "r9"}, SourceRef("sc-repositories", ("r9",))),
        ({"PK": "ACCOUNT#a1", "SK": "REPO#x"}, None),  # no repo_id: nobody's
        ({"PK": "ACCOUNT#a1", "SK": "REPO#x", "repo_id": Decimal(1)}, None),
        ({"PK": "ACCOUNT#a1", "SK": "SETTINGS"}, None),
        ({"PK": "ACCOUNT#", "SK": "PROFILE"}, None),
        ({"PK": "TEAM#t1", "SK": "META"}, None),
        ({"PK": "MIGRATION#state", "SK": "x"}, None),
        ({"PK": Decimal(1), "SK": "PROFILE"}, None),
        ({}, None),
    ],
)
def test_owner_is_derived_from_the_key_and_repo_id(
    item: dict[str, Any], expected: SourceRef | None
) -> None:
    # GIVEN a target item by its key (and repo_id)
    # WHEN its owner is asked for
    # THEN it follows the spec's ownership rules, None for anything else
    assert owner(item) == expected


def render(condition: ConditionBase) -> str:
    """A condition as DynamoDB would read it, placeholders filled in."""
    built = ConditionExpressionBuilder().build_expression(condition)
    text = built.condition_expression
    values = {k: repr(v) for k, v in built.attribute_value_placeholders.items()}
    for placeholder, value in (built.attribute_name_placeholders | values).items():
        text = re.sub(re.escape(placeholder) + r"\b", value, text)
    return text


def test_owner_condition_of_an_account_matches_its_profile_and_memberships() -> None:
    # GIVEN an account's source ref
    # WHEN its owner condition is built
    text = render(owner_condition(SourceRef("sc-accounts", ("a1",))))
    # THEN it requires an account entity and the account id
    assert text == "(entity IN ('account', 'membership') AND account_id = 'a1')"


def test_owner_condition_of_a_repository_matches_its_repo_id() -> None:
    # GIVEN a repository's source ref
    # WHEN its owner condition is built
    text = render(owner_condition(SourceRef("sc-repositories", ("r1",))))
    # THEN it requires a repository entity with that repo_id
    assert text == "(entity = 'repository' AND repo_id = 'r1')"


# --------------------------------------------------------------------------
# Going back
# --------------------------------------------------------------------------


def test_reverse_rebuilds_an_account_from_its_profile_and_memberships() -> None:
    # GIVEN the target items of a legacy account with every feature
    item = account(
        email=" Alice@Example.com ",
        plan="PRO",
        createdAt="2024-03-01T13:00:00+01:00",
        updatedAt=Decimal("1709294460.5"),
        teamIds={"t1", "t2"},
        settings={"theme": "dark", "emailNotifications": True, "lang": "fr"},
        nickname="Ally",
        avatar=Binary(b"\x00"),
    )
    targets = transform(ACCOUNTS, item)
    # WHEN reversed
    legacy = reverse(ACCOUNTS, targets)
    # THEN the legacy table receives the normalised values, legacy attributes by name
    assert legacy == {
        "accountId": "a1",
        "email": "alice@example.com",
        "name": "alice",
        "plan": "pro",
        "status": "active",
        "createdAt": MARCH_1_NOON,
        "updatedAt": MARCH_1_NOON + 60,
        "teamIds": {"t1", "t2"},
        "settings": {"theme": "dark", "emailNotifications": True, "lang": "fr"},
        "nickname": "Ally",
        "avatar": Binary(b"\x00"),
    }
    assert legacy == normalise(ACCOUNTS, item)


def test_reverse_of_an_account_without_memberships_or_settings_omits_them() -> None:
    # GIVEN a minimal account's single profile item
    legacy = reverse(ACCOUNTS, transform(ACCOUNTS, account()))
    # THEN teamIds and settings are absent (DynamoDB has no empty set)
    assert "teamIds" not in legacy and "settings" not in legacy
    assert legacy["name"] == "alice"  # the effective display name is written out


def test_reverse_rebuilds_a_repository_with_visibility_and_size_kb() -> None:
    # GIVEN a legacy repository using isPrivate, SS topics and fractional sizeKb
    item = repo(
        isPrivate=True,
        topics={"b", "a"},
        sizeKb=Decimal("2.5"),
        createdAt="2024-03-01T12:00:00.9Z",
        stars=Decimal(3),
    )
    # WHEN transformed and reversed
    legacy = reverse(REPOS, transform(REPOS, item))
    # THEN visibility replaces isPrivate, topics are a list, sizeKb comes back
    assert legacy == {
        "repoId": "r1",
        "accountId": "a1",
        "name": "Widget",
        "visibility": "private",
        "defaultBranch": "main",
        "createdAt": MARCH_1_NOON,
        "updatedAt": MARCH_1_NOON,
        "topics": ["a", "b"],
        "sizeKb": Decimal("2.5"),
        "archived": False,
        "stars": Decimal(3),
    }
    assert legacy == normalise(REPOS, item)


def test_reverse_accepts_items_written_by_the_new_application() -> None:
    # GIVEN a repository item written after cutover: offset timestamp, an
    # attribute the legacy table has no place for, and membership-free keys
    target = repo_item_of(repo()) | {
        "updated_at": "2024-03-01T14:00:05+02:00",
        "stars_cache": Decimal(9),
    }
    # WHEN reversed
    legacy = reverse(REPOS, [target])
    # THEN timestamps go back as epoch seconds and unknown attributes are ignored
    assert legacy["updatedAt"] == MARCH_1_NOON + 5
    assert "stars_cache" not in legacy


def test_reverse_of_an_account_without_profile_is_a_quarantine() -> None:
    # GIVEN only a membership item (its profile is gone or not yet written)
    membership = transform(ACCOUNTS, account(teamIds={"t1"}))[1]
    # WHEN reversed
    # THEN it is a MissingAttribute naming the missing profile
    with pytest.raises(MissingAttribute, match="profile"):
        reverse(ACCOUNTS, [membership])


def test_reverse_refuses_items_of_another_account() -> None:
    # GIVEN a profile of a1 and a membership of a2
    profile = profile_of(account())
    foreign = transform(ACCOUNTS, account(accountId="a2", teamIds={"t1"}))[1]
    # WHEN reversed together
    # THEN the caller bug is reported, not silently merged
    with pytest.raises(ValueError, match="not owned"):
        reverse(ACCOUNTS, [profile, foreign])


def test_reverse_of_a_malformed_target_item_is_a_quarantine() -> None:
    # GIVEN a repository item whose size_bytes the new application wrote as a string
    target = repo_item_of(repo()) | {"size_bytes": "1024"}
    # WHEN reversed
    # THEN it is a WrongType, not a pydantic error
    with pytest.raises(WrongType, match="size_bytes"):
        reverse(REPOS, [target])


def test_normalise_materialises_defaults_and_normal_forms() -> None:
    # GIVEN a sparse legacy account and repository
    # WHEN normalised
    # THEN defaults are written out and values take their normal form
    assert normalise(ACCOUNTS, account(email="Bob@X.org ", plan="TEAM")) == {
        "accountId": "a1",
        "email": "bob@x.org",
        "name": "bob",
        "plan": "team",
        "status": "active",
        "createdAt": MARCH_1_NOON,
        "updatedAt": MARCH_1_NOON,
    }
    assert normalise(REPOS, repo()) == {
        "repoId": "r1",
        "accountId": "a1",
        "name": "Widget",
        "visibility": "public",
        "defaultBranch": "main",
        "createdAt": MARCH_1_NOON,
        "updatedAt": MARCH_1_NOON,
        "topics": [],
        "sizeKb": 0,
        "archived": False,
    }


def test_reverse_items_pick_what_a_legacy_item_is_rebuilt_from() -> None:
    from shared.sc.transform import reverse_items

    # GIVEN an account's memberships without its profile, and a repository mid-move (two live items)
    memberships = [{"PK": "ACCOUNT#a1", "SK": "TEAM#t1", "entity": "membership"}]
    old = {"PK": "ACCOUNT#a1", "SK": "REPO#old", "updated_at": "2026-01-01T00:00:00Z"}
    new = {"PK": "ACCOUNT#a1", "SK": "REPO#new", "updated_at": "2026-01-02T00:00:00Z"}
    profile = {"PK": "ACCOUNT#a1", "SK": "PROFILE", "entity": "account"}
    # THEN the account is gone (nothing to rebuild it from), the newest copy stands for the repository,
    # and a complete account is rebuilt from everything it owns
    assert reverse_items("sc-accounts", memberships) == []
    assert reverse_items("sc-repositories", [old, new]) == [new]
    assert reverse_items("sc-accounts", [profile, *memberships]) == [profile, *memberships]
