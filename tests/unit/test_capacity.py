"""shared.core.capacity: AWS's unit rules, the ledger and scopes, prices (no engine here).

The engine's own answers are checked against the same rules in
tests/integration/test_capacity_local.py.
"""

from __future__ import annotations

import asyncio

import pytest

from shared.core import capacity
from shared.core.capacity import Usage


@pytest.fixture(autouse=True)
def _clean_ledger() -> None:
    capacity.LEDGER.reset()


@pytest.mark.parametrize(
    ("size", "indexes", "transactional", "expected"),
    [
        (1, 0, False, 1),  # the minimum
        (1024, 0, False, 1),
        (1025, 0, False, 2),  # every started KB
        (2500, 1, False, 6),  # table arm + one GSI arm
        (100, 1, True, 4),  # a transaction doubles
        (3 * 1024, 0, True, 6),  # AWS's own example: a 3 KB transactional write is 6 WCU
    ],
)
def test_write_units_follow_aws_rules(size: int, indexes: int, transactional: bool, expected: float) -> None:
    assert capacity.write_units(size, indexes=indexes, transactional=transactional) == expected


@pytest.mark.parametrize(
    ("size", "consistent", "transactional", "expected"),
    [
        (100, False, False, 0.5),  # eventually consistent: half a unit per started 4 KB
        (100, True, False, 1.0),
        (8 * 1024, True, False, 2.0),  # AWS's example: a strongly consistent 8 KB read is 2 RCU
        (8 * 1024, False, False, 1.0),  # ... eventually consistent: 1
        (8 * 1024, False, True, 4.0),  # ... transactional: 4
    ],
)
def test_read_units_follow_aws_rules(size: int, consistent: bool, transactional: bool, expected: float) -> None:
    assert capacity.read_units(size, consistent=consistent, transactional=transactional) == expected


def test_answers_as_aws_sends_them_add_up_per_component_and_table() -> None:
    with capacity.scope("backfill") as usage:
        capacity.record("PutItem", {"ConsumedCapacity": {"TableName": "sc-main", "CapacityUnits": 2.0,
                                                          "Table": {"CapacityUnits": 1.0},
                                                          "GlobalSecondaryIndexes": {"GSI1": {"CapacityUnits": 1.0}}}},
                        table="sc-main")
        capacity.record("Scan", {"ConsumedCapacity": {"TableName": "sc-accounts", "CapacityUnits": 12.5}},
                        table="sc-accounts")
        capacity.record("BatchWriteItem", {"ConsumedCapacity": [
            {"TableName": "sc-main", "CapacityUnits": 6.0}, {"TableName": "ctl", "CapacityUnits": 1.0}]})
    assert usage == Usage(read_units=12.5, write_units=9.0, requests=3)
    snapshot = capacity.LEDGER.snapshot()["backfill"]
    assert snapshot["sc-main"].write_units == 8.0
    assert snapshot["sc-accounts"].read_units == 12.5
    data, control = capacity.split_control(snapshot, "ctl")
    assert (data.write_units, control.write_units) == (8.0, 1.0)


def test_a_refused_condition_costs_the_documented_minimum() -> None:
    with capacity.scope("mirror") as usage:
        capacity.record("PutItem", {"Error": {"Code": "ConditionalCheckFailedException"}}, table="sc-main")
    assert usage == Usage(write_units=1.0, requests=1, failed_conditions=1)
    assert capacity.LEDGER.snapshot()["mirror"]["sc-main"].failed_conditions == 1


def test_a_throttled_request_is_counted_but_costs_nothing() -> None:
    with capacity.scope("verify") as usage:
        capacity.record("Scan", {"Error": {"Code": "ThrottlingException"}}, table="t1")
    assert usage == Usage(requests=1)


def test_local_transactions_are_charged_at_least_aws_rules() -> None:
    """DynamoDB Local answers two small transactional puts as 2 units; AWS bills 4."""
    items = [{"Put": {"TableName": "sc-main", "Item": {"PK": {"S": f"k{i}"}, "v": {"S": "x" * 10}}}} for i in range(2)]
    expected = capacity._transaction_units(items)
    assert expected == {"sc-main": 4.0}
    with capacity.scope("repair") as usage:
        capacity.record("TransactWriteItems", {"ConsumedCapacity": [{"TableName": "sc-main", "CapacityUnits": 2.0,
                                                                     "Table": {"CapacityUnits": 2.0}}]},
                        transaction_units=expected)
    assert usage.write_units == 4.0
    # An answer already as large as the rules (AWS's own) is left as it is.
    with capacity.scope("repair") as usage:
        capacity.record("TransactWriteItems", {"ConsumedCapacity": [{"TableName": "sc-main", "CapacityUnits": 4.0,
                                                                     "Table": {"CapacityUnits": 4.0}}]},
                        transaction_units=expected)
    assert usage.write_units == 4.0


def test_nested_scopes_feed_every_collector_and_the_innermost_component() -> None:
    outer = Usage()
    with capacity.scope("backfill", into=outer), capacity.scope() as inner:
        assert capacity.current_component() == "backfill"
        capacity.record("GetItem", {"ConsumedCapacity": {"TableName": "t", "CapacityUnits": 0.5}})
        with capacity.scope("repair"):
            capacity.record("GetItem", {"ConsumedCapacity": {"TableName": "t", "CapacityUnits": 1.0}})
    assert inner.read_units == outer.read_units == 1.5
    assert capacity.LEDGER.component("backfill").read_units == 0.5
    assert capacity.LEDGER.component("repair").read_units == 1.0
    assert capacity.current_component() == "other"


def test_concurrent_tasks_keep_their_own_scope() -> None:
    async def work(name: str, units: float) -> Usage:
        with capacity.scope(name) as usage:
            for _ in range(3):
                await asyncio.sleep(0)
                capacity.record("GetItem", {"ConsumedCapacity": {"TableName": "t", "CapacityUnits": units}})
        return usage

    async def both() -> list[Usage]:
        return list(await asyncio.gather(work("a", 0.5), work("b", 2.0)))

    a, b = asyncio.run(both())
    assert (a.read_units, b.read_units) == (1.5, 6.0)


def test_prices_come_from_the_table_and_unknown_regions_are_not_guessed() -> None:
    usage = Usage(read_units=2_000_000, write_units=1_000_000)
    assert capacity.price(usage, "us-east-1") == pytest.approx(0.625 + 2 * 0.125)
    assert capacity.price(usage, "xx-nowhere-1") is None
    assert "no on-demand rate known for xx-nowhere-1" in capacity.describe(usage, "xx-nowhere-1")
    assert capacity.PRICES_AS_OF and capacity.PRICES_SOURCE.startswith("https://aws.amazon.com/")


def test_usage_round_trips_through_a_dict() -> None:
    usage = Usage(read_units=1.25, write_units=3.0, requests=4, failed_conditions=1)
    assert Usage.from_dict(usage.as_dict()) == usage
