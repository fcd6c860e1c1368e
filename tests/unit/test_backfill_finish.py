"""The backfill's final sweep waits for writers that died registered, not for live ones."""

from __future__ import annotations

import asyncio
import time

from backfill.run import _await_stopped_writers


class Registry:
    """Stale writers by lease end; a live writer renews its lease on every read."""

    def __init__(self, leases: dict[str, float], renewing: set[str] = frozenset()) -> None:
        self.leases = leases
        self.renewing = renewing
        self.reads = 0

    def _live(self) -> list[float]:
        self.reads += 1
        now = time.time()
        for writer in self.renewing:
            self.leases[writer] = now + 0.3
        return [until for until in self.leases.values() if until > now]

    async def live_until(self) -> float | None:
        live = self._live()
        return max(live) if live else None

    async def active(self) -> bool:
        return bool(self._live())


def test_no_other_writer_means_no_wait():
    registry = Registry({})
    started = time.monotonic()
    assert asyncio.run(_await_stopped_writers(registry, None)) is False
    assert time.monotonic() - started < 0.2 and registry.reads == 1


def test_a_writer_killed_before_it_deregistered_is_waited_for_until_its_lease_lapses():
    # GIVEN a registration whose writer died (its lease is not renewed)
    registry = Registry({"killed": time.time() + 0.4})
    lines: list[str] = []
    # WHEN the final sweep asks / THEN it waits for the lease to lapse, says so, and then finds no one live
    assert asyncio.run(_await_stopped_writers(registry, lines.append)) is False
    assert registry.leases["killed"] <= time.time()
    assert len(lines) == 1 and "lease to lapse" in lines[0]


def test_a_live_writer_is_not_waited_for_longer_than_its_lease_seen_first():
    # GIVEN another backfill that keeps renewing its lease
    registry = Registry({"running": time.time() + 0.3}, renewing={"running"})
    started = time.monotonic()
    # WHEN the final sweep asks / THEN it gives up once the first lease end passed: a live writer is still there
    assert asyncio.run(_await_stopped_writers(registry, None)) is True
    assert time.monotonic() - started < 1.5
