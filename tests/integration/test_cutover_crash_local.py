"""A crash at every step of the cutover and of the rollback, then `--resume` or rollback.

The process 'dies' right after a step was persisted (`crash_after`, which
raises a BaseException nothing in the protocol catches; one case kills a real
`dynashift` process with os._exit). Whatever the operator does next, the
mode must end in a consistent `old` or `new`, never in `freeze`, with every
acknowledged application write on the authoritative side and no echo.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.core.settings import Settings
from shared.cutover.operations import read_mode
from shared.cutover.protocol import CUTOVER, ROLLBACK, CrashInjected
from shared.sim.app_sim import SwitchRig
from shared.store.mode import Mode
from tests.integration.test_cutover_local import switch_settings

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:No application metrics to publish")]

RATE = 10.0


@pytest.fixture
def rig(fresh_sc_settings: Settings) -> Iterator[SwitchRig]:
    settings = switch_settings(fresh_sc_settings.endpoint_url)
    with SwitchRig(settings, rate_per_s=RATE, seed=5) as running:
        time.sleep(1.0)
        yield running


def bring_to(rig: SwitchRig, mode: Mode) -> None:
    current = read_mode(rig.settings).mode
    if current != mode:
        outcome = rig.switch(CUTOVER if mode == Mode.NEW else ROLLBACK)
        assert outcome.mode == mode, outcome


def assert_consistent(rig: SwitchRig, label: str) -> Mode:
    state = read_mode(rig.settings)
    assert state.mode in (Mode.OLD, Mode.NEW), (label, state)
    diff = rig.check()
    assert diff.ok, (label, diff.summary())
    assert rig.echoes == [], (label, rig.echoes[:5])
    return state.mode


@pytest.mark.timeout(480)
def test_a_crash_at_every_step_then_resume_or_rollback_ends_consistent(rig: SwitchRig) -> None:
    cases = [(CUTOVER, step) for step in CUTOVER.steps] + [(ROLLBACK, step) for step in ROLLBACK.steps]
    for index, (which, step) in enumerate(cases):
        label = f"{which.op} crashed after {step}"
        # GIVEN a switch whose process dies right after `step` was persisted
        bring_to(rig, which.origin)
        try:
            outcome = rig.switch(which, crash_after=step)
        except CrashInjected:
            pass
        else:
            pytest.fail(f"{label}: the switch did not get there: {outcome}")
        # WHEN the operator resumes it, or (every other case) rolls back instead
        if index % 2 == 0:
            outcome = rig.switch(which, resume=True)
        else:
            outcome = rig.switch(ROLLBACK)
        # THEN the mode is old or new, never in between, and no write was lost or echoed
        mode = assert_consistent(rig, label)
        assert outcome.mode == mode, (label, outcome)
        if index % 2 == 1:
            assert mode == Mode.OLD, label  # a rollback always ends in old
        elif step == "gate":
            assert mode == which.origin, label  # nothing had happened yet
        else:
            assert mode == which.target, label  # resumed well within the timeout: finished


@pytest.mark.timeout(300)
def test_a_killed_rollback_process_is_resumed_from_the_command_line(rig: SwitchRig) -> None:
    # GIVEN mode new, and a `dynashift rollback` process killed (os._exit) after the cache wait
    bring_to(rig, Mode.NEW)
    env = {**os.environ, "DYNASHIFT_MODE_CACHE_AGE_S": "1.0", "DYNASHIFT_CUTOVER_INFLIGHT_GRACE_S": "0.3",
           "DYNASHIFT_CUTOVER_MAX_LAG_S": "20"}
    dynashift = str(Path(sys.executable).parent / "dynashift")
    command = [dynashift, "--endpoint-url", rig.settings.endpoint_url or ""]
    killed = subprocess.run([*command, "rollback", "--crash-after", "cache_waited"], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == 137, killed.stdout + killed.stderr
    state = read_mode(rig.settings)
    assert state.mode == Mode.FREEZE and state.extra["step"] == "cache_waited"
    # WHEN `dynashift rollback --resume` runs
    resumed = subprocess.run([*command, "rollback", "--resume"], env=env, capture_output=True, text=True,
                             timeout=120, check=False)
    # THEN the rollback finished: old, with every acknowledged write in the legacy tables
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "rollback done (resumed)" in resumed.stdout and "freeze window" in resumed.stdout
    assert assert_consistent(rig, "killed rollback, resumed") == Mode.OLD
