"""A live application workload on the legacy tables, for tests, demo and benchmarks.

`Workload` keeps a model of what it wrote and produces random operations of
every kind the migration has to survive: inserts, updates, repository
renames (including case-only renames onto a sibling's name, i.e. key
collisions) and transfers, team ids added and removed, accounts turning
`deleted`, deletes, and writes of bad data that must be quarantined.
Operations are plain `put`/`delete` requests on one item, so a runner can
apply them synchronously (boto3) or asynchronously (aiobotocore), at a rate.

It is reproducible from its seed. It does not honour the cutover router by
itself: the cutover tests wrap it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from shared.core.definition import Item

ACCOUNTS = "sc-accounts"
REPOS = "sc-repositories"
THEMES = ["dark", "light", "solarized"]
WORDS = ["api", "web", "core", "tools", "docs", "infra", "app", "lib", "cli", "données", "工具", "🚀rocket"]


@dataclass
class Operation:
    kind: str  # the workload's name for it (insert_account, rename_repo, ...)
    table: str  # logical table
    action: str  # "put" or "delete"
    key: dict[str, str]
    item: Item | None = None  # for put


@dataclass
class Workload:
    seed: int = 1
    bad_fraction: float = 0.03
    clock_skew_s: int = 0  # shifts the timestamps the application writes
    accounts: dict[str, Item] = field(default_factory=dict)
    repos: dict[str, Item] = field(default_factory=dict)
    counter: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # ---------------------------------------------------------------- makers
    def _now(self) -> int:
        return 1_730_000_000 + self.counter * 7 + self.clock_skew_s

    def _timestamp(self) -> Any:
        now = self._now()
        if self.rng.random() < 0.3:
            from datetime import UTC, datetime

            return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.123+00:00")
        return Decimal(now)

    def new_account(self, account_id: str | None = None) -> Item:
        self.counter += 1
        account_id = account_id or f"acct-{self.seed}-{self.counter:06d}"
        item: Item = {
            "accountId": account_id,
            "email": f"  User{self.counter}@Example.COM ",
            "plan": self.rng.choice(["free", "PRO", "Team", "enterprise"]),
            "createdAt": self._timestamp(),
        }
        if self.rng.random() < 0.7:
            item["name"] = self.rng.choice(["Zoë", "Ann", "李雷", "Bob 🚀"])
        if self.rng.random() < 0.6:
            item["teamIds"] = {f"team-{self.rng.randrange(40)}" for _ in range(self.rng.randint(1, 3))}
        if self.rng.random() < 0.5:
            item["settings"] = {"theme": self.rng.choice(THEMES), "emailNotifications": self.rng.random() < 0.5}
        if self.rng.random() < 0.3:
            item["legacyScore"] = Decimal(self.rng.randrange(1000))
        return item

    def new_repo(self, account_id: str, name: str | None = None) -> Item:
        self.counter += 1
        item: Item = {
            "repoId": f"repo-{self.seed}-{self.counter:06d}",
            "accountId": account_id,
            "name": name or f"{self.rng.choice(WORDS)}-{self.counter}",
            "createdAt": self._timestamp(),
        }
        if self.rng.random() < 0.5:
            item["visibility"] = self.rng.choice(["public", "private"])
        else:
            item["isPrivate"] = self.rng.random() < 0.5
        if self.rng.random() < 0.5:
            item["topics"] = [self.rng.choice(WORDS) for _ in range(self.rng.randint(0, 3))]
        if self.rng.random() < 0.5:
            item["sizeKb"] = Decimal(self.rng.randrange(10_000))
        return item

    def _bad(self, item: Item, table: str) -> Item:
        bad = dict(item)
        if table == ACCOUNTS:
            choice = self.rng.choice(["email", "plan", "createdAt", "teamIds"])
            if choice == "email":
                bad["email"] = "no-at-sign"
            elif choice == "plan":
                bad["plan"] = "platinum"
            elif choice == "createdAt":
                bad["createdAt"] = "yesterday"
            else:
                bad["teamIds"] = "team-1"
        else:
            choice = self.rng.choice(["sizeKb", "createdAt"])
            if choice == "sizeKb":
                bad["sizeKb"] = "12"
            else:
                bad.pop("createdAt", None)
        return bad

    # ------------------------------------------------------------ operations
    def next(self) -> Operation:
        """One random operation, applied to the model as it is returned."""
        roll = self.rng.random()
        if not self.accounts or roll < 0.12:
            return self._put(ACCOUNTS, "insert_account", self.new_account())
        if not self.repos or roll < 0.30:
            owner = self.rng.choice(list(self.accounts))
            return self._put(REPOS, "insert_repo", self.new_repo(owner))
        if roll < 0.40:
            item = dict(self.accounts[self.rng.choice(list(self.accounts))])
            item["updatedAt"] = self._timestamp()
            item["plan"] = self.rng.choice(["free", "pro", "TEAM"])
            return self._put(ACCOUNTS, "update_account", item)
        if roll < 0.50:
            item = dict(self.accounts[self.rng.choice(list(self.accounts))])
            teams = set(item.get("teamIds", set()) if isinstance(item.get("teamIds"), set) else set())
            if teams and self.rng.random() < 0.5:
                teams.discard(self.rng.choice(sorted(teams)))
                kind = "remove_team"
            else:
                teams.add(f"team-{self.rng.randrange(40)}")
                kind = "add_team"
            if teams:
                item["teamIds"] = teams
            else:
                item.pop("teamIds", None)
            return self._put(ACCOUNTS, kind, item)
        if roll < 0.62:
            item = dict(self.repos[self.rng.choice(list(self.repos))])
            if self.rng.random() < 0.15:
                # A case-only variant of a sibling's name: a target key collision.
                siblings = [r["name"] for r in self.repos.values()
                            if r.get("accountId") == item.get("accountId") and r is not item
                            and isinstance(r.get("name"), str)]
                item["name"] = self.rng.choice(siblings).swapcase() if siblings else f"renamed-{self.counter}"
            else:
                item["name"] = f"{self.rng.choice(WORDS)}-r{self.counter}"
            self.counter += 1
            return self._put(REPOS, "rename_repo", item)
        if roll < 0.70:
            item = dict(self.repos[self.rng.choice(list(self.repos))])
            item["accountId"] = self.rng.choice(list(self.accounts))
            return self._put(REPOS, "transfer_repo", item)
        if roll < 0.78:
            item = dict(self.repos[self.rng.choice(list(self.repos))])
            item["sizeKb"] = Decimal(self.rng.randrange(100_000))
            item["archived"] = self.rng.random() < 0.2
            return self._put(REPOS, "update_repo", item)
        if roll < 0.82:
            item = dict(self.accounts[self.rng.choice(list(self.accounts))])
            item["status"] = "deleted"
            return self._put(ACCOUNTS, "delete_status_account", item)
        if roll < 0.86:
            item = dict(self.accounts[self.rng.choice(list(self.accounts))])
            item["status"] = self.rng.choice(["active", "suspended"])
            return self._put(ACCOUNTS, "reactivate_account", item)
        if roll < 0.93:
            if self.rng.random() < 0.5 and self.repos:
                repo_id = self.rng.choice(list(self.repos))
                self.repos.pop(repo_id)
                return Operation("delete_repo", REPOS, "delete", {"repoId": repo_id})
            account_id = self.rng.choice(list(self.accounts))
            self.accounts.pop(account_id)
            return Operation("delete_account", ACCOUNTS, "delete", {"accountId": account_id})
        # bad data, on an existing item (it must stay as its last clean version)
        if self.rng.random() < 0.5:
            item = self._bad(self.accounts[self.rng.choice(list(self.accounts))], ACCOUNTS)
            return self._put(ACCOUNTS, "bad_account", item)
        item = self._bad(self.repos[self.rng.choice(list(self.repos))], REPOS)
        return self._put(REPOS, "bad_repo", item)

    def _put(self, table: str, kind: str, item: Item) -> Operation:
        if table == ACCOUNTS:
            self.accounts[item["accountId"]] = item
            key = {"accountId": item["accountId"]}
        else:
            self.repos[item["repoId"]] = item
            key = {"repoId": item["repoId"]}
        return Operation(kind, table, "put", key, item)

    def honours_new_schema(self, op: Operation, targets: list[Item]) -> bool:
        """Would an application writing the new schema attempt this clean put (`targets`: its transform)?

        Not an account that produces nothing yet is not ``deleted``, nor a
        repository renamed onto a name a sibling holds (sc-main's name key
        would refuse it).
        """
        assert op.item is not None
        if op.table != REPOS:
            return bool(targets) or op.item.get("status") == "deleted"
        mine = (op.item["accountId"], op.item["name"].lower())
        return not any(
            (r.get("accountId"), str(r.get("name", "")).lower()) == mine
            for repo_id, r in self.repos.items() if repo_id != op.item["repoId"]
        )

    def restore(self, table: str, key: str, previous: Item | None) -> None:
        """Take back an operation the application did not attempt: the model holds `previous` again."""
        model = self.accounts if table == ACCOUNTS else self.repos
        if previous is None:
            model.pop(key, None)
        else:
            model[key] = previous

    def operations(self, count: int) -> list[Operation]:
        return [self.next() for _ in range(count)]


def apply_operation(client: Any, settings: Any, op: Operation) -> None:
    """Apply one operation with a boto3 client (the application's write)."""
    from shared.core.codec import to_wire

    table = settings.physical_name(op.table)
    if op.action == "put":
        client.put_item(TableName=table, Item=to_wire(op.item))
    else:
        client.delete_item(TableName=table, Key=to_wire(op.key))
