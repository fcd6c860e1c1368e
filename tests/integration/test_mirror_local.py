"""The forward mirror on DynamoDB Local, through the local stream runner."""

from __future__ import annotations

import pytest

from shared.sc.workload import Workload
from shared.sim.local_lambda import run_forward_mirror
from shared.verify.convergence import check_tables
from tests.integration.helpers import make_tables, run_workload

pytestmark = pytest.mark.integration


def test_random_writes_converge_through_the_runner(fresh_sc_settings):
    # GIVEN the legacy tables with streams, and 5,000 random application writes
    # (inserts, updates, renames, transfers, team changes, deletes, bad data)
    make_tables(fresh_sc_settings)
    run_workload(fresh_sc_settings, Workload(seed=11), 5000)
    # WHEN the runner drains the streams
    report = run_forward_mirror(fresh_sc_settings)
    # THEN every record was applied and sc-main equals the transform of the legacy tables
    assert 4500 < report.records <= 5000  # a write that changes nothing emits no record
    result = check_tables(fresh_sc_settings)
    assert result.ok, result.summary()
    assert result.quarantined, "the workload writes bad data; some must be quarantined"
