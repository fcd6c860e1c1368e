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
clock), so the state machine is unit-tested with fakes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Protocol

from shared.core.errors import DrainTimeout, DynashiftError, TransientError, UsageError
from shared.core.settings import Settings
from shared.store.mode import Mode, ModeState, ModeStore

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


# =========================================================================== entry points
def run_switch(
    settings: Settings,
    switch: Switch,
    *,
    ports: Ports | None = None,
    timeout_s: float | None = None,
    max_lag_s: float | None = None,
    accept_quarantined: bool = False,
    skip_backup_check: bool = False,
    resume: bool = False,
    crash_after: str | None = None,
    progress: Progress | None = None,
    gate_checks: Callable[..., list[GateCheck]] | None = None,
) -> SwitchReport:
    """`dynashift cutover` / `dynashift rollback` (with `--resume`).

    Raises CutoverError when the gate refuses, SwitchAborted when the switch
    went back to its origin; returns the report otherwise.
    """
    options = SwitchOptions(
        timeout_s=timeout_s if timeout_s is not None else settings.cutover_timeout_s,
        cache_age_s=settings.mode_cache_age_s + settings.cutover_inflight_grace_s,
        crash_after=crash_after,
    )
    ports = ports or AwsPorts(settings)
    protocol = SwitchProtocol(ports, options, progress)
    state = ports.read_mode()

    if state.mode == Mode.FREEZE:
        in_progress = switch_of(state)
        if resume or in_progress is switch:
            return _raise_if_aborted(protocol.resume(state))
        # `rollback` while a cutover is frozen: go back, that *is* the rollback.
        return _raise_if_aborted(protocol.abort(state, f"{switch.op} requested during a {in_progress.op}"))
    if resume:
        return protocol.resume(state)
    if state.extra.get("finalized_at"):
        raise CutoverError(f"the migration was finalized; {switch.op} is no longer possible")
    if state.mode != switch.origin:
        raise CutoverError(f"{switch.op} needs mode {switch.origin}, but the mode is {state.mode}")

    checks = (gate_checks or default_gate_checks)(
        settings, switch, state, max_lag_s=max_lag_s if max_lag_s is not None else settings.cutover_max_lag_s,
        accept_quarantined=accept_quarantined, skip_backup_check=skip_backup_check, ports=ports,
    )
    failed = [c for c in checks if not c.ok]
    if failed:
        raise CutoverError(f"{switch.op} refused by the gate: " + "; ".join(f"{c.name}: {c.detail}" for c in failed))
    for check in checks:
        (progress or (lambda _l: None))(f"gate: {check.name}: {check.detail}")
    # The gate took a while: the freeze write is conditional on the version read before it.
    return _raise_if_aborted(protocol.start(switch, state, checks))


def _raise_if_aborted(report: SwitchReport) -> SwitchReport:
    if report.outcome == "aborted":
        raise SwitchAborted(
            f"{report.op} aborted, mode is back to {report.mode} after a freeze of "
            f"{report.freeze_window_s:.2f}s: {report.reason}"
        )
    return report


# =========================================================================== the gate
def default_gate_checks(
    settings: Settings,
    switch: Switch,
    state: ModeState,
    *,
    max_lag_s: float,
    accept_quarantined: bool,
    skip_backup_check: bool,
    ports: Ports,
) -> list[GateCheck]:
    checks: list[GateCheck] = []
    if switch is CUTOVER:
        checks.append(check_verify(settings, ports.clock()))
        checks.append(check_quarantine(settings, accept_quarantined))
        checks.append(
            GateCheck("backup", True, "skipped (--skip-backup-check)") if skip_backup_check
            else check_backups(settings, ports.clock())
        )
    # Both consumers must be running: the active one with a bounded lag, the
    # other one because it takes over (reverse replication) or must have
    # skipped everything before the flip.
    for direction in switch.drains:
        checks.append(check_lag(ports, direction, max_lag_s))
    return checks


def check_verify(settings: Settings, now: float) -> GateCheck:
    from shared.verify.report import last_verify

    last = last_verify(settings)
    if not last:
        return GateCheck("verify", False, "no verify result yet (run: dynashift verify)")
    age = now - float(last["finished_at"])
    if not last.get("ok"):
        return GateCheck("verify", False, f"the last verify ({age:.0f}s ago) found differences")
    if age > settings.verify_max_age_s:
        return GateCheck("verify", False,
                         f"the last clean verify is {age:.0f}s old (limit verify_max_age_s={settings.verify_max_age_s:g})")
    from shared.core.definition import get_definition

    every_table = {source.name for source in get_definition(settings.migration).sources}
    covered = set(last.get("tables") or [])
    if not every_table <= covered or float(last.get("sample", 1.0)) < 1.0:
        # A clean partial run proves nothing about the rest: the gate wants all of it.
        return GateCheck("verify", False,
                         f"the last clean verify covered {', '.join(sorted(covered)) or 'no table'}"
                         f" at sample {float(last.get('sample', 1.0)):g}; run a full `dynashift verify`")
    return GateCheck("verify", True, f"clean, {age:.0f}s ago")


def check_quarantine(settings: Settings, accept: bool) -> GateCheck:
    from shared.core import aws
    from shared.store.control import ControlStore

    async def counts() -> dict[str, int]:
        async with aws.aio_dynamodb(settings) as client:
            return await ControlStore(client, settings.control_table).quarantine_counts()

    reasons = asyncio.run(counts())
    total = sum(reasons.values())
    if not total:
        return GateCheck("quarantine", True, "empty")
    listing = ", ".join(f"{n} {r}" for r, n in reasons.items())
    if accept:
        return GateCheck("quarantine", True, f"{total} item(s) accepted ({listing})")
    return GateCheck("quarantine", False,
                     f"{total} item(s) ({listing}); fix them or pass --accept-quarantined")


def check_backups(settings: Settings, now: float) -> GateCheck:
    from shared.ops.backup import backup_gate_problems

    problems = backup_gate_problems(settings, now=now)
    if problems:
        return GateCheck("backup", False, "; ".join(problems))
    return GateCheck("backup", True, "every legacy table has a recent completed backup")


def check_lag(ports: Ports, direction: str, max_lag_s: float) -> GateCheck:
    """The consumer reaches the stream ends as of now within `max_lag_s`: its lag is under the bound."""
    started = ports.clock()
    if ports.wait_caught_up(direction, max_lag_s):
        return GateCheck(f"{direction} mirror lag", True, f"caught up in {ports.clock() - started:.2f}s")
    return GateCheck(f"{direction} mirror lag", False,
                     f"did not acknowledge every record in its streams within {max_lag_s:g}s (is the stack's "
                     f"mapping enabled, or `mirror run --direction {direction}` running?)")


# =========================================================================== AWS ports
class AwsPorts:
    """The real world: the mode item in the control table, the drain module, the wall clock."""

    def __init__(self, settings: Settings) -> None:
        from shared.core import aws

        self.settings = settings
        self.store = ModeStore(aws.dynamodb(settings), settings.control_table)

    def read_mode(self) -> ModeState:
        return self.store.read(consistent=True)

    def write_mode(self, state: ModeState, expected_version: int) -> ModeState:
        return self.store.write(storable(state), expected_version)

    def wait_drained(self, direction: str, timeout_s: float) -> bool:
        from shared.streams import drain

        try:
            drain.wait_drained(self.settings, direction, timeout_s, poll_s=DRAIN_POLL_S)
        except DrainTimeout:
            return False
        return True

    def wait_caught_up(self, direction: str, timeout_s: float) -> bool:
        from shared.streams import drain

        try:
            return drain.wait_caught_up(self.settings, direction, timeout_s, poll_s=DRAIN_POLL_S)
        except TransientError:
            return False

    def clock(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def storable(state: ModeState) -> ModeState:
    """DynamoDB takes no floats: the protocol's times go into `extra` as Decimals (ms precision)."""
    extra = {k: Decimal(repr(round(v, 3))) if isinstance(v, float) else v for k, v in state.extra.items()}
    return replace(state, extra=extra)


# =========================================================================== finalize
@dataclass
class FinalizeReport:
    tombstones_swept: int
    already_finalized: bool
    commands: list[str]


def finalize(settings: Settings, *, ports: Ports | None = None) -> FinalizeReport:
    """Clean up after the monitoring period; never deletes a legacy table."""
    from shared.core import aws
    from shared.core.definition import get_definition
    from shared.protocol.apply import sweep_tombstones
    from shared.store.control import StaleWriterRegistry

    ports = ports or AwsPorts(settings)
    state = ports.read_mode()
    if state.mode != Mode.NEW:
        raise CutoverError(f"finalize needs mode new (after a cutover), but the mode is {state.mode}")
    definition = get_definition(settings.migration)

    async def sweep() -> int:
        async with aws.aio_dynamodb(settings) as client:
            if await StaleWriterRegistry(client, settings.control_table).active():
                raise CutoverError("a backfill is still registered as a writer; finish or stop it first")
            return await sweep_tombstones(settings, definition, client, older_than_s=0)

    swept = asyncio.run(sweep())
    already = bool(state.extra.get("finalized_at"))
    if not already:
        ports.write_mode(
            replace(state, extra={**state.extra, "finalized_at": ports.clock(), "reverse_replication": "stopped"}),
            state.version,
        )
    legacy = [settings.physical_name(s.name) for s in definition.sources]
    commands = [
        "# stop reverse replication in AWS (it already stopped applying):",
        ("aws lambda list-event-source-mappings --function-name <ReverseMirrorFunction> "
        "--query 'EventSourceMappings[].UUID' --output text"),
        "aws lambda update-event-source-mapping --uuid <UUID> --no-enabled",
        "# later, once the backups' retention allows it, retire the legacy tables:",
        *(f"aws dynamodb update-table --table-name {t} --no-deletion-protection-enabled" for t in legacy),
        *(f"aws dynamodb delete-table --table-name {t}" for t in legacy),
    ]
    return FinalizeReport(tombstones_swept=swept, already_finalized=already, commands=commands)




# =========================================================================== by hand
def force_mode(settings: Settings, mode: Mode, towards: Mode | None = None) -> ModeState:
    """`dynashift mode set X --force`: write the flag without the protocol.

    Skips the gate, the cache wait and the drains, and any transition rule:
    only for repairing a flag by hand. Still optimistic (a concurrent switch
    wins) and recorded in `extra` (`step = forced`).
    """
    from shared.core import aws
    from shared.core.aws import error_code, translate
    from shared.core.errors import ModeConflict
    from shared.store.mode import item_from_state

    if mode == Mode.FREEZE and towards not in (Mode.OLD, Mode.NEW):
        raise UsageError("mode set freeze: --towards old|new is required")
    if mode != Mode.FREEZE:
        towards = None
    client = aws.dynamodb(settings)
    store = ModeStore(client, settings.control_table)
    current = store.read(consistent=True)
    now = time.time()
    extra = {k: v for k, v in current.extra.items() if k in PERSISTENT_EXTRA}
    extra.update(step="forced", reason=f"set by hand from {current.describe()}", forced_at=now)
    if mode == Mode.FREEZE:
        extra.update(op=(CUTOVER if towards == Mode.NEW else ROLLBACK).op, freeze_started_at=now,
                     deadline=now + settings.cutover_timeout_s, timeout_s=settings.cutover_timeout_s,
                     cache_age_s=settings.mode_cache_age_s + settings.cutover_inflight_grace_s)
    stored = ModeState(mode=mode, towards=towards, version=current.version + 1, since=now, extra=extra)
    condition: dict[str, Any] = (
        {"ConditionExpression": "attribute_not_exists(PK)"} if current.version == 0 else {
            "ConditionExpression": "#v = :v", "ExpressionAttributeNames": {"#v": "version"},
            "ExpressionAttributeValues": {":v": {"N": str(current.version)}}}
    )
    try:
        client.put_item(TableName=settings.control_table, Item=item_from_state(storable(stored)), **condition)
    except Exception as exc:
        if error_code(exc) == "ConditionalCheckFailedException":
            raise ModeConflict("the mode flag changed meanwhile: look again (dynashift mode)") from exc
        raise translate(exc, f"write the mode flag to {settings.control_table}") from exc
    return stored


def read_mode(settings: Settings) -> ModeState:
    from shared.core import aws

    return ModeStore(aws.dynamodb(settings), settings.control_table).read(consistent=True)


__all__ = [
    "CRASH_POINTS",
    "CUTOVER",
    "ROLLBACK",
    "AwsPorts",
    "CrashInjected",
    "CutoverError",
    "FinalizeReport",
    "GateCheck",
    "Ports",
    "Switch",
    "SwitchAborted",
    "SwitchReport",
    "finalize",
    "force_mode",
    "read_mode",
    "run_switch",
]
