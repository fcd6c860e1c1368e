"""Pacing the backfill: a hard rate cap, and a back-off from throttling that recovers.

`RateLimiter` (``--rate``): never more than N items in any second. A token
bucket that starts full lets a burst plus the refill through in one second
(up to twice the rate). The promise here is stricter: over *any* one-second
window, at most `rate` items. So this is a sliding-window limiter: it
remembers the grants of the last second and makes `acquire(n)` wait until
granting `n` more keeps that window's total within the rate. With several
worker processes each gets `rate / workers`.

`ThrottleGovernor`: how many writes a worker keeps in flight. Every attempt
of a request made under one of its slots is seen (a botocore `needs-retry`
hook), and the number of slots follows the *share* of throttled attempts
over the last `window` of them: at `threshold` or more it halves (once per
window of fresh evidence), below it grows back by one slot per `limit`
served answers, up to the ceiling.

`install_retries`: each throttled or failed request is retried by
botocore's standard mode (its retry conditions and retry quota), but on
DynamoDB's own delays: full jitter over 50 ms doubling per attempt, the base
botocore's DynamoDB policy has always used (`_retry.json`), instead of the
standard mode's one second for every service. A page is written only when
its slowest item is, and a worker has two pages between read and written
(`backfill.worker`), so every retry delay stalls half of its pipeline: with
3% of the requests failing nearly every page has one, and the one-second
base alone cost a third of the speed (1,000 items: 66 s instead of 37-44 s;
with 50 ms, 37 s). Persistent throttling is the governor's to slow down for.

Why not botocore's adaptive retry mode, which the worker used before: it
cuts the send rate of the whole client (checkpoints and lease renewals
included) on *every* throttled answer, to 0.7x the measured rate, and
regrows it along a cubic curve over seconds. Throttles that come as a small
share of any load keep cutting it before it has regrown: with 2% of the
answers throttled its token bucket settles at 13-19 requests/s whatever the
table could take (its own `CubicCalculator` in a closed loop, for an engine
answering 64 or 1,600 requests/s; measured on DynamoDB Local: 10-30). A
production backfill is throttled now and then all the time; with 3% of its
requests throttled or failed it ran 13x slower (issue 14,
bench/backfill_faults_bench.py). Sparse throttling is the table working at
capacity, not a reason to slow down; a throttled share that stays high is.

The clock and the sleep of `RateLimiter` are injected, and the governor
counts answers, not seconds, so tests drive both without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

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


# What DynamoDB answers when a table, an index or the account is over its capacity.
THROTTLING_CODES = frozenset(
    {"ThrottlingException", "ProvisionedThroughputExceededException", "RequestLimitExceeded"}
)
# The governor whose slot the current task holds (its requests' answers are its evidence).
_GOVERNED: contextvars.ContextVar[ThrottleGovernor | None] = contextvars.ContextVar(
    "dynashift_throttle_governor", default=None
)


class ThrottleGovernor:
    """Slots for writes in flight: halved while throttling persists, regrown as soon as it stops."""

    def __init__(self, ceiling: int, *, floor: int = 1, window: int = 50, threshold: float = 0.1) -> None:
        if not 1 <= floor <= ceiling:
            raise ValueError(f"need 1 <= floor <= ceiling, not {floor} and {ceiling}")
        self.ceiling = ceiling
        self.floor = floor
        self.window = window
        self.threshold = threshold
        self.limit = ceiling
        self.in_flight = 0
        self.cuts = 0  # how often the limit was halved
        self.throttled = 0  # throttled attempts seen, in all
        self._recent: deque[bool] = deque(maxlen=window)  # True: throttled
        self._recent_throttled = 0
        self._credit = 0  # unthrottled answers since the limit last changed
        self._waiters: deque[asyncio.Future[None]] = deque()

    # ------------------------------------------------------------- evidence
    def record(self, throttled: bool) -> None:
        """One answer to a request made under a slot: throttled, or served."""
        if len(self._recent) == self.window:
            self._recent_throttled -= self._recent[0]
        self._recent.append(throttled)
        self._recent_throttled += throttled
        if throttled:
            self.throttled += 1
            if len(self._recent) == self.window and self._recent_throttled >= self.threshold * self.window:
                # Throttling persists: half the writes. The evidence is spent, so one
                # burst cuts once, and the next cut needs a window of new answers.
                self.limit = max(self.floor, self.limit // 2)
                self.cuts += 1
                self._recent.clear()
                self._recent_throttled = 0
                self._credit = 0
            return
        if self._recent_throttled >= self.threshold * len(self._recent):
            return  # still throttled too often to add writes
        self._credit += 1
        if self.limit < self.ceiling and self._credit >= self.limit:
            self.limit += 1  # additive increase: one slot per round of answers
            self._credit = 0
            self._wake()

    # ---------------------------------------------------------------- slots
    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of `limit` slots around a write (its retries included)."""
        while self.in_flight >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then cancelled: pass the free slot on
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.in_flight += 1
        token = _GOVERNED.set(self)
        try:
            yield
        finally:
            _GOVERNED.reset(token)
            self.in_flight -= 1
            self._wake()

    def _wake(self) -> None:
        free = self.limit - self.in_flight
        for waiter in list(self._waiters):
            if free <= 0:
                break
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    # ------------------------------------------------------------- the hook
    def install(self, client: Any) -> None:
        """See every attempt's answer of the requests this governor's slots make."""
        client.meta.events.register("needs-retry.dynamodb", self._on_answer, unique_id=f"dynashift-governor-{id(self)}")

    def _on_answer(self, response: Any = None, caught_exception: Any = None, **_: Any) -> None:
        if _GOVERNED.get() is not self or response is None:
            return None  # not ours, or no answer at all (a network error): no evidence either way
        status = response[1].get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = response[1].get("Error", {}).get("Code")
        if code in THROTTLING_CODES:
            self.record(True)
        elif status < 500:
            self.record(False)  # served (a failed condition too); a 5xx says nothing about capacity
        return None  # never decides whether botocore retries


RETRY_BASE_S = 0.05  # botocore's delay base for DynamoDB (`_retry.json`), doubled per attempt
RETRY_MAX_S = 20.0  # no single wait longer than this (standard mode's cap)


class DynamoDBBackoff:
    """Full jitter: a random share of `base_s * 2**(attempt - 1)`, at most `max_s`."""

    def __init__(self, base_s: float = RETRY_BASE_S, max_s: float = RETRY_MAX_S,
                 rand: Callable[[], float] = random.random) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.rand = rand

    def delay_amount(self, context: Any) -> float:
        return self.rand() * min(self.max_s, self.base_s * 2 ** (context.attempt_number - 1))


def install_retries(client: Any, backoff: DynamoDBBackoff | None = None) -> None:
    """Retry `client`'s requests as standard mode does, with `backoff`'s delays (DynamoDB's base).

    The standard handler botocore registered is replaced by one built from the same
    parts (conditions, quota) and the same number of attempts (the client's config).
    """
    from aiobotocore.retries.standard import AioRetryHandler, AioRetryPolicy, AioStandardRetryConditions
    from botocore.retries import quota
    from botocore.retries.standard import RetryEventAdapter, RetryQuotaChecker

    retries = client.meta.config.retries
    if retries.get("mode") != "standard":
        raise ValueError(f"install_retries replaces standard retries, not {retries.get('mode')!r}")
    retry_quota = RetryQuotaChecker(quota.RetryQuota())
    handler = AioRetryHandler(
        retry_policy=AioRetryPolicy(
            retry_checker=AioStandardRetryConditions(max_attempts=retries["total_max_attempts"]),
            retry_backoff=backoff or DynamoDBBackoff(),
        ),
        retry_event_adapter=RetryEventAdapter(),
        retry_quota=retry_quota,
    )
    events = client.meta.events
    events.unregister("needs-retry.dynamodb", unique_id="retry-config-dynamodb")
    events.register("needs-retry.dynamodb", handler.needs_retry, unique_id="retry-config-dynamodb")
    events.register("after-call.dynamodb", retry_quota.release_retry_quota)
