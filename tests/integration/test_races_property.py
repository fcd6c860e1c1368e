"""Property: every race of design-notes.md, interleaved at random, still converges.

A hypothesis state machine interleaves application writes (inserts, updates,
renames, transfers, team changes, accounts turning deleted, deletes, bad
data), mirror batches with injected transient failures (and slow sibling
writes) and Lambda-style redelivery, and backfill copies of images read at
random earlier moments. Some items exist before the mirror starts (their
records never reach it), so only the backfill can copy them. At the end the stream is drained, the
backfill finishes a full pass, and sc-main must equal the reference
expectation: the transform of the legacy tables, with no leftovers.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from shared.core.settings import load_settings
from shared.sc.workload import Workload
from tests.conftest import drop_tables
from tests.integration.race_harness import RaceHarness

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("DYNASHIFT_RACE_EXAMPLES", "6"))
STEPS = int(os.environ.get("DYNASHIFT_RACE_STEPS", "40"))


def make_machine(endpoint: str) -> type[RuleBasedStateMachine]:
    class Interleavings(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            suffix = uuid.uuid4().hex[:8]
            self.settings = load_settings(
                endpoint_url=endpoint,
                table_names={"sc-accounts": f"pa-{suffix}", "sc-repositories": f"pr-{suffix}"},
                target_table=f"pm-{suffix}",
                control_table=f"pc-{suffix}",
                consistency_margin_s=0.2,
                stale_writer_refresh_s=0.05,
            )
            self.h = RaceHarness(self.settings)
            self.pending: list[dict] = []
            self.stash: list[tuple[str, dict, float]] = []
            self.workload: Workload | None = None

        @initialize(seed=st.integers(0, 10_000), history=st.integers(0, 12))
        def start(self, seed: int, history: int) -> None:
            self.workload = Workload(seed=seed, bad_fraction=0.1)
            for _ in range(history):  # written before the mirror starts: the backfill's job
                self._write(self.workload.next(), mirrored=False)
            self.h.start_backfill()

        def _write(self, op, *, mirrored: bool = True) -> None:
            record = self.h.put(op.table, op.item) if op.action == "put" else self.h.delete(op.table, op.key)
            if mirrored:
                self.pending.append(record)

        @rule(count=st.integers(1, 4))
        def application_writes(self, count: int) -> None:
            for _ in range(count):
                self._write(self.workload.next())

        @rule(size=st.integers(1, 8), fault=st.sampled_from([None, "put_item", "delete_item", "batch_get_item"]),
              slow_memberships=st.booleans())
        def mirror_batch(self, size: int, fault: str | None, slow_memberships: bool) -> None:
            batch = self.pending[:size]
            if not batch:
                return
            if fault:
                self.h.faults.fail_next[fault] = 1
            if slow_memberships:  # slow siblings of a failing write (race 6: nothing may be left in flight)
                self.h.faults.hold(lambda name, kw: name == "put_item"
                                   and kw["Item"]["SK"]["S"].startswith("MEMBER#"), at_most_s=0.2)
            failed = set(self.h.mirror(batch))
            self.h.faults.fail_next.clear()
            self.h.faults.hold_when = None
            self.h.faults.release()
            if failed:
                first = min(i for i, r in enumerate(batch) if r["dynamodb"]["SequenceNumber"] in failed)
                self.pending = self.pending[first:]  # Lambda redelivers from the lowest failed record
            else:
                self.pending = self.pending[len(batch):]

        @rule(pick=st.integers(0, 10_000), table=st.sampled_from(["sc-accounts", "sc-repositories"]))
        def backfill_reads(self, pick: int, table: str) -> None:
            model = self.workload.accounts if table == "sc-accounts" else self.workload.repos
            if not model:
                return
            key_attr = "accountId" if table == "sc-accounts" else "repoId"
            key = sorted(model)[pick % len(model)]
            image, read_at = self.h.read(table, {key_attr: key})
            if image is not None:
                self.stash.append((table, image, read_at))

        @rule(pick=st.integers(0, 10_000), late=st.booleans(), path=st.sampled_from(["put", "insert"]))
        def backfill_writes(self, pick: int, late: bool, path: str) -> None:
            if self.stash:
                table, image, read_at = self.stash.pop(pick % len(self.stash))
                if late:  # written past the horizon: falls back to a validated write of the current image
                    read_at -= self.settings.stale_write_horizon_s + 1
                self.h.stale_write(table, image, read_at, path=path)

        @invariant()
        def no_exception_left_behind(self) -> None:
            assert self.h.faults.fail_next == {}

        @invariant()
        def nothing_left_in_flight(self) -> None:
            pending = [t for t in asyncio.all_tasks(self.h.loop) if not t.done()]
            assert pending == [], f"a step returned with writes still in flight: {pending}"

        def teardown(self) -> None:
            try:
                if self.workload is None:
                    return
                self.h.mirror_until_done(self.pending)
                for table, image, read_at in self.stash:  # in-flight backfill writes land late
                    self.h.stale_write(table, image, read_at)
                for table, model, key_attr in (
                    ("sc-accounts", self.workload.accounts, "accountId"),
                    ("sc-repositories", self.workload.repos, "repoId"),
                ):
                    for key in sorted(model):  # the backfill's full pass
                        image, read_at = self.h.read(table, {key_attr: key})
                        if image is not None:
                            self.h.stale_write(table, image, read_at)
                self.h.finish_backfill()
                result = self.h.converged()
                assert result.ok, result.summary()
            finally:
                self.h.close()
                drop_tables(self.settings)

    return Interleavings


def test_random_interleavings_of_every_race_converge(local_dynamodb):
    machine = make_machine(local_dynamodb)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=os.environ.get("DYNASHIFT_RACE_RANDOM") is None,
        ),
    )
