"""Applier.write_stale_batch, the insert write mode, against a scripted client (no engine).

What must hold: an item goes out as a create-only INSERT only while its read
is within the horizon, 25 statements a request; every item whose INSERT did
not succeed, and every item once the read is too old, is decided by
`write_stale` itself; a transform failure is quarantined, never sent, and a
page's bad rows are checked against their sources with one read after their
entries are written.
The same paths against DynamoDB Local and the mirror: tests/integration/test_races.py
(every backfill race runs through both write paths).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from shared.core.codec import to_wire
from shared.core.definition import SourceRef, get_definition
from shared.core.errors import QuarantineError
from shared.core.settings import load_settings
from shared.protocol.apply import INSERT_BATCH, Applier, ApplyResult, insert_statement


def key_of(statement: dict[str, Any]) -> tuple[str, str]:
    names = re.findall(r"'((?:[^']|'')*)'\s*:\s*\?", statement["Statement"])
    values = dict(zip(names, statement["Parameters"], strict=True))
    return values["PK"]["S"], values["SK"]["S"]


class ScriptedClient:
    """Answers BatchExecuteStatement; refuses the INSERTs whose key is in `existing`."""

    def __init__(self, existing: set[tuple[str, str]]) -> None:
        self.existing = existing
        self.requests: list[list[dict[str, Any]]] = []

    async def batch_execute_statement(self, Statements: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self.requests.append(Statements)
        responses = []
        for statement in Statements:
            key = key_of(statement)
            if key in self.existing:
                responses.append({"Error": {"Code": "DuplicateItem", "Message": "Duplicate primary key exists"}})
            else:
                self.existing.add(key)
                responses.append({"TableName": "sc-main"})
        return {"Responses": responses}


def account(n: int, email: str | None = None) -> dict[str, Any]:
    return {"accountId": f"acc_{n:06d}", "email": email or f"user{n}@example.com", "name": f"User {n}",
            "plan": "free", "createdAt": "2024-01-02T03:04:05Z"}


@pytest.fixture
def applier(monkeypatch: pytest.MonkeyPatch) -> tuple[Applier, ScriptedClient, list[SourceRef]]:
    definition = get_definition("sc")
    client = ScriptedClient(existing=set())
    applier = Applier(load_settings(), definition, client, None)  # type: ignore[arg-type]
    decided: list[SourceRef] = []

    async def write_stale(ref: SourceRef, image: Any, read_at: float) -> ApplyResult:
        decided.append(ref)
        return ApplyResult(skipped=1)

    async def quarantine_stale_many(bad: list[Any]) -> None:
        return None

    monkeypatch.setattr(applier, "write_stale", write_stale)
    monkeypatch.setattr(applier, "_quarantine_stale_many", quarantine_stale_many)
    return applier, client, decided


def refs_and_items(definition: Any, items: list[dict[str, Any]]) -> list[tuple[SourceRef, dict[str, Any]]]:
    return [(definition.source("sc-accounts").ref(i), i) for i in items]


def test_items_go_out_as_inserts_25_to_a_request(applier) -> None:
    applier, client, decided = applier
    items = refs_and_items(applier.definition, [account(n) for n in range(60)])
    results = asyncio.run(applier.write_stale_batch(items, read_at=applier.clock()))
    targets = sum(len(applier.definition.transform("sc-accounts", i)) for _, i in items)
    assert sorted(len(r) for r in client.requests) == sorted(
        [INSERT_BATCH] * (targets // INSERT_BATCH) + ([targets % INSERT_BATCH] if targets % INSERT_BATCH else []))
    assert all(s["Statement"].startswith('INSERT INTO "sc-main" VALUE {') for r in client.requests for s in r)
    assert decided == []  # nothing needed write_stale
    assert all(r.written >= 1 and not r.skipped for r in results)


def test_a_refused_insert_is_decided_by_write_stale(applier) -> None:
    applier, client, decided = applier
    items = refs_and_items(applier.definition, [account(n) for n in range(5)])
    taken = applier.definition.transform("sc-accounts", items[2][1])[0]
    client.existing.add(key_of(insert_statement("sc-main", taken)))  # the mirror was first
    results = asyncio.run(applier.write_stale_batch(items, read_at=applier.clock()))
    assert decided == [items[2][0]]
    assert results[2] == ApplyResult(skipped=1)  # write_stale's own answer, whatever it is
    assert [r.written >= 1 for i, r in enumerate(results) if i != 2] == [True] * 4


def test_a_read_past_the_horizon_sends_no_insert(applier) -> None:
    applier, client, decided = applier
    items = refs_and_items(applier.definition, [account(n) for n in range(3)])
    too_old = applier.clock() - applier.settings.stale_write_horizon_s - 1
    asyncio.run(applier.write_stale_batch(items, read_at=too_old))
    assert client.requests == []
    assert decided == [ref for ref, _ in items]


def test_a_bad_item_is_quarantined_and_never_sent(applier) -> None:
    applier, client, decided = applier
    items = refs_and_items(applier.definition, [account(1), account(2, email="not an email")])
    results = asyncio.run(applier.write_stale_batch(items, read_at=applier.clock()))
    assert isinstance(results[1].quarantined, QuarantineError)
    sent = [key_of(s) for r in client.requests for s in r]
    assert sent and all("acc_000002" not in pk for pk, _ in sent)
    assert results[0].written >= 1
    assert decided == []  # quarantined at once, not handed to write_stale


class QuarantineControl:
    """The control table's quarantine entries: create-only puts (a token each), token-checked clears."""

    def __init__(self, existing: set[SourceRef]) -> None:
        self.entries: dict[SourceRef, str] = {ref: "theirs" for ref in existing}
        self.cleared: list[tuple[SourceRef, str | None]] = []
        self.events: list[str] = []

    async def quarantine_put(self, entry: Any, *, only_if_absent: bool = False, **_: Any) -> str | None:
        self.events.append(f"put {entry.ref.key[0]}")
        if only_if_absent and entry.ref in self.entries:
            return None  # an entry is there already (the mirror's): kept
        self.entries[entry.ref] = token = f"token-{entry.ref.key[0]}"
        return token

    async def quarantine_clear(self, ref: SourceRef, *, token: str | None = None) -> None:
        self.cleared.append((ref, token))
        if self.entries.get(ref) == token:
            del self.entries[ref]


class SourceReads:
    """Strongly consistent BatchGetItem of the legacy table, answering the current images."""

    def __init__(self, current: dict[str, dict[str, Any]], events: list[str]) -> None:
        self.current = current
        self.requests: list[dict[str, Any]] = []
        self.events = events

    async def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
        self.requests.append(RequestItems)
        self.events.append("read")
        (table, wanted), = RequestItems.items()
        assert wanted["ConsistentRead"] is True
        found = [self.current[k["accountId"]["S"]] for k in wanted["Keys"] if k["accountId"]["S"] in self.current]
        return {"Responses": {table: [to_wire(i) for i in found]}}


def test_a_pages_bad_rows_are_quarantined_then_read_once_and_changed_ones_dropped() -> None:
    # GIVEN a page with four bad rows: two still as scanned, one changed since the scan (the mirror may
    # already have cleared its entry), and one whose entry the mirror wrote first (kept as it is)
    definition = get_definition("sc")
    rows = {n: account(n, email="not an email") for n in range(4)}
    refs = {n: definition.source("sc-accounts").ref(rows[n]) for n in rows}
    control = QuarantineControl(existing={refs[3]})
    current = {rows[n]["accountId"]: rows[n] for n in (0, 1, 3)} | {
        rows[2]["accountId"]: {**rows[2], "email": "fixed@example.com"}}
    client = SourceReads(current, control.events)
    applier = Applier(load_settings(), definition, client, control)  # type: ignore[arg-type]
    bad = [(refs[n], QuarantineError("bad email"), rows[n]) for n in range(4)]
    # WHEN they are quarantined from the stale read
    asyncio.run(applier._quarantine_stale_many(bad))
    # THEN every entry is written before the one read of the sources (write first, read second),
    # the read asks only for the rows whose entry is ours, strongly consistent, in one request
    assert control.events[-1] == "read" and control.events.count("read") == 1
    (wanted,) = client.requests[0].values()
    assert sorted(k["accountId"]["S"] for k in wanted["Keys"]) == sorted(rows[n]["accountId"] for n in (0, 1, 2))
    # AND only the changed row's entry is dropped, by its own token; the mirror's entry is untouched
    assert control.cleared == [(refs[2], "token-" + refs[2].key[0])]
    assert set(control.entries) == {refs[0], refs[1], refs[3]} and control.entries[refs[3]] == "theirs"
