"""Operations behind the simple CLI commands (tables, seed).

Each function takes the settings and returns data; rendering stays in
`shared.cli`. Kept apart from the CLI so the demo and the tests call the
same code the operator runs.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from shared import aws
from shared.definition import get_definition
from shared.settings import Settings
from shared.tables import create_table, source_specs, table_specs


def create_tables(settings: Settings, *, with_sources: bool) -> list[tuple[str, str, list[str]]]:
    """Create target + control (and optionally the legacy) tables; idempotent."""
    client = aws.dynamodb(settings)
    specs = list(table_specs(settings).values())
    if with_sources:
        specs += source_specs(settings, get_definition(settings.migration))
    results = []
    for spec in specs:
        outcome = create_table(client, spec, local=settings.is_local)
        results.append((spec.name, outcome, spec.notes))
    return results


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


async def run_seed(
    settings: Settings, accounts: int, repos: int, bad_fraction: float, seed_value: int, console: Console
) -> Any:
    from shared.seed import seed

    with progress_bar(console) as progress:
        task = progress.add_task("seeding legacy tables", total=accounts + repos, rate="")

        def advance(n: int) -> None:
            progress.advance(task, n)

        return await seed(settings, accounts, repos, bad_fraction, seed_value, progress=advance)
