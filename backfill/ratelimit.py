"""Rate limiting for the backfill: never more than N items in any second.

A token bucket that starts full lets a burst plus the refill through in one
second (up to twice the rate). The promise here is stricter: over *any*
one-second window, at most `rate` items. So this is a sliding-window limiter:
it remembers the grants of the last second and makes `acquire(n)` wait until
granting `n` more keeps that window's total within the rate.

The clock and the sleep are injected, so tests drive time instead of waiting.
With several worker processes each gets `rate / workers`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

WINDOW_S = 1.0


class RateLimiter:
    def __init__(
        self,
        rate_per_s: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate_per_s is not None and rate_per_s <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate_per_s
        self.clock = clock
        self.sleep = sleep
        self._grants: deque[tuple[float, int]] = deque()
        self._in_window = 0
        self._lock = asyncio.Lock()

    @property
    def max_chunk(self) -> int:
        """The largest single acquire that can ever be granted."""
        return max(1, int(self.rate)) if self.rate else 1 << 30

    def _expire(self, now: float) -> None:
        while self._grants and self._grants[0][0] <= now - WINDOW_S:
            _, n = self._grants.popleft()
            self._in_window -= n

    async def acquire(self, n: int) -> None:
        """Wait until `n` items (n <= max_chunk) may go, then record them."""
        if self.rate is None or n <= 0:
            return
        if n > self.max_chunk:
            raise ValueError(f"cannot acquire {n} at once with a rate of {self.rate}/s")
        async with self._lock:
            while True:
                now = self.clock()
                self._expire(now)
                if self._in_window + n <= self.rate:
                    self._grants.append((now, n))
                    self._in_window += n
                    return
                # Wait until enough of the oldest grants leave the window.
                needed = self._in_window + n - self.rate
                freed = 0
                wake_at = now
                for granted_at, count in self._grants:
                    freed += count
                    wake_at = granted_at + WINDOW_S
                    if freed >= needed:
                        break
                await self.sleep(max(wake_at - now, 1e-4))
