"""The CLI's surface: help texts, and one readable line with exit code 2 on bad input."""

from __future__ import annotations

import json

import pytest

from shared.cli.main import cli, main

COMMANDS = [[], ["local"], ["local", "start"], ["local", "stop"], ["tables", "create"], ["seed"], ["demo"],
            ["backfill", "run"],
            ["mirror", "run"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "dynashift")
def test_every_command_has_help(command, capsys):
    # GIVEN any command / WHEN asked for --help / THEN it explains itself and exits 0
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage:" in out
    assert len(out.splitlines()) > 3


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["seed", "--accounts", "-1", "--repos", "3"], "--accounts"),
        (["seed", "--accounts", "1", "--repos", "3", "--bad-fraction", "2"], "--bad-fraction"),
        (["--endpoint-url", "nonsense", "tables", "create"], "endpoint_url"),
        (["local", "start", "--port", "70000"], "--port"),
        (["mirror", "run", "--from", "yesterday"], "--from"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, named, capsys):
    # GIVEN a bad value / WHEN the CLI runs / THEN exit 2 and one line naming the problem
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert named in lines[0]
    assert "Traceback" not in captured.err


def test_unreachable_endpoint_is_one_line(capsys, monkeypatch):
    # GIVEN an endpoint nobody listens on / WHEN creating tables / THEN one line, exit 2
    from shared.sim.local_engine import free_port

    code = main(["--endpoint-url", f"http://127.0.0.1:{free_port()}", "tables", "create"])
    assert code == 2
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    assert "cannot reach endpoint" in err


def test_cli_group_lists_the_commands():
    assert {"local", "tables", "seed", "demo", "mirror"} <= set(cli.commands)


def fake_seed_report():
    from shared.sc.seed import SeedReport

    return SeedReport(written={"sc-accounts": 1200, "sc-repositories": 3000},
                      bad={"invalid_email": 7, "missing_attribute": 2}, collisions=3, elapsed_s=1.25)


@pytest.fixture
def fake_seed(monkeypatch):
    from shared.sc import seed

    async def run_seed(settings, accounts, repos, bad_fraction, seed_value, console):
        return fake_seed_report()

    monkeypatch.setattr(seed, "run_seed", run_seed)


def test_seed_prints_a_readable_summary(fake_seed, capsys):
    # GIVEN a seed run / WHEN it finishes / THEN a summary per table and per bad reason, no repr
    assert main(["--endpoint-url", "http://127.0.0.1:9", "seed", "--accounts", "1", "--repos", "1"]) == 0
    out = capsys.readouterr().out
    assert "SeedReport(" not in out
    assert "sc-accounts: 1,200 items written" in out
    assert "sc-repositories: 3,000 items written" in out
    assert "invalid_email: 7" in out and "missing_attribute: 2" in out
    assert "3 pair(s)" in out


def test_seed_json_prints_only_json(fake_seed, capsys, monkeypatch):
    # GIVEN physical table names that differ from the logical ones
    monkeypatch.setenv("DYNASHIFT_TABLE_NAMES", '{"sc-accounts": "prod-accounts"}')
    # WHEN seed runs with --json
    assert main(["--endpoint-url", "http://127.0.0.1:9", "seed", "--accounts", "1", "--repos", "1", "--json"]) == 0
    # THEN stdout is one JSON document with the counts
    data = json.loads(capsys.readouterr().out)
    assert data["tables"][0] == {"table": "sc-accounts", "physical": "prod-accounts", "written": 1200}
    assert data["written_total"] == 4200
    assert data["bad_per_reason"] == {"invalid_email": 7, "missing_attribute": 2} and data["bad_total"] == 9
    assert data["collisions"] == 3


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["backfill", "run", "--json-file", "x.json"], "--json-file"),
        (["backfill", "run", "--dry-run", "--restart", "--yes"], "--restart"),
    ],
)
def test_backfill_run_option_combinations(argv, named, capsys):
    assert main(["--endpoint-url", "http://127.0.0.1:9", *argv]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0]
