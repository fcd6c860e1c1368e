"""Cutover, rollback and finalize: the switch protocol as a persisted state machine.

The protocol (design-notes.md, "Cutover, as a protocol"), for a cutover;
a rollback is the mirror image (`new` → `freeze` → `old`, draining the
reverse consumer first):

1. **Gate**, before any downtime: the mode is `old`; the last `verify` is
   clean and younger than `verify_max_age_s`; quarantine is empty (or the
   operator accepts it); every legacy table has a completed backup younger
   than `backup_max_age_s` (or `--skip-backup-check`); and both mirror
   consumers catch up with their streams' current ends within `--max-lag`
   (so the forward mirror's lag is bounded and reverse replication is
   running). Every failing check is reported, not just the first.
2. **freeze** (towards `new`) is written. From here on a hard deadline,
   `freeze_started_at + timeout`, bounds the switch.
3. Wait until `freeze_started_at + mode_cache_age_s +
   cutover_inflight_grace_s`: after that no application instance can still
   hold a cached `old`, nor have a legacy write in flight that it started
   under it.
4. **Drain exactly, per shard**: wait until the forward consumer has applied
   every record of every legacy shard up to the ends read *after* step 3,
   then until the reverse consumer has consumed (skipped: it is gated off)
   every sc-main record up to the ends read *after* the forward drain (the
   forward mirror writes sc-main until it is drained). A sentinel written to
   one key would prove nothing about the other shards. `shared.streams.drain`
   measures it per record, from the receipts the handler writes, so it
   holds whether Lambda's event source mappings or the local runners consume.
5. **new** is written. Every record created before it was consumed by the
   consumer that was active when it was created, so nothing the forward
   mirror (or the backfill) wrote into sc-main can echo back, and reverse
   replication, already running, takes over.
6. If the deadline passes during 3–4, the mode returns to `old`
   automatically and the reason is stored and shown. Going back from a
   freeze never needs a drain: the consumer that was active before the
   freeze is active again afterwards, and the other one skips whatever it
   has not consumed yet.

**Persistence.** Every step is written into the mode item's `extra`
(`op`, `step`, `freeze_started_at`, `deadline`, ...) *before* the next
action, through `ModeStore.write` with optimistic concurrency, so two
operators cannot switch at once and a crashed switch is never forgotten.
`resume()` reads the item: not in `freeze` means nothing is half done
(consistent `old` or `new`); in `freeze` it continues from the recorded
step if the deadline has not passed (the cache wait and the drains are
idempotent), otherwise it goes back to where the switch started. The
measured freeze window runs from the write of `freeze` to the write that
ends it, across a crash if there was one.

**Crash injection.** `crash_after=<step>` raises `CrashInjected` (a
`BaseException`, so nothing here catches it) right after that step was
persisted: the tests' stand-in for a process killed between two steps.

**Finalize** (after the monitoring period, mode `new`): refuses while a
backfill is registered as a stale writer; sweeps every tombstone; records
in the mode item that reverse replication is stopped (the reverse consumer
reads that item strongly per batch) and that the migration is complete;
returns the AWS commands that disable the reverse event source mapping and,
later, retire the legacy tables. It never deletes a table itself.

Everything that touches AWS goes through `Ports` (mode store, drain,
clock), so the state machine is unit-tested with fakes. This module is the
state machine; the gate's checks are `shared.cutover.gate`, the real ports
`shared.cutover.aws_ports`, and the entry points (`run_switch`, `finalize`,
`force_mode`) `shared.cutover.operations`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Protocol

from shared.core.errors import DynashiftError, UsageError
from shared.store.mode import Mode, ModeState

DRAIN_POLL_S = 0.1  # each drain poll adds up to this to the freeze window
FORWARD = "forward"
REVERSE = "reverse"

# Persisted step names, in protocol order.
GATE = "gate"  # checked; nothing written yet (the mode is still the origin)
FROZEN = "frozen"
CACHE_WAITED = "cache_waited"
DRAINED_FORWARD = "drained_forward"
DRAINED_REVERSE = "drained_reverse"
SWITCHED = "switched"
ABORTED = "aborted"


class CrashInjected(BaseException):
    """Test hook: the process 'dies' right after the named step was persisted."""


class CutoverError(DynashiftError):
    """A switch could not start or go on (gate refused, another switch in the way)."""

    exit_code = 1


class SwitchAborted(DynashiftError):
    """The switch went back to where it started (timeout, drain failure); the message says why."""

    exit_code = 1


@dataclass(frozen=True)
class Switch:
    """One direction of the protocol."""

    op: str  # "cutover" or "rollback"
    origin: Mode
    target: Mode
    drains: tuple[str, str]  # the active consumer first, then the one that must have skipped everything

    @property
    def steps(self) -> tuple[str, ...]:
        return (GATE, FROZEN, CACHE_WAITED, *(f"drained_{d}" for d in self.drains), SWITCHED)


CUTOVER = Switch("cutover", Mode.OLD, Mode.NEW, (FORWARD, REVERSE))
ROLLBACK = Switch("rollback", Mode.NEW, Mode.OLD, (REVERSE, FORWARD))
SWITCHES = {s.op: s for s in (CUTOVER, ROLLBACK)}
CRASH_POINTS = tuple(dict.fromkeys(CUTOVER.steps + ROLLBACK.steps))


def switch_of(state: ModeState) -> Switch:
    """Which switch a `freeze` belongs to: recorded `op`, else its direction."""
    op = state.extra.get("op")
    if op in SWITCHES:
        return SWITCHES[op]
    return CUTOVER if state.towards == Mode.NEW else ROLLBACK


class Ports(Protocol):
    """What the protocol needs from the world (AWS in production, fakes in unit tests)."""

    def read_mode(self) -> ModeState: ...

    def write_mode(self, state: ModeState, expected_version: int) -> ModeState: ...

    def wait_drained(self, direction: str, timeout_s: float) -> bool:
        """Wait until `direction`'s consumer has consumed everything in its streams; False on timeout."""

    def wait_caught_up(self, direction: str, timeout_s: float) -> bool:
        """Wait until `direction`'s consumer reached every shard's end *as of the call*; False on timeout.

        The gate's lag measure: unlike `wait_drained`, the target does not move
        while the application keeps writing."""

    def clock(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


@dataclass
class GateCheck:
    name: str
    ok: bool
    detail: str


@dataclass
class SwitchReport:
    op: str
    outcome: str  # "switched", "aborted", "nothing" (resume with no switch in progress)
    mode: Mode
    freeze_window_s: float | None = None
    reason: str | None = None
    resumed: bool = False
    gate: list[GateCheck] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds since freeze


@dataclass
class SwitchOptions:
    timeout_s: float
    cache_age_s: float  # mode_cache_age_s + cutover_inflight_grace_s: how long a writer may still use the old mode
    crash_after: str | None = None

    def __post_init__(self) -> None:
        if self.crash_after is not None and self.crash_after not in CRASH_POINTS:
            raise UsageError(f"crash_after: unknown step {self.crash_after!r} (steps: {', '.join(CRASH_POINTS)})")
        if self.timeout_s <= self.cache_age_s:
            raise UsageError(
                f"--timeout {self.timeout_s:g}s must exceed the mode cache age ({self.cache_age_s:g}s): "
                "the freeze alone lasts that long"
            )


Progress = Callable[[str], None]


class SwitchProtocol:
    """Runs one switch (or its resumption) against `ports`."""

    def __init__(self, ports: Ports, options: SwitchOptions, progress: Progress | None = None) -> None:
        self.ports = ports
        self.options = options
        self.progress = progress or (lambda _line: None)

    # ----------------------------------------------------------------- helpers
    def _crash_point(self, step: str) -> None:
        if self.options.crash_after == step:
            raise CrashInjected(step)

    def _persist(self, state: ModeState, **extra: Any) -> ModeState:
        """Write the mode item (same or new mode) with more `extra`; optimistic."""
        new_state = replace(state, extra={**state.extra, **extra})
        return self.ports.write_mode(new_state, state.version)

    def _elapsed(self, state: ModeState) -> float:
        return round(self.ports.clock() - float(state.extra["freeze_started_at"]), 3)

    # ---------------------------------------------------------------- protocol
    def start(self, switch: Switch, state: ModeState, gate: list[GateCheck]) -> SwitchReport:
        """Freeze and run the switch; `state` is the mode read before the gate."""
        self._crash_point(GATE)
        now = self.ports.clock()
        frozen = ModeState(
            mode=Mode.FREEZE,
            towards=switch.target,
            version=state.version,
            since=now,
            extra={
                **{k: v for k, v in state.extra.items() if k in PERSISTENT_EXTRA},
                "op": switch.op,
                "step": FROZEN,
                "freeze_started_at": now,
                "deadline": now + self.options.timeout_s,
                "timeout_s": self.options.timeout_s,
                "cache_age_s": self.options.cache_age_s,
                "reason": None,
            },
        )
        state = self.ports.write_mode(frozen, state.version)
        self.progress(f"{switch.op}: freeze written (towards {switch.target}); writes are held from now on")
        self._crash_point(FROZEN)
        report = self._run_frozen(switch, state)
        report.gate = gate
        return report

    def resume(self, state: ModeState) -> SwitchReport:
        """Go on with (or back from) a switch that a crash interrupted."""
        if state.mode != Mode.FREEZE:
            return SwitchReport(op=str(state.extra.get("op") or "-"), outcome="nothing", mode=state.mode,
                                freeze_window_s=_float_or_none(state.extra.get("freeze_window_s")),
                                reason=state.extra.get("reason"), resumed=True)
        switch = switch_of(state)
        if "freeze_started_at" not in state.extra:  # written by hand (`mode set freeze --force`)
            state = self._persist(state, op=switch.op, step=FROZEN, freeze_started_at=state.since,
                                  deadline=state.since + self.options.timeout_s)
        self.progress(f"{switch.op}: resuming after step {state.extra.get('step')!r}")
        report = self._run_frozen(switch, state)
        report.resumed = True
        return report

    def abort(self, state: ModeState, reason: str) -> SwitchReport:
        """From `freeze`, back to where the switch started (no drain needed, see the module note)."""
        switch = switch_of(state)
        freeze_started_at = float(state.extra.get("freeze_started_at", state.since))
        now = self.ports.clock()
        window = round(now - freeze_started_at, 3)
        back = ModeState(
            mode=switch.origin,
            towards=None,
            version=state.version,
            since=now,
            extra={**state.extra, "step": ABORTED, "reason": reason, "freeze_window_s": window, "finished_at": now},
        )
        self.ports.write_mode(back, state.version)
        self.progress(f"{switch.op}: back to {switch.origin} after {window:.2f}s of freeze: {reason}")
        return SwitchReport(op=switch.op, outcome="aborted", mode=switch.origin, freeze_window_s=window,
                            reason=reason)

    def _run_frozen(self, switch: Switch, state: ModeState) -> SwitchReport:
        timings: dict[str, float] = {}
        extra = state.extra
        deadline = float(extra["deadline"])
        step = extra.get("step", FROZEN)
        order = switch.steps
        done = order.index(step) if step in order else order.index(FROZEN)

        # 3. cache wait: idempotent, measured from the freeze write itself.
        if done < order.index(CACHE_WAITED):
            wait_until = float(extra["freeze_started_at"]) + float(extra.get("cache_age_s", self.options.cache_age_s))
            if wait_until > deadline:
                return self.abort(state, "the mode cache age is longer than the timeout")
            pause = wait_until - self.ports.clock()
            if pause > 0:
                self.progress(f"{switch.op}: waiting {pause:.2f}s, the mode cache age, for every writer to see freeze")
                self.ports.sleep(pause)
            state = self._persist(state, step=CACHE_WAITED)
            timings[CACHE_WAITED] = self._elapsed(state)
            self._crash_point(CACHE_WAITED)

        # 4. exact per-shard drains, active consumer first.
        for direction in switch.drains:
            drained_step = f"drained_{direction}"
            if done >= order.index(drained_step):
                continue
            remaining = deadline - self.ports.clock()
            if remaining <= 0 or not self.ports.wait_drained(direction, remaining):
                return self.abort(
                    state,
                    f"timeout: the {direction} mirror did not drain every shard within the "
                    f"{float(extra.get('timeout_s', self.options.timeout_s)):g}s limit",
                )
            state = self._persist(state, step=drained_step)
            timings[drained_step] = self._elapsed(state)
            self.progress(f"{switch.op}: {direction} mirror drained on every shard ({timings[drained_step]:.2f}s)")
            self._crash_point(drained_step)

        # 5. the flip. A last look at the clock: a drain that ended after the deadline does not count.
        now = self.ports.clock()
        if now > deadline:
            return self.abort(state, "timeout: the drains finished after the deadline")
        window = round(now - float(state.extra["freeze_started_at"]), 3)
        final = ModeState(
            mode=switch.target,
            towards=None,
            version=state.version,
            since=now,
            extra={**state.extra, "step": SWITCHED, "freeze_window_s": window, "finished_at": now, "reason": None},
        )
        self.ports.write_mode(final, state.version)
        timings[SWITCHED] = window
        self.progress(f"{switch.op}: mode is now {switch.target}; freeze window {window:.2f}s")
        self._crash_point(SWITCHED)
        return SwitchReport(op=switch.op, outcome="switched", mode=switch.target, freeze_window_s=window,
                            timings=timings)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


# Extra fields that outlive a switch (the others describe one switch only).
PERSISTENT_EXTRA = ("finalized_at", "reverse_replication")


def storable(state: ModeState) -> ModeState:
    """DynamoDB takes no floats: the protocol's times go into `extra` as Decimals (ms precision)."""
    extra = {k: Decimal(repr(round(v, 3))) if isinstance(v, float) else v for k, v in state.extra.items()}
    return replace(state, extra=extra)


__all__ = [
    "CRASH_POINTS",
    "CUTOVER",
    "ROLLBACK",
    "CrashInjected",
    "CutoverError",
    "GateCheck",
    "Ports",
    "Switch",
    "SwitchAborted",
    "SwitchProtocol",
    "SwitchReport",
    "storable",
]
