"""The stage for fault-injection scenarios: one engine, the real processes, the checks.

A `Stage` owns a DynamoDB Local of its own (with a data directory, so it can
be restarted without losing anything), the legacy tables with seeded
history, and the processes an operator runs: `dynashift mirror run --follow`
and `dynashift backfill run`, each as a real subprocess in a session of its
own (so `kill -9` of its process group is a real crash), plus the
application's workload in a thread. Processes may be pointed at a
`FaultProxy` instead of the engine.

`Stage.finish()` ends a scenario the way an operator would: stop the
workload, let the backfill complete (re-running it resumes it), stop the
mirror, drain what is left from its checkpoints, then check:

* convergence: sc-main is exactly the transform of the legacy tables, with
  every quarantined item accounted for (`shared.verify.convergence.check_tables`);
* nothing acknowledged lost: every item the application wrote holds its last
  acknowledged version (or a later write whose acknowledgement was lost in the
  fault), and every acknowledged delete stays deleted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.core import aws
from shared.core.codec import to_native, to_wire
from shared.core.definition import get_definition
from shared.core.settings import PROJECT_ROOT, Settings, load_settings
from shared.sc.seed import seed
from shared.sc.workload import Operation, Workload, apply_operation
from shared.sim import local_engine
from shared.sim.local_lambda import run_forward_mirror
from shared.verify.convergence import ConvergenceResult, check_tables, scan_all
from tests.integration.helpers import make_tables

ENGINE_CACHE = PROJECT_ROOT / ".cache" / "dynashift"
CLI = "from shared.cli.main import run; run()"


@dataclass
class Outcome:
    scenario: str
    faults: str
    acknowledged: int = 0
    lost: int = 0
    differences: int = 0
    quarantined: int = 0
    detail: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.differences == 0


@dataclass
class AppThread:
    """The application: writes a workload at a rate, keeps what was acknowledged and what was not."""

    settings: Settings
    workload: Workload
    rate_per_s: float = 30.0
    log: list[tuple[Operation, bool]] = field(default_factory=list)  # (operation, acknowledged)

    def __post_init__(self) -> None:
        self.stop_event = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="app")

    def _run(self) -> None:
        client = aws.dynamodb(self.settings, retry_mode="standard")
        started, done = time.monotonic(), 0
        while not self.stop_event.is_set():
            delay = started + done / self.rate_per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            op = self.workload.next()
            try:
                apply_operation(client, self.settings, op)
                self.log.append((op, True))
            except Exception:  # not acknowledged: it may or may not have happened
                self.log.append((op, False))
            done += 1

    def start(self) -> AppThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join()

    @property
    def acknowledged(self) -> int:
        return sum(1 for _, ok in self.log if ok)


class Stage:
    def __init__(self, workdir: Path, *, accounts: int = 80, repos: int = 240, seed_value: int = 5,
                 bad_fraction: float = 0.03) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "engine-data"
        self.port = local_engine.free_port()
        self.engine = local_engine.start(ENGINE_CACHE, self.port, self.data_dir, quiet=True)
        self.settings = load_settings(endpoint_url=self.engine.endpoint, stale_writer_refresh_s=1.0,
                                      consistency_margin_s=2.0, backfill_lease_s=4)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.runner_starts = 0
        make_tables(self.settings)
        import asyncio

        asyncio.run(seed(self.settings, accounts, repos, bad_fraction, seed_value))

    # ------------------------------------------------------------ engine
    def restart_engine(self, down_s: float = 2.0) -> None:
        local_engine.stop(ENGINE_CACHE, self.port)
        time.sleep(down_s)
        self.engine = local_engine.start(ENGINE_CACHE, self.port, self.data_dir, quiet=True)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with _quiet():
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        local_engine.stop(ENGINE_CACHE, self.port)

    # --------------------------------------------------------- processes
    def env(self, endpoint: str | None = None) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(
            DYNASHIFT_ENDPOINT_URL=endpoint or s.effective_endpoint or "",
            DYNASHIFT_TABLE_NAMES=json.dumps(s.table_names),
            DYNASHIFT_TARGET_TABLE=s.target_table,
            DYNASHIFT_CONTROL_TABLE=s.control_table,
            DYNASHIFT_STALE_WRITER_REFRESH_S=str(s.stale_writer_refresh_s),
            DYNASHIFT_CONSISTENCY_MARGIN_S=str(s.consistency_margin_s),
            DYNASHIFT_BACKFILL_LEASE_S=str(s.backfill_lease_s),
            POWERTOOLS_METRICS_DISABLED="true",
        )
        return env

    def spawn(self, args: list[str], log_name: str, endpoint: str | None = None) -> subprocess.Popen[bytes]:
        log = self.workdir / log_name
        with log.open("ab") as out:
            process = subprocess.Popen([sys.executable, "-c", CLI, *args], env=self.env(endpoint), stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                       cwd=PROJECT_ROOT)
        self.processes.append(process)
        return process

    def start_mirror(self, endpoint: str | None = None) -> subprocess.Popen[bytes]:
        self.runner_starts += 1
        process = self.spawn(["mirror", "run", "--follow"], "mirror.log", endpoint)
        self._wait_mirror_started()
        return process

    def _wait_mirror_started(self, timeout: float = 60) -> None:
        s = self.settings
        client = aws.dynamodb(s)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with _quiet():
                found = client.query(TableName=self.settings.control_table, KeyConditionExpression="PK = :pk",
                                     ExpressionAttributeValues={":pk": {"S": "MIRROR"}}, ConsistentRead=True)
                if len(found["Items"]) >= len(get_definition(s.migration).sources):
                    return
            time.sleep(0.2)
        raise AssertionError(f"mirror did not start:\n{self.log_tail('mirror.log')}")

    def start_backfill(self, endpoint: str | None = None) -> subprocess.Popen[bytes]:
        return self.spawn(["backfill", "run", "--table", "all", "--segments", "4"], "backfill.log", endpoint)

    @staticmethod
    def kill9(process: subprocess.Popen[bytes]) -> bool:
        """SIGKILL the process group; False if it had already exited."""
        if process.poll() is not None:
            return False
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return True

    @staticmethod
    def terminate(process: subprocess.Popen[bytes], timeout: float = 60) -> int:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait()

    def wait(self, process: subprocess.Popen[bytes], timeout: float = 240) -> int:
        """Let a process finish; kill it if it takes longer than `timeout`."""
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9(process)
            return -9

    def log_tail(self, name: str) -> str:
        path = self.workdir / name
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def complete_backfill(self, attempts: int = 4, timeout: float = 240) -> None:
        """Run `backfill run` (resuming) until it exits 0."""
        for _ in range(attempts):
            process = self.start_backfill()
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9(process)
                continue
            if code == 0:
                return
        raise AssertionError(f"backfill did not complete:\n{self.log_tail('backfill.log')}")

    # ------------------------------------------------------------- checks
    def finish(self, outcome: Outcome, app: AppThread, mirror: subprocess.Popen[bytes] | None) -> Outcome:
        app.stop()
        self.complete_backfill()
        if mirror is not None:
            self.terminate(mirror)
        run_forward_mirror(self.settings, follow=False)
        result = check_tables(self.settings)
        outcome.acknowledged = app.acknowledged
        outcome.lost = len(lost_writes(self.settings, app.log))
        outcome.differences = 0 if result.ok else _count(result)
        outcome.quarantined = sum(result.quarantined.values())
        if not result.ok:
            outcome.detail = result.summary()[:1000]
        return outcome


def _count(result: ConvergenceResult) -> int:
    return (len(result.missing) + len(result.extra) + len(result.mismatched) + len(result.leftover)
            + len(result.quarantine_missing) + len(result.quarantine_stale))


def lost_writes(settings: Settings, log: list[tuple[Operation, bool]]) -> list[str]:
    """Keys whose stored state is neither the last acknowledged write nor a later unacknowledged one."""
    by_key: dict[tuple[str, str], list[tuple[Operation, bool]]] = {}
    for op, ok in log:
        by_key.setdefault((op.table, json.dumps(op.key, sort_keys=True)), []).append((op, ok))
    stored: dict[tuple[str, str], Any] = {}
    for table in {t for t, _ in by_key}:
        physical = settings.physical_name(table)
        for item in scan_all(settings, physical):
            key_names = next(iter(by_key_for(by_key, table)))
            stored[(table, json.dumps({k: item[k] for k in key_names}, sort_keys=True))] = _canon(item)
    lost = []
    for (table, key), history in by_key.items():
        last_ack = max((i for i, (_, ok) in enumerate(history) if ok), default=None)
        if last_ack is None:
            continue
        allowed = [_state(op) for op, _ in history[last_ack:]]
        if stored.get((table, key)) not in allowed:
            lost.append(f"{table}:{key}")
    return lost


def by_key_for(by_key: dict[tuple[str, str], Any], table: str) -> list[list[str]]:
    return [sorted(json.loads(k).keys()) for t, k in by_key if t == table][:1]


def _state(op: Operation) -> Any:
    return _canon(op.item) if op.action == "put" else None


def _canon(item: Any) -> Any:
    return None if item is None else to_native(to_wire(item))


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], Exception)  # type: ignore[arg-type]
