"""Chaos scenarios: each records one `Outcome`; the session prints them as one table.

The table is also written to bench/out/chaos.md (git-ignored), so a run's
evidence survives the terminal.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import PROJECT_ROOT
from tests.chaos.harness import Outcome, Stage

OUTCOMES: list[Outcome] = []
RESULTS = PROJECT_ROOT / "bench" / "out" / "chaos.md"


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
def record() -> Iterator[list[Outcome]]:
    recorded: list[Outcome] = []
    yield recorded
    OUTCOMES.extend(recorded)


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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not OUTCOMES:
        return
    table = render(OUTCOMES)
    terminalreporter.write_sep("=", "chaos scenarios")
    terminalreporter.write(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("# Chaos scenarios\n\n" + table)
