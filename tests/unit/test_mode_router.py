"""The mode flag (shared.store.mode) and the application router (shared.cutover.router), on moto."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import boto3
import pytest
from moto import mock_aws

from shared.core.errors import InvalidModeTransition, ModeConflict, TransientError, WritesFrozen
from shared.core.settings import load_settings
from shared.cutover.router import Router
from shared.ops.tables import table_specs
from shared.store.mode import INITIAL, Mode, ModeState, ModeStore, forward_applies, reverse_applies


@pytest.fixture
def control() -> Iterator[tuple[object, str]]:
    with mock_aws():
        settings = load_settings(control_table="ctl-test")
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(**table_specs(settings)["ControlTable"].create)
        yield client, settings.control_table


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_absent_flag_reads_as_old_version_0(control):
    # GIVEN a control table without a MODE item / WHEN read / THEN old, version 0
    assert ModeStore(*control).read() == INITIAL == ModeState(Mode.OLD, None, 0, 0.0, {})


def test_full_cycle_old_freeze_new_freeze_old_keeps_extra(control):
    # GIVEN a store with a controllable clock
    clock = Clock()
    store = ModeStore(*control, clock=clock)
    # WHEN the flag walks the whole protocol, carrying extra fields
    s1 = store.write(ModeState(Mode.FREEZE, Mode.NEW, extra={"step": "drain", "attempt": 1, "at": 12.5}),
                     expected_version=0)
    clock.now = 1005.0
    s2 = store.write(ModeState(Mode.NEW, None, extra=s1.extra), expected_version=s1.version)
    s3 = store.write(ModeState(Mode.FREEZE, Mode.OLD, extra={**s2.extra, "step": "rollback"}), s2.version)
    s4 = store.write(ModeState(Mode.OLD, None, extra=s3.extra), s3.version)
    # THEN each write is stored with version+1, since = time of the change, and extra round-trips
    assert [s.version for s in (s1, s2, s3, s4)] == [1, 2, 3, 4]
    assert (s1.since, s2.since) == (1000.0, 1005.0)
    read = store.read()
    assert read == s4
    assert read.mode is Mode.OLD and read.towards is None
    assert read.extra == {"step": "rollback", "attempt": 1, "at": 12.5}  # a float time comes back as Decimal


def test_same_state_rewrite_updates_extra_and_keeps_since(control):
    clock = Clock()
    store = ModeStore(*control, clock=clock)
    frozen = store.write(ModeState(Mode.FREEZE, Mode.NEW), 0)
    clock.now = 2000.0
    # WHEN the cutover persists a step without changing the mode
    again = store.write(ModeState(Mode.FREEZE, Mode.NEW, extra={"step": "drained"}), frozen.version)
    # THEN it is stored, and `since` still says when the freeze began
    assert again.version == 2 and again.since == frozen.since == 1000.0
    assert store.read().extra == {"step": "drained"}


@pytest.mark.parametrize("abort_to", [Mode.OLD])
def test_freeze_can_abort_back_to_where_it_came_from(control, abort_to):
    store = ModeStore(*control)
    frozen = store.write(ModeState(Mode.FREEZE, Mode.NEW), 0)
    assert store.write(ModeState(abort_to), frozen.version).mode is abort_to


@pytest.mark.parametrize(
    ("path", "wanted"),
    [
        ([], ModeState(Mode.NEW)),  # old -> new without freeze
        ([], ModeState(Mode.FREEZE, Mode.OLD)),  # freeze towards where we already are
        ([], ModeState(Mode.FREEZE, None)),  # freeze without direction
        ([], ModeState(Mode.OLD, Mode.NEW)),  # towards on a non-freeze mode
        ([ModeState(Mode.FREEZE, Mode.NEW)], ModeState(Mode.FREEZE, Mode.OLD)),  # freeze -> freeze the other way
        ([ModeState(Mode.FREEZE, Mode.NEW), ModeState(Mode.NEW)], ModeState(Mode.OLD)),  # new -> old, no freeze
    ],
)
def test_disallowed_transitions_raise_and_store_nothing(control, path, wanted):
    store = ModeStore(*control)
    version = 0
    for step in path:
        version = store.write(step, version).version
    before = store.read()
    # WHEN a transition outside the protocol is asked / THEN it is refused and the flag is unchanged
    with pytest.raises(InvalidModeTransition):
        store.write(wanted, version)
    assert store.read() == before


def test_stale_expected_version_is_a_conflict(control):
    # GIVEN two operators who both read version 0
    store = ModeStore(*control)
    store.write(ModeState(Mode.FREEZE, Mode.NEW), 0)
    # WHEN the second writes with the version it read / THEN it loses with ModeConflict
    with pytest.raises(ModeConflict):
        store.write(ModeState(Mode.FREEZE, Mode.NEW), 0)
    assert store.read().version == 1


def test_lost_race_between_read_and_put_is_a_conflict(control):
    # GIVEN a store whose check passes, but another writer lands between its read and its put
    client, table = control
    store = ModeStore(client, table)
    other = ModeStore(client, table)
    real_read = store.read

    def read_then_race(consistent: bool = True) -> ModeState:
        state = real_read(consistent)
        if state.version == 0:
            other.write(ModeState(Mode.FREEZE, Mode.NEW), 0)
        return state

    store.read = read_then_race  # type: ignore[method-assign]
    # WHEN it writes / THEN the conditional put fails and says so
    with pytest.raises(ModeConflict):
        store.write(ModeState(Mode.FREEZE, Mode.NEW, extra={"who": "loser"}), 0)
    assert "who" not in real_read().extra


def test_mirror_gates():
    # THEN forward applies in old and freeze->new; reverse in new and freeze->old; never both
    states = [ModeState(Mode.OLD), ModeState(Mode.FREEZE, Mode.NEW), ModeState(Mode.NEW), ModeState(Mode.FREEZE, Mode.OLD)]
    assert [forward_applies(s) for s in states] == [True, True, False, False]
    assert [reverse_applies(s) for s in states] == [False, False, True, True]


# ----------------------------------------------------------------------- router
@pytest.fixture
def router_env(control):
    client, table = control
    settings = load_settings(control_table=table, mode_cache_age_s=5)
    router = Router(settings)
    calls: list[str] = []
    original = router.provider.table.query

    def counting_query(**kwargs):
        calls.append(kwargs["KeyConditionExpression"].get_expression()["values"][1])
        return original(**kwargs)

    router.provider.table.query = counting_query  # type: ignore[method-assign]
    return router, ModeStore(client, table), calls


def expire_cache(router: Router) -> None:
    """Move the provider's cached entries into the past, as the passing of mode_cache_age_s would."""
    store = router.provider.store
    for key, value in list(store.items()):
        store[key] = value._replace(ttl=datetime.now() - timedelta(seconds=1))


def test_router_writes_legacy_in_old_and_new_in_new(router_env):
    router, store, _ = router_env
    assert router.write(lambda x: ("legacy", x), lambda x: ("new", x), 1) == ("legacy", 1)
    s = store.write(ModeState(Mode.FREEZE, Mode.NEW), 0)
    s = store.write(ModeState(Mode.NEW), s.version)
    expire_cache(router)
    assert router.write(lambda x: ("legacy", x), lambda x: ("new", x), 2) == ("new", 2)


def test_router_caches_the_flag_for_the_cache_age(router_env):
    router, store, calls = router_env
    # GIVEN a router that has read "old"
    assert router.current_mode() is Mode.OLD
    # WHEN the flag is frozen and the router asked again within the cache age
    store.write(ModeState(Mode.FREEZE, Mode.NEW), 0)
    # THEN it still answers from its cache, without a read
    assert [router.current_mode() for _ in range(5)] == [Mode.OLD] * 5
    assert calls == ["MODE"]
    # AND once the cache age has passed, it reads again and sees freeze
    expire_cache(router)
    assert router.current_mode() is Mode.FREEZE
    assert calls == ["MODE", "MODE"]


def test_router_cache_lives_exactly_mode_cache_age_s(router_env):
    router, _, _ = router_env
    before = datetime.now()
    router.current_mode()
    (entry,) = router.provider.store.values()
    assert before + timedelta(seconds=5) <= entry.ttl <= datetime.now() + timedelta(seconds=5)


def test_router_raises_retryable_writes_frozen_during_freeze(router_env):
    router, store, _ = router_env
    store.write(ModeState(Mode.FREEZE, Mode.NEW), 0)
    called = []
    # WHEN the application writes during freeze
    with pytest.raises(WritesFrozen) as raised:
        router.write(lambda: called.append("legacy"), lambda: called.append("new"))
    # THEN neither table is written, and the error says to retry
    assert called == []
    assert raised.value.retryable is True
    assert isinstance(raised.value, TransientError)


def test_router_reports_an_unreachable_control_table_as_transient():
    # GIVEN a router pointed at an endpoint nobody listens on
    settings = load_settings(endpoint_url="http://127.0.0.1:9", control_table="ctl-none")
    router = Router(settings)
    # WHEN it reads the flag / THEN one readable, retryable error
    with pytest.raises(TransientError, match="mode flag"):
        router.current_mode()
