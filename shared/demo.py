"""`dynashift demo`: the migration told as a story on the embedded engine.

Every step is real: it starts AWS's DynamoDB Local, creates the tables from
template.yaml, seeds legacy data with bad rows and runs the transform over
it. Steps that later parts of the project add (mirror, backfill, verify,
cutover) join the story as they are built; none is faked.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from shared import aws, local_engine
from shared.codec import to_native
from shared.commands import create_tables, progress_bar, run_seed
from shared.definition import get_definition
from shared.dryrun import DryRun
from shared.live import MirrorThread, WorkloadThread
from shared.settings import Settings, load_settings
from shared.workload import Workload

ACCOUNTS_PER_SCALE = 1000
REPOS_PER_SCALE = 3000
BAD_FRACTION = 0.02
WORKLOAD_RATE = 50  # application writes per second, per unit of --scale
WORKLOAD_SECONDS = 10


def count_items(settings: Settings, table: str) -> int:
    client = aws.dynamodb(settings)
    return sum(p["Count"] for p in client.get_paginator("scan").paginate(TableName=table, Select="COUNT"))


def scan_native(settings: Settings, physical_table: str) -> Any:
    client = aws.dynamodb(settings)
    for page in client.get_paginator("scan").paginate(TableName=physical_table):
        for item in page["Items"]:
            yield to_native(item)


def run_demo(overrides: dict[str, Any], *, port: int | None, scale: int, keep: bool, console: Console) -> None:
    base = load_settings(**overrides)
    port = port or local_engine.free_port()
    started = time.monotonic()
    console.rule("[bold]dynashift demo")
    console.print(f"1. starting DynamoDB Local (AWS's own engine) on port {port}")
    info = local_engine.start(base.cache_dir, port)
    try:
        settings = load_settings(**{**overrides, "endpoint_url": info.endpoint})
        console.print(f"   {info.kind} answers on {info.endpoint}")
        console.print("2. creating the tables from template.yaml, and the legacy tables with streams")
        for name, outcome, _ in create_tables(settings, with_sources=True):
            console.print(f"   {name}: {outcome}")
        accounts, repos = ACCOUNTS_PER_SCALE * scale, REPOS_PER_SCALE * scale
        console.print(f"3. seeding {accounts} accounts and {repos} repositories, {BAD_FRACTION:.0%} of them bad")
        asyncio.run(run_seed(settings, accounts, repos, BAD_FRACTION, 7, console))
        console.print("4. starting the mirror (from the streams' LATEST) and a live application workload")
        mirror_thread = MirrorThread(settings, start_from="latest").start()
        workload = WorkloadThread(settings, Workload(seed=21), rate_per_s=WORKLOAD_RATE * scale).start()
        with progress_bar(console) as progress:
            task = progress.add_task("live writes, mirrored", total=WORKLOAD_SECONDS, rate="")
            for _ in range(WORKLOAD_SECONDS):
                time.sleep(1)
                progress.update(task, advance=1, rate=f"{len(workload.acknowledged)} writes, "
                                f"{mirror_thread.records} mirrored")
        workload.stop()
        report = mirror_thread.stop()
        target_items = count_items(settings, settings.target_table)
        console.print(
            f"   {len(workload.acknowledged)} application writes; the mirror applied {report.records} stream "
            f"records; sc-main now holds {target_items} items (history is the backfill's job)"
        )
        console.print("5. dry run: transforming every legacy item, writing nothing")
        definition = get_definition(settings.migration)
        dry = DryRun(definition)
        for source in definition.sources:
            dry.add_all(source.name, scan_native(settings, settings.physical_name(source.name)))
        render_dry_run(console, dry)
    finally:
        if keep:
            console.print(f"the engine keeps running on {info.endpoint}; stop it with: dynashift local stop --port {port}")
        else:
            local_engine.stop(base.cache_dir, port)
            console.print("local engine stopped")
    console.print(f"demo finished in {time.monotonic() - started:.1f}s")


def render_dry_run(console: Console, dry: DryRun) -> None:
    report = dry.report
    table = Table(title="transform dry run")
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, n in sorted(report.source_items.items()):
        table.add_row(f"source items in {name}", str(n))
    for entity, n in sorted(report.target_items.items()):
        table.add_row(f"target items: {entity}", str(n))
    for reason, n in sorted(report.quarantined.items()):
        table.add_row(f"quarantined: {reason}", str(n))
    console.print(table)
