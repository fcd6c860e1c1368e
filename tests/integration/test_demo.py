"""`dynashift demo`, end to end, as an operator runs it: a subprocess on a port of its own.

The demo starts its own DynamoDB Local, tells the whole migration (seed,
mirrors and a live application, backup, dry run, backfill, verify, cutover,
reverse replication, rollback, cutover again, final verify, finalize) and
stops the engine. The test checks the exit code, that every step announced
itself, that the final table reports zero lost writes, and that the port is
closed afterwards. It is the longest test of the suite (the demo's own
budget is 3 minutes on this machine), hence `slow`. A fast test checks the
lost-write check itself: it must see a write missing from the side it reads.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from shared.core.settings import PROJECT_ROOT, Settings
from shared.sim import local_engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = [
    "Start DynamoDB Local",
    "Create sc-main and the control table",
    "Seed ",
    "Start both mirrors and a live application",
    "Back up the legacy tables",
    "Dry run",
    "Backfill the history",
    "Verify sc-main against the legacy tables",
    "Cutover: gate, freeze",
    "Writes to the new schema flow back",
    "Rollback",
    "Cutover again",
    "Stop the application; final verify; finalize",
]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(900)
def test_demo_tells_the_whole_story_loses_no_write_and_stops_the_engine() -> None:
    # GIVEN a free port and a clean environment (no endpoint from the developer's shell)
    port = local_engine.free_port()
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb"}
    # WHEN the operator runs `dynashift demo --port <port>`
    result = subprocess.run(
        [sys.executable, "-c", "from shared.cli.main import run; run()", "demo", "--port", str(port)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=840, check=False,
    )
    output = result.stdout + result.stderr
    # THEN it succeeds
    assert result.returncode == 0, output[-4000:]
    # AND every step announced itself, numbered, in order
    positions = []
    for number, text in enumerate(STEPS, start=1):
        match = re.search(rf"^{number}\. {re.escape(text)}", result.stdout, re.MULTILINE)
        assert match, f"step {number} ({text!r}) missing from:\n{result.stdout[-4000:]}"
        positions.append(match.start())
    assert positions == sorted(positions)
    # AND the backup step says in one line why the local engine has none
    assert "no backup: DynamoDB Local has no backups" in result.stdout
    # AND the final table reports zero lost writes, three freeze windows and a converged migration
    lost = re.search(r"LOST WRITES\s*│\s*(\d+)", result.stdout)
    assert lost and lost.group(1) == "0", result.stdout[-4000:]
    for label in ("cutover 1", "rollback", "cutover 2"):
        assert re.search(rf"{label}: freeze, writes delayed\s*│\s*\d+\.\d\ds, \d+", result.stdout), label
    assert re.search(r"converged \(verify \+ reference check\)\s*│\s*yes", result.stdout)
    assert "quarantined: " in result.stdout
    # AND the engine it started is stopped
    assert f"local engine on port {port} stopped" in result.stdout
    assert not port_open(port)


def test_lost_write_check_finds_a_write_missing_from_the_side_it_looks_at(sc_settings: Settings) -> None:
    from shared.core import aws
    from shared.core.codec import to_wire
    from shared.core.definition import get_definition
    from shared.sc.workload import Workload
    from shared.sim.demo import check_landed
    from shared.store.mode import Mode
    from tests.integration.helpers import make_tables

    # GIVEN two acknowledged account writes (one an update), and a delete of a third account
    make_tables(sc_settings)
    definition = get_definition(sc_settings.migration)
    workload = Workload(seed=5, bad_fraction=0)
    first, second, gone = workload.new_account(), workload.new_account(), workload.new_account()
    updated = {**first, "plan": "pro"}
    ref = definition.source("sc-accounts").ref
    acked = {ref(first): updated, ref(second): second, ref(gone): None}
    client = aws.dynamodb(sc_settings)
    # AND the legacy table holds the older version of the first, the second, and still the deleted one;
    # sc-main holds the transform of both acknowledged versions and nothing of the deleted one
    for item in (first, second, gone):
        client.put_item(TableName=sc_settings.physical_name("sc-accounts"), Item=to_wire(item))
    for item in (updated, second):
        for target in definition.transform("sc-accounts", item):
            client.put_item(TableName=sc_settings.target_table, Item=to_wire(target))
    # WHEN each side is checked against the acknowledged writes
    on_target = check_landed(sc_settings, acked, Mode.NEW)
    on_legacy = check_landed(sc_settings, acked, Mode.OLD)
    # THEN sc-main has every write, and the legacy tables miss the update and the delete
    assert on_target.items_written == 3 and on_target.lost == []
    assert on_legacy.lost == sorted([ref(first), ref(gone)])
