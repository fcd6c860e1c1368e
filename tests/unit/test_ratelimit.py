"""The backfill's rate limiter, on a fake clock: never more than the rate in any second."""

from __future__ import annotations

import asyncio
import random

import pytest

from backfill.ratelimit import RateLimiter


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_never_more_than_the_rate_in_any_one_second_window():
    # GIVEN a limiter of 100 items/s on a fake clock, and random acquire sizes and pauses
    fake = FakeTime()
    limiter = RateLimiter(100, clock=fake.clock, sleep=fake.sleep)
    rng = random.Random(4)
    grants: list[tuple[float, int]] = []

    async def run() -> None:
        for _ in range(2000):
            n = rng.randint(1, 40)
            await limiter.acquire(n)
            grants.append((fake.now, n))
            if rng.random() < 0.1:
                fake.now += rng.random() * 0.5

    asyncio.run(run())
    # WHEN every one-second window starting at a grant is examined
    # THEN none holds more than 100 items
    for start, _ in grants:
        total = sum(n for t, n in grants if start <= t < start + 1.0)
        assert total <= 100
    # AND the limiter is not needlessly slow: the long-run rate is close to the limit
    elapsed = grants[-1][0] - grants[0][0]
    assert sum(n for _, n in grants) / elapsed > 80


def test_unlimited_never_waits():
    fake = FakeTime()
    limiter = RateLimiter(None, clock=fake.clock, sleep=fake.sleep)
    asyncio.run(limiter.acquire(10**6))
    assert fake.now == 0.0


def test_bad_rate_and_oversized_acquire_are_refused():
    with pytest.raises(ValueError):
        RateLimiter(0)
    limiter = RateLimiter(10)
    with pytest.raises(ValueError):
        asyncio.run(limiter.acquire(11))
