"""Chaos scenarios: each records one `Outcome`; the session prints them as one table.

The table is also written to bench/out/chaos.md (git-ignored), so a run's
evidence survives the terminal. Each outcome travels as a user property of
its test's report (`OUTCOME_PROPERTY`): under pytest-xdist the scenarios run
in worker processes and only the reports reach the process that prints, so
tests/conftest.py gathers them there and calls `write_table`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.core.settings import PROJECT_ROOT
from tests.chaos.harness import Outcome, Stage

RESULTS = PROJECT_ROOT / "bench" / "out" / "chaos.md"
OUTCOME_PROPERTY = "chaos_outcome"


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--soak"))


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[Stage]:
    stage = Stage(tmp_path)
    try:
        yield stage
    finally:
        stage.close()


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Iterator[list[Outcome]]:
    recorded: list[Outcome] = []
    yield recorded
    for outcome in recorded:  # plain data: it crosses from an xdist worker to the controller
        request.node.user_properties.append((OUTCOME_PROPERTY, dataclasses.asdict(outcome)))


def render(outcomes: list[Outcome]) -> str:
    lines = [
        "| scenario | faults injected | acknowledged writes | lost | differences | quarantined | s | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        verdict = "PASS" if o.ok else f"FAIL {o.detail}"
        lines.append(f"| {o.scenario} | {o.faults} | {o.acknowledged} | {o.lost} | {o.differences} | "
                     f"{o.quarantined} | {o.seconds:.0f} | {verdict} |")
    return "\n".join(lines) + "\n"


def write_table(terminalreporter: pytest.TerminalReporter, recorded: list[dict[str, object]]) -> None:
    """Print the outcomes (as `record` stored them) as one table, and save it."""
    table = render([Outcome(**fields) for fields in recorded])  # type: ignore[arg-type]
    terminalreporter.write_sep("=", "chaos scenarios")
    terminalreporter.write(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("# Chaos scenarios\n\n" + table)
