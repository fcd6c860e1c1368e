"""Fault injection: every scenario ends converged, with no acknowledged write lost.

Each scenario runs the real processes (`mirror run --follow`, `backfill run`)
against a DynamoDB Local of its own while the application writes, injects
one kind of fault, then finishes as an operator would (see
`tests.chaos.harness.Stage.finish`) and checks convergence and the
acknowledged writes. `--soak` makes the workloads longer and the faults more
frequent. The outcomes are printed as one table at the end of the session.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from shared.sc.workload import Workload
from tests.chaos.fault_proxy import FaultPlan, FaultProxy
from tests.chaos.harness import AppThread, Outcome, Stage

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(1200)]

RATE = 25.0  # application writes per second


def _seconds(soak: bool, quick: float) -> float:
    return quick * 4 if soak else quick


def _until(condition: Callable[[], bool], timeout: float = 45.0) -> None:
    """Keep the faults coming until enough were injected to mean something (bounded)."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.5)


def _check(outcome: Outcome, stage: Stage) -> None:
    assert outcome.lost == 0, f"{outcome.lost} acknowledged writes lost"
    assert outcome.differences == 0, (
        f"not converged: {outcome.detail}\nmirror log:\n{stage.log_tail('mirror.log')}"
        f"\nbackfill log:\n{stage.log_tail('backfill.log')}"
    )


def test_kill9_mirror_runner_at_random_points(stage: Stage, soak: bool, record: list[Outcome]) -> None:
    started = time.monotonic()
    rng = random.Random(11)
    kills = 6 if soak else 3
    app = AppThread(stage.settings, Workload(seed=21), RATE).start()
    mirror = stage.start_mirror()
    backfill = stage.start_backfill()
    for _ in range(kills):
        time.sleep(rng.uniform(0.5, _seconds(soak, 3.0)))
        assert stage.kill9(mirror), f"mirror exited by itself:\n{stage.log_tail('mirror.log')}"
        mirror = stage.start_mirror()
    stage.wait(backfill)
    outcome = stage.finish(Outcome("mirror runner kill -9", f"{kills} kills"), app, mirror)
    outcome.seconds = time.monotonic() - started
    record.append(outcome)
    _check(outcome, stage)


def test_kill9_backfill_workers_at_random_points(stage: Stage, soak: bool, record: list[Outcome]) -> None:
    started = time.monotonic()
    rng = random.Random(12)
    kills = 5 if soak else 3
    app = AppThread(stage.settings, Workload(seed=22), RATE).start()
    mirror = stage.start_mirror()
    done_kills = 0
    for _ in range(kills):
        backfill = stage.start_backfill()
        time.sleep(rng.uniform(1.0, 4.0))
        done_kills += stage.kill9(backfill)
    outcome = stage.finish(Outcome("backfill kill -9", f"{done_kills} kills (of {kills} tries)"), app, mirror)
    outcome.seconds = time.monotonic() - started
    record.append(outcome)
    _check(outcome, stage)


def test_dynamodb_local_restarted_mid_run(stage: Stage, soak: bool, record: list[Outcome]) -> None:
    started = time.monotonic()
    restarts = 3 if soak else 1
    app = AppThread(stage.settings, Workload(seed=23), RATE).start()
    mirror = stage.start_mirror()
    backfill = stage.start_backfill()
    for _ in range(restarts):
        time.sleep(_seconds(soak, 3.0))
        stage.restart_engine(down_s=2.0)
    time.sleep(3.0)
    survived = mirror.poll() is None
    if not survived:  # a supervisor (systemd, Lambda) would restart it; say so in the report
        mirror = stage.start_mirror()
    stage.wait(backfill)
    outcome = stage.finish(
        Outcome("DynamoDB Local restart (--data-dir)",
                f"{restarts} restart(s), 2 s down; runner {'survived' if survived else 'restarted'}"),
        app, mirror)
    outcome.seconds = time.monotonic() - started
    record.append(outcome)
    _check(outcome, stage)
    assert survived, f"the mirror runner died in the outage:\n{stage.log_tail('mirror.log')}"


def test_throttling_and_5xx_errors_injected(stage: Stage, soak: bool, record: list[Outcome]) -> None:
    started = time.monotonic()
    share = 0.2 if soak else 0.1
    plan = FaultPlan(throttle=share, error_5xx=share / 2, seed=31)
    proxy = FaultProxy(stage.engine.endpoint, plan).start()
    try:
        app = AppThread(stage.settings, Workload(seed=24), RATE).start()
        mirror = stage.start_mirror(endpoint=proxy.endpoint)
        backfill = stage.spawn(["backfill", "run", "--table", "all", "--segments", "4"], "backfill.log",
                               proxy.endpoint)
        time.sleep(_seconds(soak, 8.0))
        _until(lambda: sum(proxy.injected.values()) > 20 and any(k.startswith("5xx_after") for k in proxy.injected))
        injected = dict(proxy.injected)
        # The fault window is over: the backfill finishes through a healthy proxy, so the
        # scenario's length (and the workload written meanwhile) does not depend on the faults.
        proxy.plan.throttle = proxy.plan.error_5xx = 0.0
        stage.wait(backfill)
    finally:
        proxy.stop()
    total = sum(injected.values())
    outcome = stage.finish(Outcome("throttling + 5xx via proxy",
                                   f"{total} faults ({share:.0%} throttle, {share / 2:.0%} 5xx)"), app, mirror)
    outcome.seconds = time.monotonic() - started
    record.append(outcome)
    assert total > 20, f"the proxy injected too few faults to mean anything: {injected}"
    assert any(k.startswith("5xx_after") for k in injected), injected
    _check(outcome, stage)


def test_stream_iterators_expire(stage: Stage, soak: bool, record: list[Outcome]) -> None:
    started = time.monotonic()
    plan = FaultPlan(expire=0.3, operations=("GetRecords",), seed=41)
    proxy = FaultProxy(stage.engine.endpoint, plan).start()
    try:
        app = AppThread(stage.settings, Workload(seed=25), RATE).start()
        mirror = stage.start_mirror(endpoint=proxy.endpoint)
        time.sleep(_seconds(soak, 8.0))
        _until(lambda: proxy.injected["expired_iterator"] > 5)
        injected = proxy.injected["expired_iterator"]
    finally:
        proxy.stop()
    outcome = stage.finish(Outcome("stream iterator expiry", f"{injected} expired iterators"), app, mirror)
    outcome.seconds = time.monotonic() - started
    record.append(outcome)
    assert injected > 5
    _check(outcome, stage)


def test_poison_records_do_not_block_the_shard(stage: Stage, soak: bool, record: list[Outcome]) -> None:
    started = time.monotonic()
    app = AppThread(stage.settings, Workload(seed=26, bad_fraction=0.25), RATE).start()
    mirror = stage.start_mirror()
    time.sleep(_seconds(soak, 6.0))
    outcome = stage.finish(Outcome("poison records", "25% of writes are bad data"), app, mirror)
    outcome.seconds = time.monotonic() - started
    record.append(outcome)
    assert outcome.quarantined > 0
    _check(outcome, stage)


@pytest.mark.parametrize("skew_s", [-3 * 86400, 2 * 3600])
def test_clock_skew_in_the_workload(stage: Stage, soak: bool, record: list[Outcome], skew_s: int) -> None:
    started = time.monotonic()
    app = AppThread(stage.settings, Workload(seed=27, clock_skew_s=skew_s), RATE).start()
    mirror = stage.start_mirror()
    backfill = stage.start_backfill()
    time.sleep(_seconds(soak, 5.0))
    stage.wait(backfill)
    outcome = stage.finish(Outcome("application clock skew", f"{skew_s:+d} s on written timestamps"), app, mirror)
    outcome.seconds = time.monotonic() - started
    record.append(outcome)
    _check(outcome, stage)
