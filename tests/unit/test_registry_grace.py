"""A stale writer's lease stays live for `LANDING_GRACE_S` past its end.

The writer's gate sends a request only while its lease will outlive it by
the margin; a request sent in time can still land after the lease ended (a
loaded engine, a slow proxy). Until then the mirror must keep leaving
tombstones and the sweeper must keep the ones that write could need.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared.store.control import StaleWriterRegistry


class RegistryTable:
    """The control table's STALE_WRITERS partition, as put_item / query / delete_item see it."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    async def put_item(self, TableName: str, Item: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
        self.items[Item["SK"]["S"]] = Item
        return {}

    async def delete_item(self, TableName: str, Key: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
        self.items.pop(Key["SK"]["S"], None)
        return {}

    async def query(self, **_: Any) -> dict[str, Any]:
        return {"Items": list(self.items.values())}


def test_a_lapsed_lease_keeps_tombstones_for_the_writes_it_may_still_land() -> None:
    clock = [1000.0]
    table = RegistryTable()
    registry = StaleWriterRegistry(table, "control", clock=lambda: clock[0])
    asyncio.run(registry.register("worker-1", "backfill", 30.0, reads_since=990.0))
    # The lease ended 1 s ago (its renewal never came), but a write sent under it may still land.
    clock[0] = 1031.0
    assert asyncio.run(registry.active()) is True
    assert asyncio.run(registry.oldest_read()) == 990.0
    # Past the grace nothing it sent can still be on its way.
    clock[0] = 1030.0 + StaleWriterRegistry.LANDING_GRACE_S + 0.001
    assert asyncio.run(registry.active()) is False
    assert asyncio.run(registry.oldest_read()) is None


def test_a_writer_that_deregisters_is_gone_at_once() -> None:
    clock = [1000.0]
    table = RegistryTable()
    registry = StaleWriterRegistry(table, "control", clock=lambda: clock[0])
    asyncio.run(registry.register("worker-1", "backfill", 30.0))
    asyncio.run(registry.deregister("worker-1"))  # only after every write it sent was answered
    assert asyncio.run(registry.active()) is False
