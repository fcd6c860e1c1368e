"""Guards of the CLI: every command exits 2 with one line on an unreachable endpoint, and the
commands that write synthetic data or create tables refuse a non-local endpoint unless --allow-remote."""

from __future__ import annotations

import click
import pytest
from botocore.config import Config

from shared.cli.context import refuse_remote_endpoint
from shared.cli.main import cli, main
from shared.core import aws
from shared.core.errors import UsageError
from shared.core.settings import load_settings
from shared.sim.local_engine import free_port

# The minimal arguments of each leaf command that needs some (or that would otherwise ask a question).
ARGS = {
    "backup create": ["--bucket", "dynashift-test-bucket"],
    "backup prune": ["--yes"],
    "finalize": ["--yes"],
    "mode set": ["old", "--force"],
    "seed": ["--accounts", "2", "--repos", "2"],
}
# Commands that never reach the configured endpoint, and why.
NO_AWS = {
    "local start": "starts a local engine; talks to no endpoint",
    "local stop": "stops a local engine; talks to no endpoint",
    "local status": "looks for a local engine's pid; talks to no endpoint",
    "demo": "runs on the embedded engine it starts itself, never the configured endpoint",
}


def leaf_commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> list[str]:
    leaves = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            if command.invoke_without_command:  # e.g. `mode`: the group itself runs too
                leaves.append(" ".join((*path, name)))
            leaves += leaf_commands(command, (*path, name))
        else:
            leaves.append(" ".join((*path, name)))
    return leaves


def one_line(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.fixture
def fail_fast(monkeypatch):
    """One attempt per call and a short connect timeout, so a refused connection fails at once."""

    def quick_config(**kwargs):
        return Config(**{**kwargs, "retries": {"mode": "standard", "max_attempts": 1}, "connect_timeout": 1})

    monkeypatch.setattr(aws, "Config", quick_config)
    from shared.sc import seed

    monkeypatch.setattr(seed.Backoff, "delay", lambda self, attempt: 0.0)


def test_the_walk_finds_every_command_group():
    # GIVEN the CLI / WHEN walked / THEN the groups' leaves are there (so the test below covers them)
    leaves = leaf_commands()
    assert {"backfill run", "tables create", "mode set", "seed", "verify"} <= set(leaves)
    assert set(NO_AWS) <= set(leaves)


@pytest.mark.parametrize("command", [c for c in leaf_commands() if c not in NO_AWS])
def test_unreachable_endpoint_exits_2_with_one_line(command, fail_fast, capsys):
    # GIVEN an endpoint nobody listens on
    endpoint = f"http://127.0.0.1:{free_port()}"
    # WHEN any command that talks to DynamoDB runs against it
    code = main(["--endpoint-url", endpoint, *command.split(), *ARGS.get(command, [])])
    # THEN exit 2 and exactly one line that says so
    err = capsys.readouterr().err
    lines = one_line(err)
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("dynashift: error: ") and "cannot reach endpoint" in lines[0]


def test_an_unreachable_endpoint_wrapped_by_a_component_still_exits_2(monkeypatch, capsys):
    # GIVEN a component that wraps the translated connection error in an error of its own (exit code 1)
    from botocore.exceptions import EndpointConnectionError

    from shared.core.errors import DynashiftError
    from shared.ops import tables

    def create_tables(settings, *, with_sources):
        try:
            raise aws.translate(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "create")
        except Exception as exc:
            raise DynashiftError("gave up after 10 attempts") from exc

    monkeypatch.setattr(tables, "create_tables", create_tables)
    # WHEN the command fails / THEN still exit 2: the endpoint setting is the operator's problem
    assert main(["--endpoint-url", "http://127.0.0.1:1", "tables", "create"]) == 2
    assert len(one_line(capsys.readouterr().err)) == 1


# ------------------------------------------------------------------ remote endpoints
REMOTE = "https://dynamodb.eu-west-1.amazonaws.com"


@pytest.fixture
def no_aws(monkeypatch):
    """Any client creation fails the test: a refused command must not touch the endpoint."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a refused command created an AWS client")

    monkeypatch.setattr(aws, "dynamodb", forbidden)
    monkeypatch.setattr(aws, "aio_dynamodb", forbidden)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["seed", "--accounts", "1", "--repos", "1"], "seed"),
        (["tables", "create", "--with-sources"], "tables create --with-sources"),
        (["tables", "create"], "the stack creates"),
    ],
)
@pytest.mark.parametrize("endpoint", [REMOTE, None], ids=["remote-url", "no-endpoint"])
def test_writing_commands_refuse_a_remote_endpoint(argv, named, endpoint, no_aws, capsys):
    # GIVEN an operator shell pointing at AWS (an explicit URL, or no endpoint at all)
    prefix = ["--endpoint-url", endpoint] if endpoint else []
    # WHEN a command that writes synthetic data or creates tables runs
    code = main([*prefix, *argv])
    # THEN it refuses: exit 2, one line naming the command, the endpoint and the way out
    err = capsys.readouterr().err
    lines = one_line(err)
    assert code == 2 and len(lines) == 1, err
    assert named in lines[0] and "--allow-remote" in lines[0]
    assert (REMOTE if endpoint else "the real AWS endpoint of us-east-1") in lines[0]


def test_allow_remote_lets_tables_create_through(monkeypatch, capsys):
    # GIVEN a remote endpoint and --allow-remote
    from shared.ops import tables

    calls = []
    monkeypatch.setattr(tables, "create_tables", lambda settings, *, with_sources: calls.append(with_sources) or [])
    # WHEN / THEN the command runs
    assert main(["--endpoint-url", REMOTE, "tables", "create", "--allow-remote"]) == 0
    assert calls == [False]


def test_refuse_remote_endpoint_passes_local_and_confirmed():
    local = load_settings(endpoint_url="http://localhost:8000")
    remote = load_settings(endpoint_url=REMOTE)
    refuse_remote_endpoint(local, "seed", allow_remote=False)
    refuse_remote_endpoint(remote, "seed", allow_remote=True)
    with pytest.raises(UsageError, match=r"^mode set --force: the endpoint is not local \(https://dynamodb"):
        refuse_remote_endpoint(remote, "mode set --force", allow_remote=False)
