"""The mirror decides tombstone-or-delete per removal, from a registry answer never older than the refresh period.

Race 2/3/4 under load: a batch that takes longer than `stale_writer_refresh_s`
must not remove a key without a tombstone on the strength of a registry read
made at the batch's start, because a backfill may have registered, waited out
its fence and read the key meanwhile.
"""

from __future__ import annotations

import asyncio

import pytest

import shared.mirror as mirror_module
from shared.apply import Applier
from shared.mirror import MirrorEngine
from shared.settings import load_settings


class FakeRegistry:
    def __init__(self) -> None:
        self.active_now = False
        self.reads = 0

    async def active(self) -> bool:
        self.reads += 1
        return self.active_now


def test_registry_answer_is_re_read_once_older_than_the_refresh_period(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(mirror_module.time, "monotonic", lambda: clock[0])
    engine = MirrorEngine(load_settings(stale_writer_refresh_s=2))
    engine.registry = FakeRegistry()
    try:
        # GIVEN no stale writer at the batch's start
        assert engine.loop.run_until_complete(engine._stale_writers_about()) is False
        # WHEN a backfill registers and the batch is still running 1 s later: the answer may be reused
        engine.registry.active_now = True
        clock[0] += 1.0
        assert engine.loop.run_until_complete(engine._stale_writers_about()) is False
        assert engine.registry.reads == 1
        # THEN past the refresh period the next removal asks again and sees the backfill
        clock[0] += 1.5
        assert engine.loop.run_until_complete(engine._stale_writers_about()) is True
        assert engine.registry.reads == 2
    finally:
        engine.close()


def test_the_applier_asks_its_source_before_each_removal_decision() -> None:
    answers = iter([False, True])

    async def source() -> bool:
        return next(answers)

    applier = Applier(load_settings(), None, None, None, tombstone_source=source)  # type: ignore[arg-type]
    assert asyncio.run(applier._tombstones_now()) is False
    assert asyncio.run(applier._tombstones_now()) is True
    assert applier.tombstones is True
