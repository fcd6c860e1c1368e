"""Applier.write_stale_batch, the insert write mode, against a scripted client (no engine).

What must hold: an item goes out as a create-only INSERT only while its read
is within the horizon, 25 statements a request; every item whose INSERT did
not succeed, and every item once the read is too old, is decided by
`write_stale` itself; a transform failure is quarantined, never sent.
The same paths against DynamoDB Local and the mirror: tests/integration/test_races.py
(every backfill race runs through both write paths).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

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

    async def quarantine_stale(ref: SourceRef, error: Exception, image: Any, held: set[Any]) -> None:
        return None

    monkeypatch.setattr(applier, "write_stale", write_stale)
    monkeypatch.setattr(applier, "_quarantine_stale", quarantine_stale)
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
