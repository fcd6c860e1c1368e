"""Small helpers shared by the integration tests."""

from __future__ import annotations

from shared import aws
from shared.commands import create_tables
from shared.settings import Settings
from shared.workload import Operation, Workload, apply_operation


def make_tables(settings: Settings) -> None:
    create_tables(settings, with_sources=True)


def run_workload(settings: Settings, workload: Workload, count: int) -> list[Operation]:
    client = aws.dynamodb(settings)
    ops = workload.operations(count)
    for op in ops:
        apply_operation(client, settings, op)
    return ops
