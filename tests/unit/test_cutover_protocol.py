"""The cutover state machine against fakes: steps, persistence, timeout, crash + resume."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from shared.core.errors import ModeConflict, UsageError
from shared.core.settings import load_settings
from shared.cutover.operations import run_switch
from shared.cutover.protocol import CUTOVER, ROLLBACK, CrashInjected, CutoverError, GateCheck, SwitchAborted
from shared.store.mode import Mode, ModeState, check_transition

CACHE_AGE = 1.0
GRACE = 0.5
TIMEOUT = 10.0


@dataclass
class FakePorts:
    """An in-memory mode item with the real transition rules, a fake clock, scripted drains."""

    state: ModeState = field(default_factory=lambda: ModeState(Mode.OLD))
    now: float = 1_000.0
    drain_s: dict[str, float] = field(default_factory=lambda: {"forward": 0.3, "reverse": 0.1})
    writes: list[ModeState] = field(default_factory=list)
    drains: list[str] = field(default_factory=list)

    def read_mode(self) -> ModeState:
        return self.state

    def write_mode(self, state: ModeState, expected_version: int) -> ModeState:
        if expected_version != self.state.version:
            raise ModeConflict("changed meanwhile")
        check_transition(self.state, state)
        moved = (state.mode, state.towards) != (self.state.mode, self.state.towards)
        self.state = replace(state, version=expected_version + 1, since=self.now if moved else self.state.since)
        self.writes.append(self.state)
        return self.state

    def wait_drained(self, direction: str, timeout_s: float) -> bool:
        self.drains.append(direction)
        needed = self.drain_s[direction]
        if needed > timeout_s:
            self.now += timeout_s
            return False
        self.now += needed
        return True

    def wait_caught_up(self, direction: str, timeout_s: float) -> bool:
        return True

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def passing_gate(*_: Any, **__: Any) -> list[GateCheck]:
    return [GateCheck("verify", True, "clean")]


def settings() -> Any:
    return load_settings(mode_cache_age_s=CACHE_AGE, cutover_inflight_grace_s=GRACE, cutover_timeout_s=TIMEOUT)


def switch(ports: FakePorts, which: Any = CUTOVER, **kw: Any) -> Any:
    return run_switch(settings(), which, ports=ports, gate_checks=passing_gate, **kw)


def test_cutover_freezes_waits_drains_both_mirrors_in_order_then_switches() -> None:
    # GIVEN mode old and mirrors that drain in 0.3 s (forward) and 0.1 s (reverse)
    ports = FakePorts()
    # WHEN the cutover runs
    report = switch(ports)
    # THEN every step was persisted in order, forward drained before reverse, and the mode is new
    assert [(w.mode, w.extra["step"]) for w in ports.writes] == [
        (Mode.FREEZE, "frozen"), (Mode.FREEZE, "cache_waited"), (Mode.FREEZE, "drained_forward"),
        (Mode.FREEZE, "drained_reverse"), (Mode.NEW, "switched"),
    ]
    assert ports.drains == ["forward", "reverse"]
    assert ports.state.mode == Mode.NEW and report.outcome == "switched"
    # AND the freeze window is cache age + grace + both drains, measured from the freeze write
    assert report.freeze_window_s == pytest.approx(CACHE_AGE + GRACE + 0.4)
    assert ports.state.extra["freeze_window_s"] == pytest.approx(report.freeze_window_s)


def test_rollback_is_the_mirror_image() -> None:
    # GIVEN mode new
    ports = FakePorts(state=ModeState(Mode.NEW, version=3))
    # WHEN rolling back
    report = switch(ports, ROLLBACK)
    # THEN it froze towards old, drained reverse first, then forward, and ended in old
    assert ports.writes[0].mode == Mode.FREEZE and ports.writes[0].towards == Mode.OLD
    assert ports.drains == ["reverse", "forward"]
    assert ports.state.mode == Mode.OLD and report.freeze_window_s == pytest.approx(CACHE_AGE + GRACE + 0.4)


def test_timeout_returns_to_old_and_says_why() -> None:
    # GIVEN a forward mirror that cannot drain within the timeout
    ports = FakePorts(drain_s={"forward": 60.0, "reverse": 0.1})
    # WHEN the cutover runs
    with pytest.raises(SwitchAborted, match="forward mirror did not drain"):
        switch(ports)
    # THEN the mode went back to old by itself, with the reason stored and the freeze bounded by the timeout
    assert ports.state.mode == Mode.OLD
    assert ports.state.extra["step"] == "aborted" and "forward" in ports.state.extra["reason"]
    assert ports.state.extra["freeze_window_s"] == pytest.approx(TIMEOUT)


def test_the_gate_refuses_without_touching_the_mode() -> None:
    ports = FakePorts()

    def failing(*_: Any, **__: Any) -> list[GateCheck]:
        return [GateCheck("verify", False, "no verify result yet"), GateCheck("quarantine", False, "3 items")]

    with pytest.raises(CutoverError, match="verify: no verify result yet; quarantine: 3 items"):
        run_switch(settings(), CUTOVER, ports=ports, gate_checks=failing)
    assert ports.writes == [] and ports.state.mode == Mode.OLD


@pytest.mark.parametrize("which", [CUTOVER, ROLLBACK], ids=["cutover", "rollback"])
@pytest.mark.parametrize("step", CUTOVER.steps)
def test_a_crash_after_any_step_resumes_to_the_target(which: Any, step: str) -> None:
    # GIVEN a switch whose process dies right after `step` was persisted
    start = ModeState(which.origin, version=1)
    ports = FakePorts(state=start)
    crash_step = step if step in which.steps else step.replace("forward", "reverse")
    with pytest.raises(CrashInjected):
        switch(ports, which, crash_after=crash_step)
    # THEN the flag is either consistent or a freeze that knows its step
    assert ports.state.mode in (which.origin, which.target) or ports.state.extra["step"] in which.steps
    # WHEN the operator runs --resume
    report = switch(ports, which, resume=True)
    # THEN the switch is complete (or, if it never froze, nothing happened), never in between
    expected = which.origin if crash_step == "gate" else which.target
    assert ports.state.mode == expected and ports.state.mode != Mode.FREEZE
    if crash_step not in ("gate", "switched"):
        assert report.outcome == "switched" and report.resumed


@pytest.mark.parametrize("step", ["frozen", "cache_waited", "drained_forward"])
def test_a_crash_resumed_after_the_deadline_goes_back(step: str) -> None:
    # GIVEN a cutover that died after `step`, and a resume that comes after its deadline
    ports = FakePorts()
    with pytest.raises(CrashInjected):
        switch(ports, crash_after=step)
    ports.now += TIMEOUT + 1
    # WHEN resumed
    with pytest.raises(SwitchAborted, match="timeout"):
        switch(ports, resume=True)
    # THEN it went back to old, not forward
    assert ports.state.mode == Mode.OLD and ports.state.extra["step"] == "aborted"


@pytest.mark.parametrize("step", ["frozen", "cache_waited", "drained_forward", "drained_reverse"])
def test_rollback_during_an_interrupted_cutover_goes_back_to_old(step: str) -> None:
    ports = FakePorts()
    with pytest.raises(CrashInjected):
        switch(ports, crash_after=step)
    with pytest.raises(SwitchAborted, match="rollback requested during a cutover"):
        switch(ports, ROLLBACK)
    assert ports.state.mode == Mode.OLD


def test_resume_without_a_switch_in_progress_changes_nothing() -> None:
    ports = FakePorts(state=ModeState(Mode.NEW, version=5))
    report = switch(ports, resume=True)
    assert report.outcome == "nothing" and report.mode == Mode.NEW and ports.writes == []


def test_cutover_needs_mode_old_and_an_unfinalized_migration() -> None:
    with pytest.raises(CutoverError, match="needs mode old"):
        switch(FakePorts(state=ModeState(Mode.NEW, version=2)))
    finalized = ModeState(Mode.NEW, version=2, extra={"finalized_at": 1.0})
    with pytest.raises(CutoverError, match="finalized"):
        switch(FakePorts(state=finalized), ROLLBACK)


def test_a_concurrent_switch_loses_the_race() -> None:
    # GIVEN another operator's write landing between our gate and our freeze
    ports = FakePorts()

    def gate_then_race(*_: Any, **__: Any) -> list[GateCheck]:
        ports.state = replace(ports.state, version=ports.state.version + 1)
        return [GateCheck("verify", True, "clean")]

    with pytest.raises(ModeConflict):
        run_switch(settings(), CUTOVER, ports=ports, gate_checks=gate_then_race)
    assert ports.state.mode == Mode.OLD


def test_a_timeout_shorter_than_the_cache_wait_is_refused() -> None:
    with pytest.raises(UsageError, match="must exceed the mode cache age"):
        switch(FakePorts(), timeout_s=CACHE_AGE)


def test_unknown_crash_point_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown step"):
        switch(FakePorts(), crash_after="nowhere")


def test_after_finalize_the_reverse_mirror_no_longer_applies() -> None:
    from shared.store.mode import reverse_applies

    assert reverse_applies(ModeState(Mode.NEW))
    assert not reverse_applies(ModeState(Mode.NEW, extra={"reverse_replication": "stopped"}))
