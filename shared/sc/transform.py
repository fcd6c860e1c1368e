"""The sc migration's pure functions: sc-accounts + sc-repositories → sc-main.

Every function here is pure and deterministic (no I/O, no clock, inputs never
mutated, outputs share no mutable object with inputs). The contract is
the spec (`schema-changes.md`); the shape of each function is the
`shared.core.definition.MigrationDefinition` contract.

Forward: parse the legacy item into its model (which validates and
normalises), then build the target entities from it. Problems surface as
`shared.core.errors.QuarantineError` subclasses, never as other exceptions.

Backward: `reverse` rebuilds a legacy item from its target items, and
`normalise` says exactly what that rebuilt item is for a clean source item:
``reverse(t, transform(t, x)) == normalise(t, x)`` for every source item `x`
that transforms to at least one target item. Normalising means:

- accounts: email trimmed and lower-cased; ``name`` = the effective display
  name (so a missing or empty name becomes the email's local part); plan
  lower-cased; plan/status defaults written out; timestamps as whole epoch
  seconds (Decimal, floored); ``updatedAt`` present (defaulting to
  createdAt); ``teamIds`` a set, absent when empty; ``settings`` unchanged.
- repositories: ``visibility`` written out (``isPrivate`` dropped);
  ``defaultBranch``, ``sizeKb`` (Decimal), ``archived`` written out;
  ``topics`` a sorted list of distinct strings, ``[]`` when absent;
  timestamps as for accounts.
- undocumented attributes unchanged (deep copies).

Decisions where the spec leaves room (see also `shared.sc.models`):

- A ``deleted`` account yields ``[]`` before anything else is checked: its
  target items must go even if the rest of the row is bad.
- ``status`` is case-sensitive (the spec lower-cases the plan only).
- ``visibility`` is carried as written; no value is rejected.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Context, Decimal, DecimalException
from typing import Any

from boto3.dynamodb.conditions import Attr, ConditionBase
from boto3.dynamodb.types import DYNAMODB_CONTEXT

from shared.core.definition import Item, MigrationDefinition, SourceRef, SourceTable, TargetKey
from shared.core.errors import ConfigError, MissingAttribute, WrongType
from shared.sc.models import (
    Account,
    AccountProfile,
    Membership,
    Repository,
    RepositoryItem,
    parse,
    to_epoch,
)

ACCOUNTS = "sc-accounts"
REPOSITORIES = "sc-repositories"
SOURCES = (
    SourceTable(ACCOUNTS, ("accountId",), stack_parameters=("AccountsTableName", "AccountsStreamArn")),
    SourceTable(REPOSITORIES, ("repoId",), stack_parameters=("RepositoriesTableName", "RepositoriesStreamArn")),
)
TARGET_KEY_ATTRS = ("PK", "SK")

# settings key ↔ preferences key; any other key travels unchanged.
_PREFERENCE_NAMES = {"theme": "theme", "emailNotifications": "email_notifications"}
_SETTING_NAMES = {v: k for k, v in _PREFERENCE_NAMES.items()}

# Wide enough that dividing a 38-digit N by 1024 (= 2**10) is always exact.
_EXACT = Context(prec=80)


# --------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------


def transform(source_table: str, item: Item) -> list[Item]:
    """The target items of one source item, or raise a QuarantineError."""
    return _dispatch(_FORWARD, source_table)(item)


def _transform_account(item: Item) -> list[Item]:
    if item.get("status") == "deleted":
        return []
    account = parse(Account, item)
    # Built through `parse` too, so even a target-side surprise stays a
    # QuarantineError rather than a pydantic error.
    profile = parse(
        AccountProfile,
        {
            "account_id": account.accountId,
            "email": account.email,
            "display_name": account.display_name,
            "plan": account.plan,
            "status": account.status,
            "created_at": account.createdAt,
            "updated_at": account.updated,
            "preferences": _preferences(account),
            "legacy": _legacy(account),
        },
    )
    memberships = [
        parse(Membership, {"team_id": team, "account_id": account.accountId})
        for team in sorted(account.teamIds or ())
    ]
    return [profile.to_item(), *(m.to_item() for m in memberships)]


def _transform_repository(item: Item) -> list[Item]:
    repo = parse(Repository, item)
    target = parse(
        RepositoryItem,
        {
            "repo_id": repo.repoId,
            "account_id": repo.accountId,
            "name": repo.name,
            "visibility": repo.effective_visibility,
            "default_branch": repo.defaultBranch,
            "created_at": repo.createdAt,
            "updated_at": repo.updated,
            "topics": repo.topics,
            "size_bytes": _size_bytes(repo.sizeKb),
            "archived": repo.archived,
            "legacy": _legacy(repo),
        },
    )
    return [target.to_item()]


def _preferences(account: Account) -> dict[str, Any] | None:
    if account.settings is None:
        return None
    settings = account.settings
    preferences: dict[str, Any] = {}
    # Documented keys only when present: absent stays absent, not NULL.
    for legacy_name, target_name in _PREFERENCE_NAMES.items():
        if legacy_name in settings.model_fields_set:
            preferences[target_name] = getattr(settings, legacy_name)
    preferences.update(copy.deepcopy(settings.model_extra or {}))
    return preferences


def _legacy(model: Account | Repository) -> dict[str, Any] | None:
    return copy.deepcopy(model.model_extra) or None


def _size_bytes(size_kb: Decimal) -> Decimal:
    try:
        # DynamoDB's own context: traps anything that would not round-trip.
        return DYNAMODB_CONTEXT.multiply(size_kb, Decimal(1024))
    except DecimalException:
        raise WrongType(
            f"sizeKb {size_kb} × 1024 is not a number DynamoDB can store",
            attribute="sizeKb",
        ) from None


# --------------------------------------------------------------------------
# Keys and ownership
# --------------------------------------------------------------------------


def candidate_keys(source_table: str, item: Item) -> set[TargetKey]:
    """Every (PK, SK) this image may have produced; never raises.

    Lenient on purpose: it serves to remove what an image that no longer
    transforms (or a deleted account) left behind, so it looks only at the
    key-forming attributes and ignores everything else.
    """
    keys: set[TargetKey] = set()
    if not isinstance(item, dict):
        return keys
    account_id = item.get("accountId")
    if source_table == ACCOUNTS and isinstance(account_id, str):
        keys.add((f"ACCOUNT#{account_id}", "PROFILE"))
        teams = item.get("teamIds")
        if isinstance(teams, set | frozenset | list | tuple):
            keys.update(
                (f"TEAM#{team}", f"MEMBER#{account_id}") for team in teams if isinstance(team, str)
            )
    elif source_table == REPOSITORIES:
        name = item.get("name")
        if isinstance(account_id, str) and isinstance(name, str):
            keys.add((f"ACCOUNT#{account_id}", f"REPO#{name.lower()}"))
    return keys


def owner(target_item: Item) -> SourceRef | None:
    """The source item that owns a target item, from its key (and repo_id)."""
    pk, sk = target_item.get("PK"), target_item.get("SK")
    if not isinstance(pk, str) or not isinstance(sk, str):
        return None
    if pk.startswith("ACCOUNT#") and sk == "PROFILE":
        return _ref(ACCOUNTS, pk.removeprefix("ACCOUNT#"))
    if pk.startswith("TEAM#") and sk.startswith("MEMBER#"):
        return _ref(ACCOUNTS, sk.removeprefix("MEMBER#"))
    if pk.startswith("ACCOUNT#") and sk.startswith("REPO#"):
        # The key holds the *name*, which two repositories can share over
        # time; the id inside the item is what identifies the owner.
        repo_id = target_item.get("repo_id")
        return _ref(REPOSITORIES, repo_id) if isinstance(repo_id, str) else None
    return None


def _ref(table: str, key: str) -> SourceRef | None:
    return SourceRef(table, (key,)) if key else None


def owner_condition(ref: SourceRef) -> ConditionBase:
    """A DynamoDB condition true exactly for target items owned by `ref`."""
    (key,) = ref.key
    if ref.table == ACCOUNTS:
        return Attr("entity").is_in(["account", "membership"]) & Attr("account_id").eq(key)
    if ref.table == REPOSITORIES:
        return Attr("entity").eq("repository") & Attr("repo_id").eq(key)
    raise _unknown_table(ref.table)


# --------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------


def reverse(source_table: str, target_items: list[Item]) -> Item:
    """Rebuild the legacy item from all the target items its source owns.

    Raises MissingAttribute when the items cannot make a legacy item (an
    account without its profile item), WrongType and friends when a target
    item is malformed, and ValueError when an item belongs to another source
    item (a caller bug). An account with no target items at all has no legacy
    item to rebuild: the caller deletes it instead.
    """
    return _dispatch(_BACKWARD, source_table)(target_items)


def _reverse_account(target_items: list[Item]) -> Item:
    profiles = [i for i in target_items if i.get("entity") == "account"]
    others = [i for i in target_items if i.get("entity") != "account"]
    if len(profiles) != 1:
        raise MissingAttribute(
            f"an account needs exactly one profile item to go back, got {len(profiles)}",
            attribute="entity",
        )
    profile = parse(AccountProfile, profiles[0])
    memberships = [parse(Membership, i) for i in others if i.get("entity") == "membership"]
    strays = [i for i in others if i.get("entity") != "membership"] + [
        m for m in memberships if m.account_id != profile.account_id
    ]
    if strays:
        raise ValueError(f"items not owned by account {profile.account_id!r}: {strays!r:.200}")

    legacy = copy.deepcopy(profile.legacy or {})
    legacy.update(
        accountId=profile.account_id,
        email=profile.email,
        name=profile.display_name,
        plan=profile.plan,
        status=profile.status,
        createdAt=to_epoch(profile.created_at),
        updatedAt=to_epoch(profile.updated_at),
    )
    if profile.preferences is not None:
        legacy["settings"] = {
            _SETTING_NAMES.get(k, k): copy.deepcopy(v) for k, v in profile.preferences.items()
        }
    teams = {m.team_id for m in memberships}
    if teams:
        legacy["teamIds"] = teams
    return legacy


def _reverse_repository(target_items: list[Item]) -> Item:
    if len(target_items) != 1:
        raise MissingAttribute(
            f"a repository goes back from exactly one item, got {len(target_items)}",
            attribute="entity",
        )
    repo = parse(RepositoryItem, target_items[0])
    legacy = copy.deepcopy(repo.legacy or {})
    legacy.update(
        repoId=repo.repo_id,
        accountId=repo.account_id,
        name=repo.name,
        visibility=repo.visibility,
        defaultBranch=repo.default_branch,
        createdAt=to_epoch(repo.created_at),
        updatedAt=to_epoch(repo.updated_at),
        topics=list(repo.topics),
        sizeKb=_EXACT.divide(repo.size_bytes, Decimal(1024)),
        archived=repo.archived,
    )
    return legacy


def normalise(source_table: str, item: Item) -> Item:
    """What `reverse(transform(item))` gives back for a clean source item.

    Raises the same QuarantineError as `transform` for an item that does not
    transform. Defined from the source item alone (not via transform and
    reverse), so the round-trip law is a real check of both.
    """
    return _dispatch(_NORMALISE, source_table)(item)


def _normalise_account(item: Item) -> Item:
    account = parse(Account, item)
    result = copy.deepcopy(account.model_extra or {})
    result.update(
        accountId=account.accountId,
        email=account.email,
        name=account.display_name,
        plan=account.plan,
        status=account.status,
        createdAt=to_epoch(account.createdAt),
        updatedAt=to_epoch(account.updated),
    )
    if account.teamIds:
        result["teamIds"] = set(account.teamIds)
    if account.settings is not None:
        result["settings"] = copy.deepcopy(item["settings"])
    return result


def _normalise_repository(item: Item) -> Item:
    repo = parse(Repository, item)
    result = copy.deepcopy(repo.model_extra or {})
    result.update(
        repoId=repo.repoId,
        accountId=repo.accountId,
        name=repo.name,
        visibility=repo.effective_visibility,
        defaultBranch=repo.defaultBranch,
        createdAt=to_epoch(repo.createdAt),
        updatedAt=to_epoch(repo.updated),
        topics=list(repo.topics),
        sizeKb=repo.sizeKb,
        archived=repo.archived,
    )
    return result


# --------------------------------------------------------------------------
# Dispatch and the definition
# --------------------------------------------------------------------------

_FORWARD: dict[str, Callable[[Item], list[Item]]] = {
    ACCOUNTS: _transform_account,
    REPOSITORIES: _transform_repository,
}
_BACKWARD: dict[str, Callable[[list[Item]], Item]] = {
    ACCOUNTS: _reverse_account,
    REPOSITORIES: _reverse_repository,
}
_NORMALISE: dict[str, Callable[[Item], Item]] = {
    ACCOUNTS: _normalise_account,
    REPOSITORIES: _normalise_repository,
}


def _dispatch(table: dict[str, Any], source_table: str) -> Any:
    try:
        return table[source_table]
    except KeyError:
        raise _unknown_table(source_table) from None


def _unknown_table(name: str) -> ConfigError:
    known = ", ".join(t.name for t in SOURCES)
    return ConfigError(f"unknown source table {name!r} (the sc migration has: {known})")


def shared_key(key: tuple[str, ...]) -> bool:
    """Only a repository's key can be claimed by two source items (names that differ
    in case); a profile or a membership embeds its account's id."""
    return key[1].startswith("REPO#")


def reverse_items(source_table: str, owned: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a legacy item is rebuilt from: an account needs its profile (none: the
    account is gone); a repository with two live items is mid-move (the
    application wrote the new key and has not yet deleted the old one), so the
    most recently updated one stands for it, and the REMOVE that follows
    rebuilds it again from the survivor."""
    if source_table == REPOSITORIES and len(owned) > 1:
        return [max(owned, key=lambda i: (str(i.get("updated_at", "")), str(i["PK"]), str(i["SK"])))]
    if source_table == ACCOUNTS and not any(i.get("entity") == "account" for i in owned):
        return []
    return owned


def index_lookup(ref: SourceRef) -> tuple[str, str, str, str, str] | None:
    """sc-main's GSI1 lists an account's memberships and a repository's item."""
    (key,) = ref.key
    if ref.table == ACCOUNTS:
        return ("GSI1", "GSI1PK", f"ACCOUNT#{key}", "GSI1SK", "TEAM#")
    if ref.table == REPOSITORIES:
        return ("GSI1", "GSI1PK", f"REPO#{key}", "GSI1SK", "REPO#")
    return None


DEFINITION = MigrationDefinition(
    name="sc",
    sources=SOURCES,
    target_key_attrs=TARGET_KEY_ATTRS,
    transform=transform,
    candidate_keys=candidate_keys,
    owner=owner,
    owner_condition=owner_condition,
    reverse=reverse,
    shared_key=shared_key,
    reverse_items=reverse_items,
    index_lookup=index_lookup,
)
