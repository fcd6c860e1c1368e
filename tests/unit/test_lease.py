"""The backfill's stale-writer lease: fence, late renewals, and the per-request gate."""

from __future__ import annotations

import asyncio

import pytest

from backfill.lease import PAGE_EPOCH, LeaseLapsed, StaleWriterLease
from shared.core.errors import ConfigError, TransientError


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Registry:
    """Records registrations; each answer arrives `delay` clock-seconds after it was sent."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.delay = 0.0
        self.fail_next = 0
        self.registered: list[float] = []
        self.deregistered = False

    async def register(self, writer_id, kind, lease_s, *, reads_since=None):
        if self.fail_next:
            self.fail_next -= 1
            raise TransientError("register stale writer: ThrottlingException")
        until = self.clock() + lease_s
        self.registered.append(until)
        self.clock.now += self.delay
        return until

    async def deregister(self, writer_id):
        self.deregistered = True


def make(lease_s: float = 30.0, fence_s: float = 5.0, guard_s: float = 3.0) -> tuple[StaleWriterLease, Clock, Registry]:
    clock = Clock()
    registry = Registry(clock)
    return StaleWriterLease(registry, "w1", lease_s=lease_s, fence_s=fence_s, guard_s=guard_s, clock=clock), clock, registry


def run(coroutine):
    return asyncio.run(coroutine)


async def pending_after(task: asyncio.Future, rounds: int = 5) -> bool:
    for _ in range(rounds):
        await asyncio.sleep(0.06)
    return not task.done()


def test_no_page_is_read_before_the_fence_is_over():
    lease, clock, _ = make()

    async def scenario() -> tuple[bool, int]:
        await lease.renew()
        ready = asyncio.ensure_future(lease.ready())
        held = await pending_after(ready)
        clock.now += 5.0
        return held, await asyncio.wait_for(ready, 2)

    held, epoch = run(scenario())
    assert held and epoch == 1


def test_a_timely_renewal_keeps_the_pages_read_under_it():
    lease, clock, _ = make()

    async def scenario() -> int:
        await lease.renew()
        clock.now += 5.0
        epoch = await lease.ready()
        clock.now += 10.0  # renewed a third of a lease later, well before the guard
        await lease.renew()
        clock.now += 17.0  # past the first lease's end, within the renewed one
        await asyncio.wait_for(lease.gate(epoch), 1)
        return epoch

    assert run(scenario()) == lease.epoch == 1 and lease.lapses == 0


def test_a_late_renewal_drops_every_page_read_before_it_and_fences_again():
    lease, clock, registry = make()

    async def scenario() -> tuple[bool, bool]:
        await lease.renew()
        clock.now += 5.0
        epoch = await lease.ready()
        clock.now += 26.0  # the renewal is answered within the guard of the old lease's end
        gate = asyncio.ensure_future(lease.gate(epoch))
        held = await pending_after(gate)
        await lease.renew()
        with pytest.raises(LeaseLapsed):
            await asyncio.wait_for(gate, 2)
        ready = asyncio.ensure_future(lease.ready())
        fenced = await pending_after(ready)
        clock.now += 5.0
        assert await asyncio.wait_for(ready, 2) == epoch + 1
        return held, fenced

    held, fenced = run(scenario())
    assert held and fenced and lease.lapses == 1 and len(registry.registered) == 2


def test_a_renewal_that_is_slow_in_flight_counts_as_a_lapse():
    # GIVEN a renewal sent in time whose answer comes back too late to tell
    lease, clock, registry = make()

    async def scenario() -> int:
        await lease.renew()
        clock.now += 20.0
        registry.delay = 8.0  # answered 28 s into a 30 s lease, inside the 3 s guard
        await lease.renew()
        return lease.epoch

    assert run(scenario()) == 2 and lease.lapses == 1


def test_requests_outside_a_page_are_never_held():
    lease, clock, _ = make()
    calls: list[str] = []

    class Events:
        def register_last(self, name, handler, unique_id=None):
            calls.append(name)
            self.handler = handler

    class Client:
        class meta:
            events = Events()

    async def scenario() -> bool:
        await lease.renew()
        lease.install(Client)
        clock.now += 40.0  # the lease is over: a page request would be held
        await asyncio.wait_for(Client.meta.events.handler(request=None), 1)
        token = PAGE_EPOCH.set(lease.epoch)
        try:
            page_request = asyncio.ensure_future(Client.meta.events.handler(request=None))
        finally:
            PAGE_EPOCH.reset(token)
        held = await pending_after(page_request)
        page_request.cancel()
        return held

    assert run(scenario())
    assert calls == ["before-send.dynamodb"]


def test_a_broken_registry_stops_the_pages():
    lease, clock, _ = make()

    async def scenario() -> None:
        await lease.renew()
        clock.now += 5.0
        epoch = await lease.ready()
        lease.broken = RuntimeError("AccessDenied on the control table")
        await lease.gate(epoch)

    with pytest.raises(RuntimeError, match="AccessDenied"):
        run(scenario())


def test_a_lease_too_short_for_the_margin_is_refused_with_the_settings_named():
    with pytest.raises(ConfigError, match="backfill_lease_s=4 .*consistency_margin_s=3"):
        make(lease_s=4.0, guard_s=3.0)
