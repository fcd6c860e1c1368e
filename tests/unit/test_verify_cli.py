"""`verify`, `status` and `quarantine`: help, and one line with exit code 2 on bad input."""

from __future__ import annotations

import pytest

from shared.cli.main import cli, main


def test_commands_are_registered_with_help(capsys):
    assert {"verify", "status", "quarantine"} <= set(cli.commands)
    for command in (["verify"], ["status"], ["quarantine", "list"], ["quarantine", "retry"]):
        assert main([*command, "--help"]) == 0
        assert "Usage:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["verify", "--sample", "0"], "--sample"),
        (["verify", "--sample", "abc"], "--sample"),
        (["verify", "--segments", "0"], "--segments"),
        (["verify", "--settle", "-5"], "--settle"),
        (["verify", "--table", "sc-nothing"], "--table"),
        (["quarantine", "list", "--bogus"], "--bogus"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(argv, named, capsys):
    # GIVEN a bad option / WHEN the CLI runs / THEN exit 2 and one line naming it
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert named in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("argv", [["verify", "--settle", "0"], ["status"], ["quarantine", "list"]])
def test_an_unreachable_endpoint_is_one_line_and_exit_2(argv, capsys):
    from shared.sim.local_engine import free_port

    code = main(["--endpoint-url", f"http://127.0.0.1:{free_port()}", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert "cannot reach endpoint" in err
