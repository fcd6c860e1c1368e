"""The backfill on DynamoDB Local: live, race-safe, resumable, in both write modes."""

from __future__ import annotations

import asyncio

import pytest
from rich.console import Console

from backfill.run import BackfillRequest, run_backfill, status
from shared.sc.seed import seed
from shared.sc.workload import Workload
from shared.sim.live import MirrorThread, WorkloadThread
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


def test_the_final_sweep_waits_for_a_writer_killed_before_it_deregistered(sc_settings):
    # GIVEN seeded history, a tombstone the mirror left, and the registration of a backfill worker
    # that was killed (lease not renewed) a moment ago
    import time

    from shared.core import aws
    from shared.core.codec import to_wire
    from shared.core.definition import get_definition
    from shared.protocol.apply import tombstone_item
    from shared.store.control import StaleWriterRegistry

    make_tables(sc_settings)
    asyncio.run(seed(sc_settings, 20, 40, 0.0, 5))
    client = aws.dynamodb(sc_settings)
    tomb = tombstone_item(get_definition("sc"), ("ACCOUNT#gone", "PROFILE"), time.time())
    client.put_item(TableName=sc_settings.target_table, Item=to_wire(tomb))

    async def register_dead() -> None:
        async with aws.aio_dynamodb(sc_settings) as aio:
            await StaleWriterRegistry(aio, sc_settings.control_table).register("killed-worker", "backfill", 1.0)

    asyncio.run(register_dead())
    lines: list[str] = []
    console = Console(quiet=True)
    console.print = lambda *args, **kw: lines.append(" ".join(str(a) for a in args))  # type: ignore[method-assign]
    # WHEN a backfill runs to its end
    code = run_backfill(sc_settings, {}, BackfillRequest(table="all", segments=2, allow_no_mirror=True), console)
    # THEN it waited for the dead writer's lease to lapse, said so, and swept the tombstone
    assert code == 0
    assert any("lease to lapse" in line for line in lines), lines
    assert any("backfill complete; 1 tombstones swept" in line for line in lines), lines
    assert "Item" not in client.get_item(TableName=sc_settings.target_table,
                                         Key=to_wire({"PK": "ACCOUNT#gone", "SK": "PROFILE"}))
