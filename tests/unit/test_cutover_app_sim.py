"""The simulated application's pure parts: which writes it attempts, and the no-echo audit."""

from __future__ import annotations

from decimal import Decimal

from shared.core.definition import SourceRef
from shared.core.settings import load_settings
from shared.cutover.protocol import storable
from shared.sc.workload import Operation
from shared.sim.app_sim import AppSimulator, unexplained_records
from shared.store.mode import Mode, ModeState


def simulator() -> AppSimulator:
    return AppSimulator(load_settings(), router_factory=lambda: None)


def test_the_application_never_attempts_bad_data_or_a_case_only_name_collision() -> None:
    app = simulator()
    account = {"accountId": "a1", "email": "x@y.z", "createdAt": Decimal(1)}
    bad = {**account, "plan": "platinum"}
    assert app._acceptable(Operation("insert_account", "sc-accounts", "put", {"accountId": "a1"}, account),
                           SourceRef("sc-accounts", ("a1",)))
    assert not app._acceptable(Operation("bad_account", "sc-accounts", "put", {"accountId": "a1"}, bad),
                               SourceRef("sc-accounts", ("a1",)))
    app.workload.repos["r1"] = {"repoId": "r1", "accountId": "a1", "name": "Tools", "createdAt": Decimal(1)}
    clash = {"repoId": "r2", "accountId": "a1", "name": "tOOLS", "createdAt": Decimal(1)}
    app.workload.repos["r2"] = clash
    assert not app._acceptable(Operation("rename_repo", "sc-repositories", "put", {"repoId": "r2"}, clash),
                               SourceRef("sc-repositories", ("r2",)))
    elsewhere = {**clash, "accountId": "a2"}
    assert app._acceptable(Operation("transfer_repo", "sc-repositories", "put", {"repoId": "r2"}, elsewhere),
                           SourceRef("sc-repositories", ("r2",)))


def test_a_record_no_application_write_explains_is_reported() -> None:
    item = {"accountId": "a1", "plan": "pro"}
    attempted = {("a1",): [item, None]}
    records = [
        ("INSERT", {"accountId": "a1"}, item),  # the application's write
        ("REMOVE", {"accountId": "a1"}, None),  # the application's delete
        ("MODIFY", {"accountId": "a1"}, {"accountId": "a1", "plan": "free"}),  # nobody's: an echo
        ("INSERT", {"accountId": "a2"}, {"accountId": "a2"}),  # a key the application never wrote
    ]
    found = unexplained_records(records, attempted, lambda keys: (keys["accountId"],))
    assert found == [("MODIFY", {"accountId": "a1"}), ("INSERT", {"accountId": "a2"})]


def test_protocol_times_are_stored_as_decimals() -> None:
    state = ModeState(Mode.FREEZE, Mode.NEW, extra={"freeze_started_at": 12.34567, "op": "cutover"})
    stored = storable(state)
    assert stored.extra == {"freeze_started_at": Decimal("12.346"), "op": "cutover"}
