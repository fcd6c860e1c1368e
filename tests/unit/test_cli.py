"""The CLI's surface: help texts, and one readable line with exit code 2 on bad input."""

from __future__ import annotations

import pytest

from shared.cli import cli, main

COMMANDS = [[], ["local"], ["local", "start"], ["local", "stop"], ["tables", "create"], ["seed"], ["demo"],
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
    # GIVEN an endpoint nobody listens on / WHEN creating tables / THEN one line, non-zero exit
    from shared.local_engine import free_port

    code = main(["--endpoint-url", f"http://127.0.0.1:{free_port()}", "tables", "create"])
    assert code != 0
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    assert "cannot reach endpoint" in err


def test_cli_group_lists_the_commands():
    assert {"local", "tables", "seed", "demo", "mirror"} <= set(cli.commands)
