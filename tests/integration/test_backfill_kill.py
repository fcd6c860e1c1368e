"""The backfill survives `kill -9`, and processes started together share its units.

The backfill runs as the operator runs it: `dynashift backfill run` in a
subprocess, in a session of its own so that SIGKILL to the process group takes
the parent and its worker processes down together, mid-write, with no chance
to clean up. The units of killed workers stay `running` under a lease nobody
renews; a later run resumes them from their checkpoints once it has expired.

Knobs for speed, all passed through the environment or the command: a 3 s
unit lease (`DYNASHIFT_BACKFILL_LEASE_S`), a short fence (stale-writer
refresh and consistency margin of 0.2 s) and small scan pages (see
`LAUNCHER`), so that a unit has several checkpoints and a kill can land
between two of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backfill.run import status
from shared.cli.main import main
from shared.core import aws
from shared.core.codec import to_native
from shared.core.definition import SourceRef, get_definition
from shared.core.settings import PROJECT_ROOT, Settings, load_settings
from shared.sc.seed import generate, seed
from shared.sim import local_engine
from shared.store.control import ControlStore
from shared.verify.convergence import check_tables, scan_all
from tests.integration.helpers import make_tables

pytestmark = pytest.mark.integration

ACCOUNTS, REPOS, BAD_FRACTION, SEED = 600, 2400, 0.02, 11
SEGMENTS = 8
LEASE_S = 3.0
PAGE_ITEMS = 25
KILLS = 3
TABLES = ("sc-accounts", "sc-repositories")
ENGINE_CACHE = PROJECT_ROOT / ".cache" / "dynashift"

# `dynashift backfill run` exactly as the console script runs it (`shared.cli.main:run`),
# with two test knobs:
# - scan pages hold PAGE_ITEMS items instead of 500: with ~75 accounts and ~300
#   repositories per unit, a unit would otherwise be a single page, checkpointed
#   only once it is done. WorkerOptions reach worker processes pickled, so they
#   get the page size too.
# - with START_AT_ENV set, everything is imported first and the command starts
#   at that moment (a wall-clock time): processes "started together" then really
#   begin together, not one interpreter start-up apart.
START_AT_ENV = "BACKFILL_TEST_START_AT"
LAUNCHER = f"""
import functools, os, time
import aiobotocore.session, backfill.run, backfill.worker, shared.cli.main
backfill.run.WorkerOptions = functools.partial(backfill.run.WorkerOptions, page_items={PAGE_ITEMS})
time.sleep(max(0.0, float(os.environ.get("{START_AT_ENV}", "0")) - time.time()))
shared.cli.main.run()
"""


# --------------------------------------------------------------------------- helpers
def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DYNASHIFT_ENDPOINT_URL=settings.effective_endpoint or "",
        DYNASHIFT_TABLE_NAMES=json.dumps(settings.table_names),
        DYNASHIFT_TARGET_TABLE=settings.target_table,
        DYNASHIFT_CONTROL_TABLE=settings.control_table,
        DYNASHIFT_STALE_WRITER_REFRESH_S="0.2",
        DYNASHIFT_CONSISTENCY_MARGIN_S="0.2",
        DYNASHIFT_BACKFILL_LEASE_S=str(LEASE_S),
    )
    return env


def _start(
    started: list[subprocess.Popen[bytes]], settings: Settings, log: Path, workers: int, start_at: float = 0.0
) -> subprocess.Popen[bytes]:
    """`backfill run` in a new session: its pid is the process group of it and its workers."""
    command = [sys.executable, "-c", LAUNCHER, "backfill", "run", "--table", "all", "--segments", str(SEGMENTS),
               "--workers", str(workers), "--allow-no-mirror"]
    env = {**_env(settings), START_AT_ENV: repr(start_at)}
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, cwd=PROJECT_ROOT)
    started.append(process)
    return process


def _finish(process: subprocess.Popen[bytes], log: Path, timeout: float = 150) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"backfill did not finish within {timeout}s:\n{log.read_text()[-3000:]}")


_clients: dict[str | None, Any] = {}


def _units(settings: Settings) -> list[dict[str, Any]]:
    """Every unit item of every table, read strongly from the control table."""
    endpoint = settings.effective_endpoint
    client = _clients.get(endpoint) or _clients.setdefault(endpoint, aws.dynamodb(settings))
    units = []
    for table in TABLES:
        kwargs: dict[str, Any] = {
            "TableName": settings.control_table,
            "KeyConditionExpression": "PK = :pk AND begins_with(SK, :unit)",
            "ExpressionAttributeValues": {":pk": {"S": f"BACKFILL#{table}"}, ":unit": {"S": "UNIT#"}},
            "ConsistentRead": True,
        }
        while True:
            page = client.query(**kwargs)
            units.extend({"table": table, **to_native(i)} for i in page["Items"])
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return units


def _items_read(settings: Settings) -> int:
    # `read` moves only with a checkpoint, i.e. after a page was written.
    return sum(int(u["read"]) for u in _units(settings))


def _owned_by(unit: dict[str, Any], pid: int) -> bool:
    # owner = host:pid:random, where pid is that of the `backfill run` process
    # (worker processes get their owner names from it)
    return f":{pid}:" in str(unit.get("owner", ""))


def _wait_until_writing(
    settings: Settings, process: subprocess.Popen[bytes], log: Path, read_before: int, timeout: float = 90
) -> None:
    """Until this run checkpointed a page: it passed the fence, scanned, wrote and saved progress."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"backfill exited ({process.returncode}) before it was killed:\n{log.read_text()[-3000:]}")
        if _items_read(settings) > read_before:
            return
        time.sleep(0.1)
    pytest.fail(f"backfill checkpointed nothing within {timeout}s:\n{log.read_text()[-3000:]}")


def _group_alive(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes of a process group."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


def _kill9(process: subprocess.Popen[bytes], log: Path) -> None:
    assert process.poll() is None, f"backfill finished before it could be killed:\n{log.read_text()[-3000:]}"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 5
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group_alive(process.pid), "a worker process survived kill -9 of its process group"


def _outcome(settings: Settings) -> tuple[dict[Any, dict[str, Any]], dict[SourceRef, str]]:
    """The full scan of sc-main by key, and the quarantine (source item -> reason)."""
    definition = get_definition(settings.migration)
    target = {definition.target_key(i): i for i in scan_all(settings, settings.target_table)}

    async def read_quarantine() -> dict[SourceRef, str]:
        async with aws.aio_dynamodb(settings) as client:
            entries = await ControlStore(client, settings.control_table).quarantine_list()
        return {e.ref: e.reason for e in entries}

    return target, asyncio.run(read_quarantine())


def _assert_complete(settings: Settings, accounts: int, repos: int) -> None:
    """Converged (sc-main is the transform of the legacy tables), every unit completed exactly once,
    and every legacy item counted as read exactly once (pages redone after a kill are not counted twice)."""
    result = check_tables(settings)
    assert result.ok, result.summary()
    rows = status(settings)
    assert {r["table"]: r["read"] for r in rows} == {"sc-accounts": accounts, "sc-repositories": repos}
    for row in rows:
        assert row["units_done"] == row["units_total"] == SEGMENTS, row
        assert row["max_completions_per_unit"] == 1, row
        assert row["finished"], row
    units = _units(settings)
    assert len(units) == len(TABLES) * SEGMENTS
    assert [(u["table"], u["SK"]) for u in units if u["status"] != "done" or u["completions"] != 1] == []


def _assert_same_outcome(
    killed: tuple[dict[Any, Any], dict[SourceRef, str]],
    uninterrupted: tuple[dict[Any, Any], dict[SourceRef, str]],
    collisions: list[tuple[str, str]],
    context: str,
) -> None:
    """Item for item the same sc-main and quarantine, but for collisions decided the other way round.

    Of two repositories whose names differ only in case, the one whose write
    arrives first gets the shared key and the other is quarantined with
    `key_collision` (race 5 of the design). Segments run concurrently, so two
    correct backfills may decide a pair differently; `check_tables` has
    already shown that each run decided consistently. Such a pair is
    recognised by its loser differing between the runs, and only target items
    owned by its two repositories may differ. Nothing else is excluded.
    """
    definition = get_definition("sc")
    (killed_target, killed_quarantine), (target, quarantine) = killed, uninterrupted

    def losers(entries: dict[SourceRef, str], pair: tuple[str, str]) -> list[str]:
        return [i for i in pair if entries.get(SourceRef("sc-repositories", (i,))) == "key_collision"]

    swapped = {
        SourceRef("sc-repositories", (repo_id,))
        for pair in collisions
        if losers(killed_quarantine, pair) != losers(quarantine, pair)
        for repo_id in pair
    }
    differing = [k for k in set(killed_target) | set(target) if killed_target.get(k) != target.get(k)]
    unexplained = sorted(
        k for k in differing
        if not {definition.owner(side[k]) for side in (killed_target, target) if k in side} <= swapped
    )
    context = f"{context}; {len(swapped) // 2} of {len(collisions)} collision pairs decided the other way"
    assert unexplained == [], context
    assert len(killed_target) == len(target), context
    assert len(killed_quarantine) == len(quarantine), context
    assert {r: v for r, v in killed_quarantine.items() if r not in swapped} == {
        r: v for r, v in quarantine.items() if r not in swapped
    }, context


@pytest.fixture
def fresh_settings() -> Iterator[Callable[[], Settings]]:
    """Makes sets of tables, each set on a DynamoDB Local of its own, stopped afterwards.

    Not the session's engine: DynamoDB Local gets slower with every item
    written to it, whether or not the tables are dropped (seeding these 3,000
    items five times in a row on one engine, dropping the tables in between,
    took 3, 3, 4, 8 and 18 s). These tests write tens of thousands of items;
    on one engine the uninterrupted reference backfill took 4x as long as the
    first, and they would slow every later test down. An engine starts in ~3 s.
    """
    ports: list[int] = []

    def make() -> Settings:
        port = local_engine.free_port()
        ports.append(port)
        endpoint = local_engine.start(ENGINE_CACHE, port, quiet=True).endpoint
        suffix = uuid.uuid4().hex[:8]
        settings = load_settings(
            endpoint_url=endpoint,
            table_names={"sc-accounts": f"sc-accounts-{suffix}", "sc-repositories": f"sc-repositories-{suffix}"},
            target_table=f"sc-main-{suffix}",
            control_table=f"dynashift-control-{suffix}",
        )
        make_tables(settings)
        return settings

    yield make
    for port in ports:
        local_engine.stop(ENGINE_CACHE, port)


@pytest.fixture
def backfills(fresh_settings: Callable[[], Settings]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The backfill processes a test started; any still running at the end are killed (before the engines stop)."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None or _group_alive(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# ----------------------------------------------------------------------------- tests
def test_kill_9_three_times_then_resume_equals_an_uninterrupted_backfill(fresh_settings, backfills, tmp_path):
    # GIVEN ~3,000 seeded legacy items (bad rows and case collisions among them), no mirror
    settings = fresh_settings()
    asyncio.run(seed(settings, ACCOUNTS, REPOS, BAD_FRACTION, SEED))
    log = tmp_path / "killed.log"
    rng = random.Random()
    delays: list[float] = []
    read_after_kill: list[int] = []
    # WHEN the backfill (2 worker processes) is killed with SIGKILL at a random moment after it
    # started writing, three times, and then run again until it completes
    for _ in range(KILLS):
        read_before = _items_read(settings)
        process = _start(backfills, settings, log, workers=2)
        _wait_until_writing(settings, process, log, read_before)
        delays.append(round(rng.uniform(0.0, 2.0), 2))
        time.sleep(delays[-1])
        _kill9(process, log)
        read_after_kill.append(_items_read(settings))
    code = _finish(_start(backfills, settings, log, workers=2), log)
    # THEN the last run exits 0, sc-main is exactly the transform of the legacy tables with no
    # leftovers, and every unit was completed exactly once
    context = f"kill delays {delays}s, items checkpointed after each kill {read_after_kill}"
    assert code == 0, f"{context}\n{log.read_text()[-3000:]}"
    _assert_complete(settings, ACCOUNTS, REPOS)
    # AND the outcome is that of an uninterrupted backfill of the same seed into fresh tables
    reference = fresh_settings()
    asyncio.run(seed(reference, ACCOUNTS, REPOS, BAD_FRACTION, SEED))
    reference_log = tmp_path / "uninterrupted.log"
    assert _finish(_start(backfills, reference, reference_log, workers=2), reference_log) == 0, (
        reference_log.read_text()[-3000:]
    )
    _assert_complete(reference, ACCOUNTS, REPOS)
    collisions = generate(ACCOUNTS, REPOS, BAD_FRACTION, SEED).collisions
    _assert_same_outcome(_outcome(settings), _outcome(reference), collisions, context)


def test_two_processes_started_together_split_the_units(fresh_settings, backfills, tmp_path):
    # GIVEN seeded legacy tables and no backfill plan yet
    # WHEN two `backfill run --workers 1` start at the same moment against the same control table
    # THEN both exit 0, every unit is completed exactly once, and each process completed some units.
    # Both begin at one agreed moment, their interpreters started beforehand. A process holds only
    # the few units it can work at once (worker.UNITS_HELD of 16), so one that begins late still finds
    # units left. Should it find none (its start delayed past the other's whole run), that is allowed
    # twice, and then the whole run is repeated on fresh tables.
    attempts = []
    for attempt in range(3):
        settings = fresh_settings()
        asyncio.run(seed(settings, 300, 1200, 0.02, SEED + attempt))
        logs = [tmp_path / f"attempt{attempt}-first.log", tmp_path / f"attempt{attempt}-second.log"]
        start_at = time.time() + 4.0
        processes = [_start(backfills, settings, log, workers=1, start_at=start_at) for log in logs]
        codes = [_finish(p, log) for p, log in zip(processes, logs, strict=True)]
        assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
        _assert_complete(settings, 300, 1200)
        units = _units(settings)
        completed_by = {p.pid: sum(_owned_by(u, p.pid) for u in units) for p in processes}
        assert sum(completed_by.values()) == len(TABLES) * SEGMENTS, [u["owner"] for u in units]
        attempts.append(completed_by)
        if all(completed_by.values()):
            break
    assert all(attempts[-1].values()), f"units completed per process, per attempt: {attempts}"


def test_a_plan_left_half_made_by_a_killed_planner_is_completed(fresh_settings, backfills, tmp_path):
    # GIVEN a plan whose planner was killed after writing the run item and two of its eight units
    settings = fresh_settings()
    asyncio.run(seed(settings, 40, 120, 0.0, SEED))
    client = aws.dynamodb(settings)
    for table in TABLES:
        pk = {"S": f"BACKFILL#{table}"}
        client.put_item(TableName=settings.control_table, Item={
            "PK": pk, "SK": {"S": "RUN"}, "segments": {"N": str(SEGMENTS)}, "source": {"S": "scan"},
            "write_mode": {"S": "put"}, "created_at": {"N": repr(time.time())},
        })
        for number in range(2):
            client.put_item(TableName=settings.control_table, Item={
                "PK": pk, "SK": {"S": f"UNIT#{number:05d}"}, "kind": {"S": "segment"}, "status": {"S": "pending"},
                "read": {"N": "0"}, "written": {"N": "0"}, "skipped": {"N": "0"}, "quarantined": {"N": "0"},
                "completions": {"N": "0"},
            })
    # WHEN the backfill is run again with the same options
    log = tmp_path / "resume.log"
    code = _finish(_start(backfills, settings, log, workers=1), log)
    # THEN the missing units were created and done: every legacy item was read and is in sc-main
    assert code == 0, log.read_text()[-3000:]
    _assert_complete(settings, 40, 120)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--segments", "0"], "--segments"),
        (["--table", "nope"], "'nope'"),
        (["--table", "sc-accounts", "--source", "export:/no/such/path"], "/no/such/path"),
    ],
    ids=["segments-0", "unknown-table", "missing-export"],
)
def test_bad_backfill_options_exit_2_with_one_line(argv, named, capsys):
    # GIVEN a bad option / WHEN `backfill run` gets it / THEN exit 2, one line on stderr naming it, no output
    assert main(["backfill", "run", *argv]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert named in lines[0]
    assert "Traceback" not in captured.err
    assert captured.out == ""
