"""A second, tiny migration that exists only to keep the engine generic.

`toy-users` (hash key `userId`) → one target item per user, keyed
``USER#<userId>`` / ``META``. Nothing in it is shared with the sc migration,
so an engine test that passes with both does not depend on sc's shape.
"""

from __future__ import annotations

from typing import Any

from boto3.dynamodb.conditions import Attr, ConditionBase

from shared.core.definition import (
    Item,
    MigrationDefinition,
    SourceRef,
    SourceTable,
    TargetKey,
    register,
)
from shared.core.errors import MissingAttribute

USERS = SourceTable("toy-users", ("userId",))


def transform(source_table: str, item: Item) -> list[Item]:
    user_id = item.get("userId")
    if not isinstance(user_id, str) or not user_id:
        raise MissingAttribute(f"userId is missing or not S: {user_id!r:.40}", attribute="userId")
    return [{"PK": f"USER#{user_id}", "SK": "META", "user_id": user_id, "nick": item.get("nick", "")}]


def candidate_keys(source_table: str, item: Item) -> set[TargetKey]:
    user_id = item.get("userId")
    return {(f"USER#{user_id}", "META")} if isinstance(user_id, str) else set()


def owner(target_item: Item) -> SourceRef | None:
    pk = target_item.get("PK")
    if isinstance(pk, str) and pk.startswith("USER#") and target_item.get("SK") == "META":
        return SourceRef(USERS.name, (pk.removeprefix("USER#"),))
    return None


def owner_condition(ref: SourceRef) -> ConditionBase:
    return Attr("user_id").eq(ref.key[0])


def reverse(source_table: str, target_items: list[Item]) -> Item:
    (target,) = target_items
    user: dict[str, Any] = {"userId": target["user_id"], "nick": target["nick"]}
    return user


DEFINITION = register(
    MigrationDefinition(
        name="toy",
        sources=(USERS,),
        target_key_attrs=("PK", "SK"),
        transform=transform,
        candidate_keys=candidate_keys,
        owner=owner,
        owner_condition=owner_condition,
        reverse=reverse,
    )
)
