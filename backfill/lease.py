"""A backfill worker's stale-writer lease, and the gate each of its page requests passes.

The mirror leaves tombstones only while it sees a live stale writer in the
registry (`shared.store.control.StaleWriterRegistry`), and it trusts its answer for
up to `stale_writer_refresh_s`. So a backfill write is safe only if it lands
while the worker's registration is live, and only if the page it writes was
read after the registration's fence. Two things break that unless guarded:

* a renewal that comes late (throttling, botocore backing off between
  retries, a 5xx storm): the lease lapses while the worker is alive, the mirror
  stops leaving tombstones, and the worker's next stale write resurrects
  what the mirror deleted meanwhile;
* botocore's own retries: a request whose first attempt was fine may be sent
  again seconds later, after the lease ran out.

`StaleWriterLease` guards both. Every request a page makes (scan, re-read,
conditional write, quarantine record) runs with the page's *epoch* in a
context variable, and a `before-send` hook (called by botocore for each
attempt, after its retry back-off) lets it through only while the lease
is past its fence and will outlive the request by `guard_s`
(`consistency_margin_s`: clock skew plus time in flight). A renewal answered
later than that counts as a lapse: the epoch moves on, a new fence starts,
and every page read in an older epoch raises `LeaseLapsed`, is dropped
unwritten and read again from its unit's checkpoint. Requests outside a page
(claims, checkpoints, renewals) are never held.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from shared.core.errors import ConfigError, DynashiftError
from shared.store.control import StaleWriterRegistry

# The epoch of the page the current task works on (None: not a page request).
PAGE_EPOCH: contextvars.ContextVar[int | None] = contextvars.ContextVar("dynashift_page_epoch", default=None)

RETRY_AFTER_FAILURE_S = 0.25
WAIT_STEP_S = 0.05


class LeaseLapsed(DynashiftError):
    """The stale-writer lease may have lapsed after this page was read: read it again."""


class StaleWriterLease:
    def __init__(
        self,
        registry: StaleWriterRegistry,
        owner: str,
        *,
        lease_s: float,
        fence_s: float,
        guard_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if guard_s >= lease_s * 2 / 3:
            # Renewed every third of the lease, it must still hold guard_s ahead of each request.
            raise ConfigError(
                f"backfill_lease_s={lease_s:g} is too short for consistency_margin_s={guard_s:g}: "
                f"it must be more than 1.5x the margin"
            )
        self.registry = registry
        self.owner = owner
        self.lease_s = lease_s
        self.fence_s = fence_s
        self.guard_s = guard_s
        self.clock = clock
        self.epoch = 0
        self.until = 0.0  # lease end as registered (this host's clock)
        self.fenced_at = float("inf")  # nothing is read or written before this
        self.lapses = 0
        self.broken: BaseException | None = None  # renewals failed for good

    # ------------------------------------------------------------ registry side
    async def renew(self, reads_since: float | None = None) -> None:
        """Take or renew the registration; a renewal answered too late starts a new epoch."""
        until = await self.registry.register(self.owner, "backfill", self.lease_s, reads_since=reads_since)
        answered = self.clock()
        if answered + self.guard_s >= self.until:
            # First registration, or the old lease may have run out before this
            # one landed: the mirror may have removed without tombstones since.
            if self.epoch:
                self.lapses += 1
            self.epoch += 1
            self.fenced_at = answered + self.fence_s
        self.until = until

    def renew_in(self, failed: bool = False) -> float:
        return min(RETRY_AFTER_FAILURE_S, self.lease_s / 10) if failed else self.lease_s / 3

    async def close(self) -> None:
        await self.registry.deregister(self.owner)

    # -------------------------------------------------------------- page side
    def _usable(self, now: float) -> bool:
        return now >= self.fenced_at and now + self.guard_s < self.until

    async def ready(self) -> int:
        """Wait until a page may be read (past the fence, lease holding); its epoch."""
        return await self._wait_usable(None)

    async def gate(self, epoch: int) -> None:
        """Hold a request of a page of `epoch` until the lease will outlive it."""
        await self._wait_usable(epoch)

    async def _wait_usable(self, epoch: int | None) -> int:
        """Wait until the lease is usable; with `epoch`, only while it is still the current one."""
        while True:
            if self.broken is not None:
                raise self.broken
            if epoch is not None and epoch != self.epoch:
                raise LeaseLapsed(f"stale-writer lease of {self.owner} lapsed after the page was read")
            if self._usable(self.clock()):
                return self.epoch
            await asyncio.sleep(WAIT_STEP_S)

    def install(self, client: Any) -> None:
        install_page_gate(client, self.gate)


class PageLease(Protocol):
    """What a worker's pages need of a lease (this module's, or a Lambda run's registration)."""

    async def ready(self) -> int: ...

    async def gate(self, epoch: int) -> None: ...


def install_page_gate(client: Any, gate: Callable[[int], Awaitable[None]]) -> None:
    """Pass every attempt of every request the client sends within a page through `gate`."""

    async def before_send(**_: Any) -> None:
        epoch = PAGE_EPOCH.get()
        if epoch is not None:
            await gate(epoch)
        return None  # let botocore send the request

    client.meta.events.register_last("before-send.dynamodb", before_send, unique_id=f"dynashift-gate-{id(gate)}")
