"""The mirror decides tombstone-or-delete per removal, from a registry answer never older than the refresh period.

Race 2/3/4 under load: a batch that takes longer than `stale_writer_refresh_s`
must not remove a key without a tombstone on the strength of a registry read
made at the batch's start, because a backfill may have registered, waited out
its fence and read the key meanwhile.
"""

from __future__ import annotations

import asyncio

from shared.core.settings import load_settings
from shared.protocol.apply import Applier
from shared.store.control import StaleWriterWatch


class FakeRegistry:
    def __init__(self) -> None:
        self.active_now = False
        self.reads = 0

    async def active(self) -> bool:
        self.reads += 1
        return self.active_now


def test_registry_answer_is_re_read_once_older_than_the_refresh_period() -> None:
    clock = [1000.0]
    registry = FakeRegistry()
    watch = StaleWriterWatch(registry, refresh_s=2, monotonic=lambda: clock[0])  # type: ignore[arg-type]
    # GIVEN no stale writer at the batch's start
    assert asyncio.run(watch.stale_writers_about()) is False
    # WHEN a backfill registers and the batch is still running 1 s later: the answer may be reused
    registry.active_now = True
    clock[0] += 1.0
    assert asyncio.run(watch.stale_writers_about()) is False
    assert registry.reads == 1
    # THEN past the refresh period the next removal asks again and sees the backfill
    clock[0] += 1.5
    assert asyncio.run(watch.stale_writers_about()) is True
    assert registry.reads == 2


def test_the_answer_is_as_old_as_the_read_was_when_sent() -> None:
    clock = [1000.0]

    class SlowRegistry(FakeRegistry):
        async def active(self) -> bool:
            clock[0] += 1.5  # the read takes 1.5 s to come back (throttling, a loaded engine)
            return await super().active()

    registry = SlowRegistry()
    watch = StaleWriterWatch(registry, refresh_s=2, monotonic=lambda: clock[0])  # type: ignore[arg-type]
    assert asyncio.run(watch.stale_writers_about()) is False
    # 1 s after the answer came back it is 2.5 s old from its send: read again
    registry.active_now = True
    clock[0] += 1.0
    assert asyncio.run(watch.stale_writers_about()) is True
    assert registry.reads == 2


def test_the_applier_asks_its_source_before_each_removal_decision() -> None:
    answers = iter([False, True])

    async def source() -> bool:
        return next(answers)

    applier = Applier(load_settings(), None, None, None, tombstone_source=source)  # type: ignore[arg-type]
    assert asyncio.run(applier.tombstones_now()) is False
    assert asyncio.run(applier.tombstones_now()) is True
    assert applier.tombstones is True
