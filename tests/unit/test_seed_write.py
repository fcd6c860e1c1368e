"""The seed writer: retries and bounds against a scripted client, then for
real against moto's server (aiobotocore cannot run inside `mock_aws`)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from shared.core.codec import to_native
from shared.core.definition import get_definition
from shared.core.errors import StoreError, TransientError
from shared.core.settings import Settings, load_settings
from shared.ops.tables import create_table, source_specs
from shared.sc.seed import ACCOUNTS, REPOSITORIES, Backoff, generate, seed, write_batches, write_items

TABLE = "legacy"


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "BatchWriteItem",
    )


class ScriptedClient:
    """A BatchWriteItem stand-in: `script(call_number, requests)` decides each answer."""

    def __init__(self, script: Any = None) -> None:
        self.script = script or (lambda n, requests: None)
        self.stored: dict[str, dict[str, Any]] = {}
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def batch_write_item(self, RequestItems: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:  # noqa: N803
        self.calls += 1
        call = self.calls
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)  # let other chunks start
            requests = RequestItems[TABLE]
            assert len(requests) <= 25
            outcome = self.script(call, requests)
            if isinstance(outcome, Exception):
                raise outcome
            left = outcome or []
            for request in requests:
                if request not in left:
                    item = request["PutRequest"]["Item"]
                    self.stored[item["id"]["S"]] = item
            return {"UnprocessedItems": {TABLE: left} if left else {}}
        finally:
            self.in_flight -= 1


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def items(n: int) -> list[dict[str, Any]]:
    return [{"id": f"k{i:05d}", "n": i} for i in range(n)]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---------------------------------------------------------------- scripted client
def test_every_item_is_written_once_and_progress_adds_up() -> None:
    # GIVEN a client that accepts everything
    client, advanced = ScriptedClient(), []
    # WHEN 260 items are written
    total = run(write_batches(client, TABLE, iter(items(260)), progress=advanced.append))
    # THEN all are stored, in 11 calls of at most 25, and progress sums to the total
    assert total == 260 and len(client.stored) == 260
    assert client.calls == 11
    assert sum(advanced) == 260


def test_unprocessed_items_are_retried_with_backoff() -> None:
    # GIVEN a client that leaves the second half of every first attempt unprocessed
    seen: set[str] = set()

    def half(n: int, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        first_time = [r for r in requests if r["PutRequest"]["Item"]["id"]["S"] not in seen]
        seen.update(r["PutRequest"]["Item"]["id"]["S"] for r in requests)
        return first_time[len(first_time) // 2 :] if len(first_time) == len(requests) else []

    client, sleeps = ScriptedClient(half), Sleeps()
    backoff = Backoff(base_s=0.1, cap_s=1.0, sleep=sleeps, rng=random.Random(1))
    # WHEN 100 items are written
    total = run(write_batches(client, TABLE, items(100), backoff=backoff))
    # THEN every item is stored, after one backoff sleep per chunk, within the cap
    assert total == 100 and len(client.stored) == 100
    assert len(sleeps.delays) == 4
    assert all(0 <= d <= 1.0 for d in sleeps.delays)


def test_transient_errors_are_retried() -> None:
    # GIVEN a client that throttles its first two calls
    def throttle(n: int, requests: list[dict[str, Any]]) -> Any:
        return _client_error("ProvisionedThroughputExceededException", 400) if n <= 2 else None

    client, sleeps = ScriptedClient(throttle), Sleeps()
    # WHEN one chunk is written  THEN it lands after two backoff sleeps
    total = run(write_batches(client, TABLE, items(10), backoff=Backoff(sleep=sleeps)))
    assert total == 10 and len(client.stored) == 10
    assert len(sleeps.delays) == 2


def test_other_errors_are_translated_and_not_retried() -> None:
    # GIVEN a client that refuses the request as invalid
    client, sleeps = ScriptedClient(lambda n, r: _client_error("ValidationException", 400)), Sleeps()
    # WHEN writing  THEN a StoreError keeps the botocore cause, and nothing was retried
    with pytest.raises(StoreError, match="ValidationException") as caught:
        run(write_batches(client, TABLE, items(10), backoff=Backoff(sleep=sleeps)))
    assert isinstance(caught.value.__cause__, ClientError)
    assert client.calls == 1 and sleeps.delays == []


def test_a_write_that_never_progresses_gives_up() -> None:
    # GIVEN a client that never processes anything
    client, sleeps = ScriptedClient(lambda n, requests: list(requests)), Sleeps()
    # WHEN writing  THEN it gives up with a TransientError after max_stalled attempts
    with pytest.raises(TransientError, match="unprocessed"):
        run(write_batches(client, TABLE, items(5), backoff=Backoff(max_stalled=4, sleep=sleeps)))
    assert client.calls == 4


def test_in_flight_chunks_are_bounded_by_concurrency() -> None:
    # GIVEN many chunks and a concurrency of 3
    client = ScriptedClient()
    # WHEN writing
    run(write_batches(client, TABLE, items(25 * 20), concurrency=3))
    # THEN never more than 3 calls were in flight, and 3 were reached
    assert client.max_in_flight == 3


def test_a_failure_stops_submitting_further_chunks() -> None:
    # GIVEN a client that fails on its third call
    client = ScriptedClient(lambda n, r: _client_error("AccessDeniedException", 400) if n == 3 else None)
    # WHEN writing 50 chunks two at a time  THEN the error surfaces and few chunks were sent
    with pytest.raises(StoreError, match="AccessDenied"):
        run(write_batches(client, TABLE, items(25 * 50), concurrency=2))
    assert client.calls <= 5


# ---------------------------------------------------------------- moto server
@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def moto_settings(moto_endpoint: str) -> Settings:
    """Settings on the moto server, with legacy tables unique to this test."""
    suffix = uuid.uuid4().hex[:8]
    settings = load_settings(
        endpoint_url=moto_endpoint,
        region="us-east-1",
        table_names={ACCOUNTS: f"accounts-{suffix}", REPOSITORIES: f"repositories-{suffix}"},
    )
    for spec in source_specs(settings, get_definition("sc")):
        create_table(_boto3(settings), spec, local=True)
    return settings


def _boto3(settings: Settings) -> Any:
    return boto3.client(
        "dynamodb", endpoint_url=settings.endpoint_url, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )


def scan(settings: Settings, logical: str) -> list[dict[str, Any]]:
    pages = _boto3(settings).get_paginator("scan").paginate(TableName=settings.physical_name(logical))
    return [to_native(item) for page in pages for item in page["Items"]]


def count(settings: Settings, logical: str) -> int:
    pages = _boto3(settings).get_paginator("scan").paginate(
        TableName=settings.physical_name(logical), Select="COUNT"
    )
    return sum(page["Count"] for page in pages)


def test_write_items_stores_every_item_unchanged(moto_settings: Settings) -> None:
    # GIVEN generated legacy data with bad rows, one of each table ~400 KB
    # (moto is slow with those, so no more than that)
    data = generate(60, 80, 0.1, seed=5)
    assert sorted(table for (table, _), r in data.bad.items() if r == "item_too_large") == [ACCOUNTS, REPOSITORIES]
    written = []
    # WHEN both tables are written through the real aiobotocore path
    for logical, table_items in data.tables.items():
        physical = moto_settings.physical_name(logical)
        written.append(run(write_items(moto_settings, physical, table_items, concurrency=4)))
    # THEN the counts match and a scan returns exactly the generated items
    assert written == [60, 80]
    assert sorted(scan(moto_settings, ACCOUNTS), key=lambda a: a["accountId"]) == sorted(
        data.accounts, key=lambda a: a["accountId"]
    )
    assert sorted(scan(moto_settings, REPOSITORIES), key=lambda r: r["repoId"]) == sorted(
        data.repositories, key=lambda r: r["repoId"]
    )


def test_seed_writes_both_tables_and_reports(moto_settings: Settings) -> None:
    # GIVEN empty legacy tables  WHEN seeding with progress
    advanced: list[int] = []
    report = run(seed(moto_settings, 40, 100, 0.05, 9, progress=advanced.append))
    # THEN both tables hold the requested counts, and the report says what is in them
    assert report.written == {ACCOUNTS: 40, REPOSITORIES: 100}
    assert count(moto_settings, ACCOUNTS) == 40 and count(moto_settings, REPOSITORIES) == 100
    assert sum(advanced) == 140
    expected = generate(40, 100, 0.05, 9)
    assert report.bad == expected.bad_by_reason() and sum(report.bad.values()) == 2 + 5
    assert report.collisions == len(expected.collisions) >= 1


def test_writing_to_a_missing_table_is_a_store_error(moto_settings: Settings) -> None:
    # GIVEN a table name that does not exist  WHEN writing  THEN StoreError says so
    with pytest.raises(StoreError, match="not found"):
        run(write_items(moto_settings, "no-such-table", items(3)))
