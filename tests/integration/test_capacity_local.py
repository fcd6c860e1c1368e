"""The capacity hook against DynamoDB Local: known items, totals by AWS's rules.

Every figure below is worked out from the rules (shared.core.capacity.write_units
/ read_units over shared.core.itemsize's sizes), never copied from an answer:
1 KB write units, one arm per GSI the item is in, 2x for a transaction,
4 KB read units, half for an eventually consistent read.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.core import aws, capacity
from shared.core.itemsize import item_size_bytes
from shared.core.settings import Settings, load_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def table(local_dynamodb: str) -> Iterator[tuple[Settings, str]]:
    settings = load_settings(endpoint_url=local_dynamodb)
    name = f"capacity-{uuid.uuid4().hex[:8]}"
    client = aws.dynamodb(settings)
    client.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "PK", "AttributeType": "S"},
                              {"AttributeName": "GSI1PK", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[{"IndexName": "GSI1", "KeySchema": [{"AttributeName": "GSI1PK", "KeyType": "HASH"}],
                                 "Projection": {"ProjectionType": "ALL"}}],
    )
    yield settings, name
    client.delete_table(TableName=name)


def _item(key: str, payload: int, *, indexed: bool) -> dict[str, str]:
    item = {"PK": key, "data": "x" * payload}
    if indexed:
        item["GSI1PK"] = "group"
    return item


def _wire(item: dict[str, str]) -> dict[str, Any]:
    return {name: {"S": value} for name, value in item.items()}


def test_writes_and_reads_add_up_to_aws_rules(table: tuple[Settings, str]) -> None:
    settings, name = table
    client = aws.dynamodb(settings)
    # Sizes well inside their KB so the engine's byte count and ours cannot straddle a boundary.
    items = [
        _item("small-plain", 100, indexed=False),  # 1 unit
        _item("small-indexed", 100, indexed=True),  # 1 + 1 (GSI arm)
        _item("large-indexed", 2500, indexed=True),  # 3 + 3
        _item("larger-plain", 5000, indexed=False),  # 5
    ]
    expected_writes = sum(
        capacity.write_units(item_size_bytes(i), indexes=1 if "GSI1PK" in i else 0) for i in items
    )
    assert expected_writes == 1 + 2 + 6 + 5
    with capacity.scope("test") as usage:
        for item in items:
            client.put_item(TableName=name, Item=_wire(item))
    assert usage.write_units == expected_writes
    assert usage.requests == len(items)

    # A batch: the same rules per item.
    batch = [_item(f"batch-{n}", 1500, indexed=True) for n in range(3)]  # 2 + 2 each
    with capacity.scope("test") as usage:
        client.batch_write_item(RequestItems={name: [{"PutRequest": {"Item": _wire(i)}} for i in batch]})
    assert usage.write_units == sum(capacity.write_units(item_size_bytes(i), indexes=1) for i in batch) == 12

    # Reads: 4 KB units (5 KB is 2 of them); eventually consistent costs half.
    large = items[3]
    with capacity.scope("test") as usage:
        client.get_item(TableName=name, Key={"PK": {"S": large["PK"]}})
        client.get_item(TableName=name, Key={"PK": {"S": large["PK"]}}, ConsistentRead=True)
    assert usage.read_units == (capacity.read_units(item_size_bytes(large))
                                + capacity.read_units(item_size_bytes(large), consistent=True)) == 1 + 2

    # A refused conditional write: no units in the answer, the documented minimum of 1 charged.
    with capacity.scope("test") as usage:
        with pytest.raises(client.exceptions.ConditionalCheckFailedException):
            client.put_item(TableName=name, Item=_wire(items[0]), ConditionExpression="attribute_not_exists(PK)")
    assert (usage.write_units, usage.failed_conditions) == (1.0, 1)


def test_a_transaction_costs_twice_per_item(table: tuple[Settings, str]) -> None:
    settings, name = table
    client = aws.dynamodb(settings)
    items = [_item(f"tx-{n}", 100, indexed=False) for n in range(3)]
    with capacity.scope("test") as usage:
        client.transact_write_items(TransactItems=[{"Put": {"TableName": name, "Item": _wire(i)}} for i in items])
    assert usage.write_units == sum(
        capacity.write_units(item_size_bytes(i), transactional=True) for i in items) == 6


def test_the_async_client_counts_too_and_the_ledger_names_the_component(table: tuple[Settings, str]) -> None:
    settings, name = table
    capacity.LEDGER.reset()

    async def main() -> capacity.Usage:
        async with aws.aio_dynamodb(settings) as client:
            with capacity.scope("verify") as usage:
                await asyncio.gather(*(client.put_item(TableName=name, Item=_wire(_item(f"a{n}", 10, indexed=False)))
                                       for n in range(4)))
                await client.scan(TableName=name)
            return usage

    usage = asyncio.run(main())
    assert usage.write_units == 4
    # 4 items of ~17 bytes: one eventually consistent 4 KB unit of scan, halved.
    assert usage.read_units == 0.5
    assert capacity.LEDGER.snapshot()["verify"][name].write_units == 4


def test_partiql_inserts_are_charged_as_aws_would(table: tuple[Settings, str]) -> None:
    """DynamoDB Local answers BatchExecuteStatement without ConsumedCapacity; the rules fill it in."""
    from shared.protocol.apply import insert_statement

    settings, name = table
    client = aws.dynamodb(settings)
    client.put_item(TableName=name, Item=_wire(_item("taken", 10, indexed=False)))
    items = [_item("ins-plain", 100, indexed=False), _item("ins-indexed", 2500, indexed=True),
             _item("taken", 10, indexed=False)]  # a duplicate: refused, charged as a refused condition (1)
    with capacity.scope("test") as usage:
        answer = client.batch_execute_statement(Statements=[insert_statement(name, i) for i in items])
    assert ["Error" in r for r in answer["Responses"]] == [False, False, True]
    assert usage.write_units == capacity.write_units(item_size_bytes(items[0])) + capacity.write_units(
        item_size_bytes(items[1]), indexes=1) + 1 == 1 + 6 + 1
