"""`dynashift demo`, end to end, as an operator runs it: a subprocess on a port of its own.

The demo starts its own DynamoDB Local, tells the whole migration (seed,
mirrors and a live application, backup, dry run, backfill, verify, cutover,
reverse replication, rollback, cutover again, final verify, finalize) and
stops the engine. The test checks the exit code, that every step announced
itself, that the final table reports zero lost writes, and that the port is
closed afterwards. It is the longest test of the suite (the demo's own
budget is 3 minutes on this machine), hence `slow`.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from shared import local_engine
from shared.settings import PROJECT_ROOT

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
        [sys.executable, "-c", "from shared.cli import run; run()", "demo", "--port", str(port)],
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
