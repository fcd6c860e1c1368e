"""Shared fixtures.

`local_dynamodb` starts AWS's DynamoDB Local once per test session, through
the same code as `dynashift local start`, on a free port, and stops it at the
end. Integration tests get fresh, uniquely named tables per test through
`sc_settings`, so they never see each other's data.

Under pytest-xdist (`make test` runs `-n 2 --dist loadfile`) each worker is
a session of its own, with its own engine on its own free port; a file's
tests all run on one worker. The workers take the files heaviest first
(`HEAVY_FILES`), so that no long file starts last.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.core.errors import EngineError
from shared.core.settings import PROJECT_ROOT, Settings, load_settings
from shared.sim import local_engine

FIXTURES = Path(__file__).parent / "fixtures"
TIMINGS_FILE = PROJECT_ROOT / ".cache" / "test-timings.tsv"  # git-ignored

# Every DynamoDB Local the tests start (here, or from a `dynashift` or bench
# subprocess, which inherit the environment) runs with the JVM's quick compiler
# only. An engine lives seconds to minutes, too short for the optimising
# compiler to pay back its CPU. Measured on the 2-core machine (engine CPU time):
# a start took 4.0 s instead of 6.9, seeding 12,000 items 34 s instead of 51.
# A value set by the caller is kept.
os.environ.setdefault("JAVA_TOOL_OPTIONS", "-XX:TieredStopAtLevel=1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False,
                     help="chaos scenarios: more faults, longer workloads (slow)")
    parser.addoption("--slowest-files", type=int, default=12, metavar="N",
                     help="the timing summary lists the N slowest test files (0: none)")
    parser.addoption("--timings-file", default=str(TIMINGS_FILE), metavar="PATH",
                     help="every test phase's timing, one line each as it ends, for a run killed before "
                          "its summary ('' for none)")


# The slowest files, slowest first (measured, see issue 14). With `--dist loadfile
# --no-loadscope-reorder` xdist hands out files in collection order, so the
# workers start on these and the short files fill in around them: a long file
# started last would leave one core idle while it runs. A file not listed keeps
# its place after them; the order only matters for the wall time, never for a result.
HEAVY_FILES = (
    "tests/chaos/test_chaos.py",
    "tests/integration/test_cutover_local.py",
    "tests/integration/test_runbook_walkthrough.py",
    "tests/integration/test_demo.py",
    "tests/integration/test_cutover_crash_local.py",
    "tests/integration/test_lambda_consumers_local.py",
    "tests/integration/test_bench_smoke.py",
    "tests/integration/test_backfill_kill.py",
    "tests/integration/test_artifact.py",
    "tests/integration/test_backfill_lambda.py",
    "tests/static/test_static_checks.py",
    "tests/integration/test_cutover_cli_local.py",
    "tests/integration/test_races.py",
    "tests/integration/test_reverse_local.py",
    "tests/integration/test_cutover_bench_smoke.py",
    "tests/integration/test_backfill_local.py",
    "tests/unit/test_backup.py",
    "tests/unit/test_template.py",
    "tests/integration/test_verify_local.py",
    "tests/unit/test_sc_properties.py",
    "tests/integration/test_races_property.py",
    "tests/integration/test_foundation_local.py",
    "tests/integration/test_bench_verify_smoke.py",
)


def pytest_sessionstart(session: pytest.Session) -> None:
    global _timing
    config = session.config
    if hasattr(config, "workerinput"):  # inside an xdist worker: the controller reports
        return
    _timing = _Timing(config.getoption("--timings-file"))
    if getattr(config.option, "numprocesses", None) and shutil.which("java"):
        # Fetch DynamoDB Local once, here, before the workers start: two workers
        # fetching it at the same moment would replace each other's folder. If it
        # fails, the tests that need the engine fail with the reason.
        with contextlib.suppress(EngineError):
            local_engine.fetch(PROJECT_ROOT / ".cache" / "dynashift")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):  # alone, the suite keeps its usual order
        return
    rank = {path: index for index, path in enumerate(HEAVY_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: a file keeps its order


@pytest.fixture(scope="session")
def _empty_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty settings file, outside every test's tmp_path (some tests list theirs)."""
    empty = tmp_path_factory.mktemp("config") / "no-settings.toml"
    empty.write_text("")
    return empty


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, _empty_config: Path) -> None:
    """No test reads the developer's AWS config, endpoint or dynashift.toml.

    DYNASHIFT_CONFIG names an empty file (one per session): a named file must
    exist (`load_settings` refuses a missing one), and the working directory's
    dynashift.toml, if any, is then never read.
    """
    for var in list(os.environ):
        if var.startswith("DYNASHIFT_") or var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_PROFILE"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("DYNASHIFT_CONFIG", str(_empty_config))


@pytest.fixture(scope="session")
def local_dynamodb() -> Iterator[str]:
    """Endpoint of a DynamoDB Local started for this test session."""
    cache_dir = PROJECT_ROOT / ".cache" / "dynashift"
    port = local_engine.free_port()
    info = local_engine.start(cache_dir, port, quiet=True)
    try:
        yield info.endpoint
    finally:
        local_engine.stop(cache_dir, port)


@pytest.fixture
def fresh_sc_settings() -> Iterator[Settings]:
    """Like `sc_settings`, on a DynamoDB Local of its own.

    For the heavy tests: DynamoDB Local slows down with every item written to
    it (even after the tables are dropped), so a long test on the shared
    engine would run several times slower at the end of the session.
    """
    cache_dir = PROJECT_ROOT / ".cache" / "dynashift"
    port = local_engine.free_port()
    info = local_engine.start(cache_dir, port, quiet=True)
    try:
        yield load_settings(endpoint_url=info.endpoint)
    finally:
        local_engine.stop(cache_dir, port)


@pytest.fixture
def sc_settings(local_dynamodb: str) -> Iterator[Settings]:
    """Settings pointing at DynamoDB Local with tables unique to this test.

    The tables are deleted afterwards: DynamoDB Local slows down as stream
    data piles up in one engine, and tests must not slow each other down.
    """
    suffix = uuid.uuid4().hex[:8]
    settings = load_settings(
        endpoint_url=local_dynamodb,
        table_names={"sc-accounts": f"sc-accounts-{suffix}", "sc-repositories": f"sc-repositories-{suffix}"},
        target_table=f"sc-main-{suffix}",
        control_table=f"dynashift-control-{suffix}",
    )
    yield settings
    drop_tables(settings)


def drop_tables(settings: Settings) -> None:
    from shared.core import aws

    client = aws.dynamodb(settings)
    names = [settings.target_table, settings.control_table, *settings.table_names.values()]
    for name in names:
        try:
            client.update_table(TableName=name, DeletionProtectionEnabled=False)
        except Exception:  # absent, or protection already off
            pass
        try:
            client.delete_table(TableName=name)
        except Exception:  # never created by this test
            pass


# ------------------------------------------------------------------ timing report
# Issue 14: CI reports each part's wall time. Every test report (setup, call,
# teardown; under pytest-xdist the controller receives the workers' reports)
# is booked to its part (tests/unit, tests/static, tests/integration,
# tests/chaos) and its file. The terminal summary prints, per part, the test
# count, the wall-clock span from the part's first test start to its last test
# end, and its summed test time (with several workers the parts overlap: the sum
# is the work, the span is when it was done), then the slowest files.

_PART_ORDER = ("tests/unit", "tests/static", "tests/integration", "tests/chaos")


class _Timing:
    def __init__(self, log_path: str) -> None:
        self.session_start = time.time()
        self.log = None
        if log_path:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            self.log = open(log_path, "w", buffering=1)  # open for the session, a line at a time
            self.log.write("nodeid\tphase\tworker\tstart\tduration_s\toutcome\n")
        self.part: dict[str, str] = {}  # nodeid -> part
        self.span: dict[str, list[float]] = {}  # part -> [first start, last stop]
        self.busy: dict[str, float] = defaultdict(float)  # part -> summed durations
        self.files: dict[str, float] = defaultdict(float)  # file -> summed durations
        self.file_tests: dict[str, set[str]] = defaultdict(set)
        self.workers: dict[str, float] = defaultdict(float)  # xdist worker -> summed durations
        self.chaos: list[dict[str, object]] = []  # tests/chaos outcomes, from their reports

    def add(self, report: pytest.TestReport) -> None:
        path = report.nodeid.split("::", 1)[0]
        pieces = path.split("/")
        part = "/".join(pieces[:2]) if len(pieces) > 2 else pieces[0]
        self.part[report.nodeid] = part
        self.busy[part] += report.duration
        self.files[path] += report.duration
        self.file_tests[path].add(report.nodeid)
        start, stop = getattr(report, "start", 0.0), getattr(report, "stop", 0.0)
        if start and stop:
            span = self.span.setdefault(part, [start, stop])
            span[0], span[1] = min(span[0], start), max(span[1], stop)
        worker = getattr(getattr(getattr(report, "node", None), "gateway", None), "id", None)
        if worker:  # set by xdist's controller
            self.workers[worker] += report.duration
        if self.log:
            self.log.write(f"{report.nodeid}\t{report.when}\t{worker or '-'}\t{start:.3f}\t{report.duration:.3f}"
                           f"\t{report.outcome}\n")


_timing: _Timing | None = None


def _fmt(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}m{secs:04.1f}s" if minutes else f"{secs:.1f}s"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _timing is not None:
        _timing.add(report)
        _timing.chaos.extend(value for name, value in report.user_properties if name == "chaos_outcome")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    timing = _timing
    if timing is None or not timing.part:
        return
    if timing.chaos:
        from tests.chaos.conftest import write_table

        write_table(terminalreporter, timing.chaos)
    write = terminalreporter.write_line
    counts: dict[str, int] = defaultdict(int)
    for part in timing.part.values():
        counts[part] += 1
    parts = [p for p in _PART_ORDER if p in counts] + sorted(p for p in counts if p not in _PART_ORDER)
    terminalreporter.write_sep("=", "wall time per part")
    write(f"{'part':<20} {'tests':>6} {'wall (first start..last end)':>30} {'test time (sum)':>16}")
    for part in parts:
        span = timing.span.get(part)
        wall = _fmt(span[1] - span[0]) if span else "-"
        write(f"{part:<20} {counts[part]:>6} {wall:>30} {_fmt(timing.busy[part]):>16}")
    session_wall = time.time() - timing.session_start
    write(f"{'session':<20} {len(timing.part):>6} {_fmt(session_wall):>30} {_fmt(sum(timing.busy.values())):>16}")
    if timing.workers:
        write("test time per worker: " + ", ".join(f"{w} {_fmt(s)}" for w, s in sorted(timing.workers.items())))
    count = config.getoption("--slowest-files")
    if count > 0:
        terminalreporter.write_sep("-", f"{count} slowest test files (summed test time)")
        for path, seconds in sorted(timing.files.items(), key=lambda item: -item[1])[:count]:
            write(f"{_fmt(seconds):>10} {len(timing.file_tests[path]):>5} tests  {path}")
