"""Shared fixtures.

`local_dynamodb` starts AWS's DynamoDB Local once per test session, through
the same code as `dynashift local start`, on a free port, and stops it at the
end. Integration tests get fresh, uniquely named tables per test through
`sc_settings`, so they never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import local_engine
from shared.settings import PROJECT_ROOT, Settings, load_settings

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False,
                     help="chaos scenarios: more faults, longer workloads (slow)")


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
    from shared import aws

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
