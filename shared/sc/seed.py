"""Reproducible legacy data for the sc migration, and a fast bulk writer.

Design notes:

- `generate()` is pure: every random choice comes from one
  ``random.Random(seed)``, nothing depends on the clock, on hash order or on
  the environment, so a seed names one data set for good.
- Variants are *dealt*, not sampled: for each dimension (timestamp format,
  plan spelling, topics shape, ...) the generator builds a list with each
  variant's exact share, at least one of each whenever the table has as many
  items as the dimension has variants, and shuffles it. Small tables
  therefore still show every legacy variant, and shares are exact.
- A bad item is a good item with exactly one defect, so its intended
  quarantine reason is unambiguous. Exactly ``round(bad_fraction * n)`` items
  of each table are made bad; the defects are dealt so that every reason
  comes before any case repeats. Items meant to exceed 400 KB once
  transformed are limited to two per table (each weighs ~400 KB).
- An oversized item weighs `_OVERSIZE_MARGIN` bytes less than 400 KB by
  DynamoDB's rules (`shared.core.itemsize`), so it can be written, and carries a
  long email (accounts) or name (repositories) that the transform copies into
  several target attributes and keys, so its target grows by well over the
  margin. moto (the local engine's stand-in without Java) counts differently:
  no byte per list element, and a cap of 405,000 bytes. A long `auditLog`
  list of short entries keeps moto's count ~5 KB below DynamoDB's, so the
  same item is accepted there too.
- Case collisions ("Tools" / "tools" under one account) are made among good
  repositories after the bad ones are chosen; they are not bad data (each
  item transforms cleanly) and are listed apart in `SeedData.collisions`.
- The writer sends BatchWriteItem chunks of 25 with a bounded number in
  flight: a chunk acquires the semaphore before its task exists, so memory
  stays bounded however many items come in. Unprocessed items and transient
  errors are retried with exponential backoff and full jitter; anything else
  is raised through `shared.core.aws.translate`.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from itertools import islice
from typing import Any

from boto3.dynamodb.types import Binary, TypeSerializer

from shared.core.aws import aio_dynamodb, is_transient, translate
from shared.core.errors import TransientError, UsageError
from shared.core.itemsize import MAX_ITEM_BYTES, item_size_bytes
from shared.core.settings import Settings

Item = dict[str, Any]
Progress = Callable[[int], None]

ACCOUNTS = "sc-accounts"
REPOSITORIES = "sc-repositories"

# An oversized source item weighs this much less than the limit; its target
# item gains well over this much (see `_make_oversized_*`).
_OVERSIZE_MARGIN = 300
# moto refuses items above 405,000 bytes of its own count (DynamoDB: 409,600).
_MOTO_SLACK_ENTRIES = 6000
_MAX_OVERSIZED_PER_TABLE = 2
BATCH_SIZE = 25

# Fixed, so generation never reads the clock.
_EPOCH_FROM = int(datetime(2015, 1, 1, tzinfo=UTC).timestamp())
_EPOCH_TO = int(datetime(2024, 6, 30, tzinfo=UTC).timestamp())
_EPOCH_MAX = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())


@dataclass(frozen=True)
class SeedData:
    """Generated legacy items plus what was deliberately broken in them.

    `bad` maps (logical table, hash key value) to the intended quarantine
    reason, `bad_cases` the same keys to the specific defect (e.g.
    ``email_two_at``). `collisions` lists pairs of repository ids whose target
    keys collide; the engine quarantines one of each pair at write time.
    """

    accounts: list[Item]
    repositories: list[Item]
    bad: dict[tuple[str, str], str]
    bad_cases: dict[tuple[str, str], str]
    collisions: list[tuple[str, str]]

    @property
    def tables(self) -> dict[str, list[Item]]:
        return {ACCOUNTS: self.accounts, REPOSITORIES: self.repositories}

    @property
    def collision_repo_ids(self) -> set[str]:
        return {repo_id for pair in self.collisions for repo_id in pair}

    def bad_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for reason in self.bad.values():
            counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items()))


@dataclass(frozen=True)
class SeedReport:
    """What `seed()` did: items written per logical table, bad items per
    intended reason, and the number of case-collision pairs."""

    written: dict[str, int]
    bad: dict[str, int]
    collisions: int
    elapsed_s: float

    def __str__(self) -> str:
        written = ", ".join(f"{n} items to {table}" for table, n in self.written.items())
        bad = ", ".join(f"{reason}: {n}" for reason, n in self.bad.items()) or "none"
        return (
            f"wrote {written} in {self.elapsed_s:.1f}s; bad items by reason: {bad}; "
            f"case collisions: {self.collisions} pair(s)"
        )


# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------

# (display, email slug)
_FIRST = [
    ("José", "jose"), ("Zoë", "zoe"), ("François", "francois"), ("Łukasz", "lukasz"),
    ("Søren", "soren"), ("Ana", "ana"), ("Mei", "mei"), ("Dmitri", "dmitri"),
    ("Aisha", "aisha"), ("Noah", "noah"), ("Olivia", "olivia"), ("Björn", "bjorn"),
    ("İlkay", "ilkay"), ("Chloé", "chloe"), ("Raj", "raj"), ("Emma", "emma"),
    ("Mateo", "mateo"), ("Ngozi", "ngozi"), ("Håkon", "hakon"), ("Inés", "ines"),
]
_LAST = [
    ("García", "garcia"), ("Müller", "muller"), ("Nguyễn", "nguyen"), ("O'Brien", "obrien"),
    ("Kowalski", "kowalski"), ("Smith", "smith"), ("Ivanova", "ivanova"), ("Dubois", "dubois"),
    ("Johansson", "johansson"), ("Silva", "silva"), ("Okafor", "okafor"), ("Brontë", "bronte"),
]
_CJK = [
    ("山田太郎", "taro.yamada"), ("김민준", "minjun.kim"), ("王芳", "fang.wang"),
    ("佐藤花子", "hanako.sato"), ("陈伟", "wei.chen"), ("이서연", "seoyeon.lee"),
]
_EMOJI = ["🚀", "🦄", "🔥", "🌈", "🐍", "☕", "👩‍💻"]
_DOMAINS = ["example.com", "example.org", "example.net", "mail.example.io", "corp.example.co.uk"]
_THEMES = ["dark", "light", "system", "solarized"]
_SETTINGS_EXTRA: list[tuple[str, Callable[[random.Random], Any]]] = [
    ("language", lambda r: r.choice(["en", "de", "pt-BR", "ja", "fr-CA"])),
    ("timezone", lambda r: r.choice(["Europe/Berlin", "Asia/Tokyo", "America/Sao_Paulo", "UTC"])),
    ("betaFeatures", lambda r: r.random() < 0.5),
    ("digest", lambda r: {"frequency": r.choice(["daily", "weekly"]), "hour": Decimal(r.randint(0, 23))}),
]
_REPO_WORDS = [
    "api", "web", "app", "service", "tools", "infra", "docs", "sdk", "cli", "data",
    "pipeline", "frontend", "backend", "mobile", "auth", "billing", "search", "gateway",
    "worker", "scheduler", "dashboard", "terraform", "config", "site", "blog", "ml",
    "models", "bot", "core", "utils", "events", "payments", "notifications", "analytics",
]
_REPO_UNICODE = ["café-site", "文档", "données-pipeline", "🚀-launcher", "straße-map", "ドキュメント", "señales"]
_TOPICS = [
    "python", "go", "rust", "typescript", "aws", "dynamodb", "serverless", "cli",
    "machine-learning", "devops", "security", "frontend", "api", "docs",
]
_OFFSETS = [timedelta(hours=2), timedelta(hours=-5), timedelta(hours=5, minutes=30), timedelta(hours=9),
            timedelta(hours=-3, minutes=-30)]


def _binary(rng: random.Random, n: int) -> Binary:
    return Binary(rng.randbytes(n))


# Undocumented legacy attributes, one per DynamoDB type (name -> maker).
_ACCOUNT_LEGACY: dict[str, Callable[[random.Random], Any]] = {
    "legacyTier": lambda r: r.choice(["gold", "silver", "bronze"]),                          # S
    "loginCount": lambda r: Decimal(r.randint(0, 5000)),                                     # N
    "creditBalance": lambda r: Decimal(r.randint(0, 99999)) / 100,                           # N (fraction)
    "avatarHash": lambda r: _binary(r, 16),                                                  # B
    "marketingOptIn": lambda r: r.random() < 0.5,                                            # BOOL
    "deletedBy": lambda r: None,                                                             # NULL
    "oldEmails": lambda r: {f"old{r.randint(1, 99)}@example.com", "legacy@example.com"},     # SS
    "legacyRoleIds": lambda r: {Decimal(r.randint(1, 20)), Decimal(100 + r.randint(1, 20))},  # NS
    "apiKeyHashes": lambda r: {_binary(r, 8), _binary(r, 12)},                               # BS
    "loginHistory": lambda r: [                                                              # L (mixed)
        {"at": Decimal(r.randint(_EPOCH_FROM, _EPOCH_TO)), "ip": f"203.0.113.{r.randint(1, 254)}"},
        "2019-05-01T10:00:00Z",
        Decimal(r.randint(1, 9)),
        True,
        None,
    ],
    "billing": lambda r: {                                                                   # M (nested)
        "address": {"city": r.choice(["München", "São Paulo", "東京", "Reykjavík"]), "zip": "80331",
                    "lines": ["Marienplatz 1", "c/o Ünïcødé GmbH"]},
        "vatId": None,
        "cards": [{"last4": f"{r.randint(0, 9999):04d}", "expires": "2027-01"}],
        "tags": {"vip", "net30"},
    },
}
_REPO_LEGACY: dict[str, Callable[[random.Random], Any]] = {
    "forkOf": lambda r: f"repo_{r.getrandbits(48):012x}",                                     # S
    "stars": lambda r: Decimal(r.randint(0, 20000)),                                          # N
    "lastPushSha": lambda r: _binary(r, 20),                                                  # B
    "hasWiki": lambda r: r.random() < 0.5,                                                    # BOOL
    "license": lambda r: None,                                                                # NULL
    "languages": lambda r: set(r.sample(["Python", "Go", "Rust", "TypeScript", "Shell"], 2)),  # SS
    "webhookIds": lambda r: {Decimal(r.randint(1, 999)), Decimal(1000 + r.randint(1, 999))},  # NS
    "deployKeyFingerprints": lambda r: {_binary(r, 16), _binary(r, 16)},                      # BS
    "branches": lambda r: ["main", "dev", {"name": "release", "protected": True}, Decimal(3)],  # L
    "ci": lambda r: {                                                                         # M (nested)
        "provider": r.choice(["jenkins", "travis", "circleci"]),
        "config": {"steps": ["lint", "test", {"deploy": {"env": "prod"}}], "timeoutMin": Decimal(30)},
        "badge": None,
    },
}


# --------------------------------------------------------------------------
# Dealing variants
# --------------------------------------------------------------------------


def _deal(rng: random.Random, n: int, weights: dict[str, float]) -> list[str]:
    """n variant names in exact shares (largest remainder), shuffled.

    Every variant appears at least once when n is at least the number of
    variants: the one-off is taken from the most common variant.
    """
    total = sum(weights.values())
    exact = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(weights, key=lambda k: exact[k] - counts[k], reverse=True)
    for k in by_remainder[: n - sum(counts.values())]:
        counts[k] += 1
    if n >= len(weights):
        for k in weights:
            if counts[k] == 0:
                counts[max(counts, key=lambda j: counts[j])] -= 1
                counts[k] = 1
    dealt = [k for k, c in counts.items() for _ in range(c)]
    rng.shuffle(dealt)
    return dealt


_TS_FORMATS = {"epoch": 50, "iso_z": 15, "iso_offset": 12, "iso_fraction": 13, "iso_naive": 10}


def _timestamp(rng: random.Random, epoch: int, fmt: str) -> Any:
    moment = datetime.fromtimestamp(epoch, UTC)
    if fmt == "epoch":
        return Decimal(epoch)
    if fmt == "iso_z":
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if fmt == "iso_offset":
        return moment.astimezone(timezone(rng.choice(_OFFSETS))).isoformat()
    if fmt == "iso_fraction":
        moment = moment.replace(microsecond=rng.randint(0, 999_999))
        if rng.random() < 0.5:
            return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return moment.astimezone(timezone(_OFFSETS[0])).isoformat(timespec="microseconds")
    if fmt == "iso_naive":
        return moment.replace(tzinfo=None).isoformat()
    raise ValueError(fmt)


def _later(rng: random.Random, epoch: int) -> int:
    """An update time after `epoch`, never beyond the fixed end of the data."""
    return epoch + rng.randint(0, min(3 * 365 * 86400, _EPOCH_MAX - epoch))


def _unique_id(rng: random.Random, prefix: str, used: set[str]) -> str:
    while True:
        candidate = f"{prefix}{rng.getrandbits(48):012x}"
        if candidate not in used:
            used.add(candidate)
            return candidate


def _with_legacy(rng: random.Random, item: Item, primary: str, pool: dict[str, Callable[[random.Random], Any]]) -> None:
    if primary == "none":
        return
    names = [primary] + rng.sample(sorted(pool), rng.randint(0, 2))
    for name in names:
        item[name] = pool[name](rng)


# --------------------------------------------------------------------------
# Accounts
# --------------------------------------------------------------------------


def _accounts(rng: random.Random, n: int) -> list[Item]:
    name_kind = _deal(rng, n, {"latin": 58, "cjk": 12, "emoji": 10, "missing": 15, "empty": 5})
    email_kind = _deal(rng, n, {"plain": 55, "mixed_case": 20, "spaces": 15, "mixed_spaces": 10})
    plan_kind = _deal(rng, n, {"lower": 65, "upper": 10, "title": 10, "missing": 15})
    status = _deal(rng, n, {"missing": 30, "active": 48, "suspended": 18, "deleted": 4})
    created_fmt = _deal(rng, n, _TS_FORMATS)
    updated_fmt = _deal(rng, n, {"missing": 20, **_TS_FORMATS})
    teams = _deal(rng, n, {"absent": 45, "present": 55})
    settings_kind = _deal(rng, n, {"absent": 25, "standard": 40, "partial": 10, "extra": 15, "empty": 10})
    legacy = _deal(rng, n, {"none": 40, **{k: 60 / len(_ACCOUNT_LEGACY) for k in _ACCOUNT_LEGACY}})
    team_pool = [f"team_{rng.getrandbits(32):08x}" for _ in range(max(5, n // 4))]
    used_ids: set[str] = set()
    used_emails: set[str] = set()
    items = []
    for i in range(n):
        first, first_slug = rng.choice(_FIRST)
        last, last_slug = rng.choice(_LAST)
        slug = f"{first_slug}.{last_slug}"
        item: Item = {"accountId": _unique_id(rng, "acc_", used_ids)}
        kind = name_kind[i]
        if kind == "latin":
            item["name"] = f"{first} {last}"
        elif kind == "cjk":
            item["name"], slug = rng.choice(_CJK)
        elif kind == "emoji":
            item["name"] = f"{first} {rng.choice(_EMOJI)}"
        elif kind == "empty":
            item["name"] = ""
        local = slug
        while f"{local}@" in used_emails:
            local = f"{slug}{rng.randint(2, 99999)}"
        used_emails.add(f"{local}@")
        email = f"{local}@{rng.choice(_DOMAINS)}"
        if email_kind[i] in ("mixed_case", "mixed_spaces"):
            # Capitalised words plus a shouted domain: always differs from lower case.
            local_part, domain = email.split("@")
            email = ".".join(w.capitalize() for w in local_part.split(".")) + "@" + domain.upper()
        if email_kind[i] in ("spaces", "mixed_spaces"):
            email = " " * rng.randint(1, 3) + email + " " * rng.randint(0, 2)
        item["email"] = email
        plan = rng.choices(["free", "pro", "team", "enterprise"], weights=[50, 25, 15, 10])[0]
        if plan_kind[i] == "lower":
            item["plan"] = plan
        elif plan_kind[i] == "upper":
            item["plan"] = plan.upper()
        elif plan_kind[i] == "title":
            item["plan"] = plan.title()
        if status[i] != "missing":
            item["status"] = status[i]
        created = rng.randint(_EPOCH_FROM, _EPOCH_TO)
        item["createdAt"] = _timestamp(rng, created, created_fmt[i])
        if updated_fmt[i] != "missing":
            item["updatedAt"] = _timestamp(rng, _later(rng, created), updated_fmt[i])
        if teams[i] == "present":
            item["teamIds"] = set(rng.sample(team_pool, rng.randint(1, 4)))
        kind = settings_kind[i]
        if kind != "absent":
            item["settings"] = _settings(rng, kind)
        _with_legacy(rng, item, legacy[i], _ACCOUNT_LEGACY)
        items.append(item)
    return items


def _settings(rng: random.Random, kind: str) -> dict[str, Any]:
    if kind == "empty":
        return {}
    if kind == "partial":
        return rng.choice([{"theme": rng.choice(_THEMES)}, {"emailNotifications": rng.random() < 0.7}])
    settings: dict[str, Any] = {"theme": rng.choice(_THEMES), "emailNotifications": rng.random() < 0.7}
    if kind == "extra":
        for key, make in rng.sample(_SETTINGS_EXTRA, rng.randint(1, 2)):
            settings[key] = make(rng)
    return settings


# --------------------------------------------------------------------------
# Repositories
# --------------------------------------------------------------------------


def _repo_name(rng: random.Random, kind: str) -> str:
    if kind == "single":
        return rng.choice(_REPO_WORDS)
    if kind == "dashed":
        return "-".join(rng.sample(_REPO_WORDS, 2))
    if kind == "snake":
        return "_".join(rng.sample(_REPO_WORDS, 2))
    if kind == "unicode":
        return rng.choice(_REPO_UNICODE)
    # "cased": CamelCase or Capitalised, as some people name things
    words = rng.sample(_REPO_WORDS, rng.randint(1, 2))
    return "".join(w.capitalize() for w in words) if len(words) > 1 else words[0].capitalize()


def _repositories(rng: random.Random, n: int, account_ids: list[str]) -> list[Item]:
    owner_kind = _deal(rng, n, {"known": 99, "unknown": 1} if account_ids else {"unknown": 1})
    name_kind = _deal(rng, n, {"single": 15, "dashed": 55, "snake": 10, "unicode": 5, "cased": 15})
    visibility = _deal(rng, n, {"public": 38, "private": 30, "is_private_true": 14, "is_private_false": 13,
                                "neither": 5})
    branch = _deal(rng, n, {"main": 55, "master": 20, "develop": 5, "trunk": 5, "missing": 15})
    created_fmt = _deal(rng, n, _TS_FORMATS)
    updated_fmt = _deal(rng, n, {"missing": 20, **_TS_FORMATS})
    topics = _deal(rng, n, {"ss": 35, "list_dupes": 20, "list": 10, "list_empty": 3, "absent": 32})
    size = _deal(rng, n, {"present": 85, "missing": 15})
    archived = _deal(rng, n, {"true": 10, "false": 50, "missing": 40})
    legacy = _deal(rng, n, {"none": 40, **{k: 60 / len(_REPO_LEGACY) for k in _REPO_LEGACY}})
    used_ids: set[str] = set()
    unknown_ids: set[str] = set(account_ids)
    names_by_owner: dict[str, set[str]] = {}
    items = []
    for i in range(n):
        item: Item = {"repoId": _unique_id(rng, "repo_", used_ids)}
        if owner_kind[i] == "known":
            # Skewed: a few accounts own many repositories, most own a few.
            owner = account_ids[int(len(account_ids) * rng.random() ** 2)]
        else:
            owner = _unique_id(rng, "acc_", unknown_ids)
        item["accountId"] = owner
        taken = names_by_owner.setdefault(owner, set())
        name = base = _repo_name(rng, name_kind[i])
        while name.lower() in taken:
            name = f"{base}-{rng.randint(2, 999)}"
        taken.add(name.lower())
        item["name"] = name
        vis = visibility[i]
        if vis in ("public", "private"):
            item["visibility"] = vis
        elif vis != "neither":
            item["isPrivate"] = vis == "is_private_true"
        if branch[i] != "missing":
            item["defaultBranch"] = branch[i]
        created = rng.randint(_EPOCH_FROM, _EPOCH_TO)
        item["createdAt"] = _timestamp(rng, created, created_fmt[i])
        if updated_fmt[i] != "missing":
            item["updatedAt"] = _timestamp(rng, _later(rng, created), updated_fmt[i])
        chosen = rng.sample(_TOPICS, rng.randint(1, 4))
        if topics[i] == "ss":
            item["topics"] = set(chosen)
        elif topics[i] == "list_dupes":
            item["topics"] = chosen + [rng.choice(chosen)]
        elif topics[i] == "list":
            item["topics"] = chosen
        elif topics[i] == "list_empty":
            item["topics"] = []
        if size[i] == "present":
            item["sizeKb"] = Decimal(int(rng.lognormvariate(7, 2)))
        if archived[i] != "missing":
            item["archived"] = archived[i] == "true"
        _with_legacy(rng, item, legacy[i], _REPO_LEGACY)
        items.append(item)
    return items


# --------------------------------------------------------------------------
# Bad data: (case, intended reason, mutation); each adds exactly one defect
# --------------------------------------------------------------------------

Mutation = Callable[[random.Random, Item], None]
Case = tuple[str, str, Mutation]  # (defect, intended quarantine reason, mutation)


def _set(attr: str, *values: Any) -> Mutation:
    def mutate(rng: random.Random, item: Item) -> None:
        item[attr] = rng.choice(values)

    return mutate


def _drop(attr: str) -> Mutation:
    def mutate(rng: random.Random, item: Item) -> None:
        item.pop(attr, None)

    return mutate


_AUDIT_EVENTS = ["login", "logout", "pwd", "2fa", "key", "sso", "export", "invite"]


def _pad_to_margin(rng: random.Random, item: Item, attr: str) -> None:
    """Add undocumented attributes so the item weighs the limit minus the margin.

    `auditLog` costs DynamoDB one byte per entry more than moto counts (see
    the module note); a big S takes up the rest.
    """
    item["auditLog"] = [rng.choice(_AUDIT_EVENTS) for _ in range(_MOTO_SLACK_ENTRIES)]
    room = MAX_ITEM_BYTES - _OVERSIZE_MARGIN - item_size_bytes(item) - len(attr)
    # base64 of random bytes: ASCII, one byte per character, cheap to make.
    blob = base64.b64encode(rng.randbytes(room * 3 // 4 + 3)).decode()[:room]
    item[attr] = blob


def _make_oversized_account(rng: random.Random, item: Item) -> None:
    # The target profile holds the email twice (email, GSI1PK) plus its local
    # part as display_name, and the account id three times: a ~340-byte email
    # makes the target ~800 bytes bigger than the source.
    for attr in ("name", "teamIds"):
        item.pop(attr, None)
    tag = "-".join(rng.choice(_REPO_WORDS) for _ in range(60))[:320]
    item["email"] = f"archive+{tag}@example.com"
    item["status"] = "active"
    _pad_to_margin(rng, item, "notesHtml")


def _make_oversized_repository(rng: random.Random, item: Item) -> None:
    # The target holds the name twice (name, SK), the repo id three times and
    # the owner twice: a ~600-byte name makes the target ~800 bytes bigger.
    item["name"] = "-".join(rng.choice(_REPO_WORDS) for _ in range(120))[:600]
    _pad_to_margin(rng, item, "readmeHtml")


_ACCOUNT_CASES: list[Case] = [
    ("email_missing", "invalid_email", _drop("email")),
    ("email_empty", "invalid_email", _set("email", "", "   ")),
    ("email_no_at", "invalid_email", _set("email", "jose.garcia.example.com", "no-at-sign")),
    ("email_two_at", "invalid_email", _set("email", "jose@garcia@example.com", "a@@example.org")),
    ("email_nothing_before_at", "invalid_email", _set("email", "@example.com", "  @example.org ")),
    ("email_nothing_after_at", "invalid_email", _set("email", "jose.garcia@", " mei@ ")),
    ("plan_unknown", "invalid_plan", _set("plan", "platinum", "Gold", "free-trial", "")),
    ("status_unknown", "invalid_status", _set("status", "banned", "pending", "closed")),
    ("created_missing", "invalid_timestamp", _drop("createdAt")),
    ("created_garbage", "invalid_timestamp", _set("createdAt", "not a date", "2021-02-30T10:00:00Z", "31/12/2020")),
    ("updated_garbage", "invalid_timestamp", _set("updatedAt", "yesterday", "2020-13-01T00:00:00Z")),
    ("team_ids_string", "wrong_type", _set("teamIds", "team_a1,team_b2", "team_a1")),
    ("settings_string", "wrong_type", _set("settings", "dark", '{"theme": "dark"}')),
    ("too_large", "item_too_large", _make_oversized_account),
]
_REPOSITORY_CASES: list[Case] = [
    ("account_id_missing", "missing_attribute", _drop("accountId")),
    ("name_missing", "missing_attribute", _drop("name")),
    ("created_missing", "invalid_timestamp", _drop("createdAt")),
    ("created_garbage", "invalid_timestamp", _set("createdAt", "not a date", "2021-02-30T10:00:00Z")),
    ("updated_garbage", "invalid_timestamp", _set("updatedAt", "tomorrow", "2020-00-10")),
    ("size_kb_string", "wrong_type", _set("sizeKb", "1024", "12kb")),
    ("archived_string", "wrong_type", _set("archived", "false", "true", "yes")),
    ("topics_string", "wrong_type", _set("topics", "python,aws", "go")),
    ("too_large", "item_too_large", _make_oversized_repository),
]


def _case_order(rng: random.Random, cases: list[Case], n_bad: int) -> list[Case]:
    """n_bad cases: every reason once, then every case once, then round-robin.

    Oversized cases stop after `_MAX_OVERSIZED_PER_TABLE` rounds.
    """
    by_reason: dict[str, list[Case]] = {}
    for case in cases:
        by_reason.setdefault(case[1], []).append(case)
    first = [rng.choice(group) for group in by_reason.values()]
    rng.shuffle(first)
    rest = [c for c in cases if c not in first]
    rng.shuffle(rest)
    order = first + rest
    rounds = 1
    while len(order) < n_bad:
        rounds += 1
        again = [c for c in cases if c[1] != "item_too_large" or rounds <= _MAX_OVERSIZED_PER_TABLE]
        rng.shuffle(again)
        order += again
    return order[:n_bad]


def _break(
    rng: random.Random,
    table: str,
    key_attr: str,
    items: list[Item],
    cases: list[Case],
    n_bad: int,
) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], str]]:
    bad: dict[tuple[str, str], str] = {}
    detail: dict[tuple[str, str], str] = {}
    chosen = sorted(rng.sample(range(len(items)), n_bad))
    for index, (case, reason, mutate) in zip(chosen, _case_order(rng, cases, n_bad), strict=True):
        item = items[index]
        if item.get("status") == "deleted":
            # A deleted account yields no target items, so some defects
            # (an oversized target) could never show; keep it live.
            item["status"] = "active"
        mutate(rng, item)
        bad[(table, item[key_attr])] = reason
        detail[(table, item[key_attr])] = case
    return bad, detail


def _collide(rng: random.Random, repos: list[Item], bad_ids: set[str], pairs: int) -> list[tuple[str, str]]:
    """Rename good repositories to a case variant of a sibling's name."""
    by_owner: dict[str, list[Item]] = {}
    for repo in repos:
        if repo["repoId"] not in bad_ids:
            by_owner.setdefault(repo["accountId"], []).append(repo)
    owners = sorted(o for o, rs in by_owner.items() if len(rs) >= 2)
    rng.shuffle(owners)
    collisions: list[tuple[str, str]] = []
    for owner in owners:
        if len(collisions) >= pairs:
            break
        siblings = by_owner[owner]
        first = next((r for r in siblings if r["name"].lower() != r["name"].upper()), None)
        if first is None:
            continue
        second = rng.choice([r for r in siblings if r is not first])
        name = first["name"]
        second["name"] = name.capitalize() if name != name.capitalize() else name.lower()
        if second["name"] == name:  # e.g. "Tools" has no other spelling by these rules
            second["name"] = name.upper()
        collisions.append((first["repoId"], second["repoId"]))
    return collisions


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def generate(accounts: int, repos: int, bad_fraction: float, seed: int) -> SeedData:
    """Legacy items for sc-accounts and sc-repositories; pure and reproducible."""
    if accounts < 0 or repos < 0:
        raise UsageError(f"accounts and repos must not be negative (got {accounts}, {repos})")
    if not 0.0 <= bad_fraction <= 1.0:
        raise UsageError(f"bad_fraction must be between 0 and 1 (got {bad_fraction})")
    rng = random.Random(seed)
    account_items = _accounts(rng, accounts)
    repo_items = _repositories(rng, repos, [a["accountId"] for a in account_items])
    bad, detail = _break(rng, ACCOUNTS, "accountId", account_items, _ACCOUNT_CASES, round(bad_fraction * accounts))
    repo_bad, repo_detail = _break(
        rng, REPOSITORIES, "repoId", repo_items, _REPOSITORY_CASES, round(bad_fraction * repos)
    )
    bad.update(repo_bad)
    detail.update(repo_detail)
    bad_repo_ids = {key for table, key in repo_bad}
    collisions = _collide(rng, repo_items, bad_repo_ids, max(1, repos // 200) if repos >= 2 else 0)
    return SeedData(account_items, repo_items, bad, detail, collisions)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter; `sleep` is injectable for tests."""

    base_s: float = 0.05
    cap_s: float = 5.0
    # Give up after this many consecutive rounds that wrote nothing.
    max_stalled: int = 10
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0, min(self.cap_s, self.base_s * 2**attempt))


def _chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


async def _write_chunk(
    client: Any, table: str, chunk: list[Item], backoff: Backoff, progress: Progress | None
) -> int:
    serializer = TypeSerializer()
    requests = [{"PutRequest": {"Item": {k: serializer.serialize(v) for k, v in item.items()}}} for item in chunk]
    written = attempt = stalled = 0
    while requests:
        try:
            response = await client.batch_write_item(RequestItems={table: requests})
        except Exception as exc:  # noqa: BLE001  (sorted by is_transient below)
            # translate() keeps the botocore error as __cause__.
            if not is_transient(exc):
                raise translate(exc, f"BatchWriteItem to {table}")  # noqa: B904
            stalled += 1
            if stalled >= backoff.max_stalled:
                raise translate(exc, f"BatchWriteItem to {table} (gave up after {stalled} attempts)")  # noqa: B904
        else:
            left = response.get("UnprocessedItems", {}).get(table, [])
            done = len(requests) - len(left)
            if done:
                written += done
                stalled = 0
                if progress is not None:
                    progress(done)
            else:
                stalled += 1
            requests = left
            if not requests:
                break
            if stalled >= backoff.max_stalled:
                raise TransientError(
                    f"BatchWriteItem to {table}: {len(requests)} items still unprocessed after {stalled} attempts"
                )
        attempt += 1
        await backoff.sleep(backoff.delay(attempt))
    return written


async def write_batches(
    client: Any,
    table: str,
    items: Iterable[Item],
    *,
    concurrency: int = 8,
    progress: Progress | None = None,
    backoff: Backoff | None = None,
) -> int:
    """Put native `items` into `table` with an open aiobotocore client.

    Chunks of 25, at most `concurrency` in flight. Items within one chunk
    must have distinct keys (BatchWriteItem refuses duplicates). Returns the
    number of items written; the first non-retryable error is raised and the
    chunks still in flight are cancelled.
    """
    if concurrency < 1:
        raise UsageError(f"concurrency must be at least 1 (got {concurrency})")
    backoff = backoff or Backoff()
    slots = asyncio.Semaphore(concurrency)
    pending: set[asyncio.Task[int]] = set()
    failures: list[BaseException] = []
    total = 0

    def finished(task: asyncio.Task[int]) -> None:
        nonlocal total
        slots.release()
        pending.discard(task)
        if task.cancelled():
            return
        if task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]
        else:
            total += task.result()

    try:
        for chunk in _chunks(items, BATCH_SIZE):
            await slots.acquire()
            if failures:
                slots.release()
                break
            task = asyncio.create_task(_write_chunk(client, table, chunk, backoff, progress))
            pending.add(task)
            task.add_done_callback(finished)
        while pending and not failures:
            await asyncio.wait(set(pending), return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in list(pending):
            task.cancel()
        if pending:
            await asyncio.wait(set(pending))
    if failures:
        raise failures[0]
    return total


async def write_items(
    settings: Settings,
    table_physical_name: str,
    items: Iterable[Item],
    *,
    concurrency: int = 8,
    progress: Progress | None = None,
) -> int:
    """Put native `items` into a table, fast; returns how many were written.

    `progress`, if given, is called with the number of items each successful
    round wrote (an increment, as `rich.progress.Progress.advance` wants).
    """
    async with aio_dynamodb(settings, pool=max(10, concurrency)) as client:
        return await write_batches(client, table_physical_name, items, concurrency=concurrency, progress=progress)


async def seed(
    settings: Settings,
    accounts: int,
    repos: int,
    bad_fraction: float,
    seed: int,
    progress: Progress | None = None,
    *,
    concurrency: int = 16,
) -> SeedReport:
    """Generate the legacy data and write it to both (physical) source tables."""
    started = time.monotonic()
    data = generate(accounts, repos, bad_fraction, seed)
    written: dict[str, int] = {}
    async with aio_dynamodb(settings, pool=max(10, concurrency)) as client:
        for logical, items in data.tables.items():
            written[logical] = await write_batches(
                client, settings.physical_name(logical), items, concurrency=concurrency, progress=progress
            )
    return SeedReport(
        written=written,
        bad=data.bad_by_reason(),
        collisions=len(data.collisions),
        elapsed_s=time.monotonic() - started,
    )


async def run_seed(
    settings: Settings, accounts: int, repos: int, bad_fraction: float, seed_value: int, console: Any
) -> SeedReport:
    """`seed` with a progress bar on `console` (a rich Console): what `dynashift seed` and the demo run."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("seeding legacy tables", total=accounts + repos, rate="")

        def advance(n: int) -> None:
            progress.advance(task, n)

        return await seed(settings, accounts, repos, bad_fraction, seed_value, progress=advance)


__all__ = [
    "ACCOUNTS",
    "REPOSITORIES",
    "Backoff",
    "SeedData",
    "SeedReport",
    "generate",
    "seed",
    "write_batches",
    "write_items",
]
