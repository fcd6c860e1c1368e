"""Background helpers for stories and tests: a mirror thread and a workload thread.

`MirrorThread` runs the local stream runner in follow mode in a thread and
can be stopped and then drained. `WorkloadThread` writes a `Workload`'s
operations at a target rate and records every acknowledged write.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from shared.core import aws
from shared.core.settings import Settings
from shared.sc.workload import Operation, Workload, apply_operation
from shared.sim.local_lambda import run_forward_mirror
from shared.streams.runner import RunnerReport


class MirrorThread:
    def __init__(self, settings: Settings, *, start_from: str = "trim-horizon") -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.report: RunnerReport | None = None
        self.error: BaseException | None = None
        self.records = 0
        self._thread = threading.Thread(target=self._run, args=(start_from,), daemon=True, name="mirror")

    def _run(self, start_from: str) -> None:
        def count(report: RunnerReport) -> None:
            self.records = report.records

        try:
            self.report = run_forward_mirror(
                self.settings, follow=True, start_from=start_from, stop_event=self.stop_event, on_batch=count,
                ready_event=self.ready,
            )
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self, wait_ready_s: float = 30.0) -> MirrorThread:
        """Start, and return once every shard has an iterator (LATEST misses nothing after)."""
        self._thread.start()
        self.ready.wait(wait_ready_s)
        if self.error:
            raise self.error
        return self

    def stop(self) -> RunnerReport:
        """Stop after the current batch, then drain what is left, from the checkpoints."""
        self.stop_event.set()
        self._thread.join()
        if self.error:
            raise self.error
        drained = run_forward_mirror(self.settings, follow=False)
        assert self.report is not None
        self.report.records += drained.records
        self.report.tombstones_swept += drained.tombstones_swept
        self.records = self.report.records
        return self.report


@dataclass
class WorkloadThread:
    settings: Settings
    workload: Workload
    rate_per_s: float = 100.0
    max_ops: int | None = None
    acknowledged: list[Operation] = field(default_factory=list)
    errors: int = 0

    def __post_init__(self) -> None:
        self.stop_event = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="workload")

    def _run(self) -> None:
        client = aws.dynamodb(self.settings)
        started = time.monotonic()
        done = 0
        while not self.stop_event.is_set() and (self.max_ops is None or done < self.max_ops):
            due = started + done / self.rate_per_s
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            op = self.workload.next()
            try:
                apply_operation(client, self.settings, op)
                self.acknowledged.append(op)
            except Exception:  # an unacknowledged write; the application would retry
                self.errors += 1
            done += 1

    def start(self) -> WorkloadThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join()
