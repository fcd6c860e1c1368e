"""Small helpers shared by the integration tests."""

from __future__ import annotations

from typing import Any

from shared.cli.main import main
from shared.core import aws
from shared.core.settings import Settings
from shared.ops.tables import create_tables
from shared.sc.workload import Operation, Workload, apply_operation


def make_tables(settings: Settings) -> None:
    create_tables(settings, with_sources=True)


def run_workload(settings: Settings, workload: Workload, count: int) -> list[Operation]:
    client = aws.dynamodb(settings)
    ops = workload.operations(count)
    for op in ops:
        apply_operation(client, settings, op)
    return ops


def run_cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    """Run `dynashift ARGS` through the CLI's entry point; (exit code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exited:  # verify exits 1 by sys.exit when differences remain
        code = int(exited.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """The single non-blank line of an error output (fails if there are more or none)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]
