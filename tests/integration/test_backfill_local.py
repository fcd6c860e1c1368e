"""The backfill on DynamoDB Local: live, race-safe, resumable, in both write modes."""

from __future__ import annotations

import asyncio

import pytest
from rich.console import Console

from backfill.run import BackfillRequest, run_backfill, status
from shared.sim.live import MirrorThread, WorkloadThread
from shared.sim.seed import seed
from shared.sim.workload import Workload
from shared.verify.convergence import check_tables
from tests.integration.helpers import make_tables

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("write_mode", ["put", "transact"])
def test_backfill_while_the_application_writes_and_the_mirror_runs(fresh_sc_settings, write_mode):
    # GIVEN seeded history, the mirror running, and a live workload
    make_tables(fresh_sc_settings)
    asyncio.run(seed(fresh_sc_settings, 300, 900, 0.03, 3))
    mirror = MirrorThread(fresh_sc_settings, start_from="latest").start()
    workload = WorkloadThread(fresh_sc_settings, Workload(seed=8), rate_per_s=40).start()
    # WHEN the backfill runs meanwhile
    code = run_backfill(fresh_sc_settings, {}, BackfillRequest(table="all", segments=4, write_mode=write_mode),
                        Console(quiet=True))
    workload.stop()
    mirror.stop()
    # THEN after draining, sc-main equals the transform of the legacy tables, with no leftovers
    assert code == 0
    assert len(workload.acknowledged) > 50
    result = check_tables(fresh_sc_settings)
    assert result.ok, result.summary()
    rows = status(fresh_sc_settings)
    assert {r["table"] for r in rows} == {"sc-accounts", "sc-repositories"}
    assert all(r["units_done"] == r["units_total"] == 4 and r["max_completions_per_unit"] == 1 for r in rows)
