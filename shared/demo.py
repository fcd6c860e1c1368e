"""`dynashift demo`: the migration told as a story on the embedded engine.

Every step is real: it starts AWS's DynamoDB Local, creates the tables from
template.yaml, seeds legacy data with bad rows, starts the mirror (the local
stream runner) and a live application workload, dry-runs the transform,
backfills the history while the workload keeps writing, drains, and checks
convergence against the transform of every legacy item. Steps not built yet
(the verifier, cutover, rollback, backups) are not shown; none is faked.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from backfill.run import BackfillRequest, run_backfill
from shared import aws, local_engine
from shared.codec import to_native
from shared.commands import create_tables, run_seed
from shared.convergence import check_tables
from shared.definition import get_definition
from shared.dryrun import DryRun
from shared.errors import DynashiftError
from shared.live import MirrorThread, WorkloadThread
from shared.settings import Settings, load_settings
from shared.workload import Workload

ACCOUNTS_PER_SCALE = 1000
REPOS_PER_SCALE = 3000
BAD_FRACTION = 0.02
WORKLOAD_RATE = 50  # application writes per second, per unit of --scale


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
        time.sleep(2)
        console.print(f"   {len(workload.acknowledged)} writes so far, {mirror_thread.records} mirrored")
        console.print("5. dry run: transforming every legacy item, writing nothing")
        definition = get_definition(settings.migration)
        dry = DryRun(definition)
        for source in definition.sources:
            dry.add_all(source.name, scan_native(settings, settings.physical_name(source.name)))
        render_dry_run(console, dry)
        console.print("6. backfill of the history, while the application keeps writing and the mirror runs")
        backfill_started = time.monotonic()
        code = run_backfill(settings, overrides, BackfillRequest(table="all", segments=4), console)
        backfill_s = time.monotonic() - backfill_started
        console.print("7. stopping the workload and draining the mirror")
        workload.stop()
        report = mirror_thread.stop()
        console.print(
            f"   {len(workload.acknowledged)} application writes ({workload.errors} failed, none acknowledged "
            f"and lost); the mirror applied {report.records} stream records"
        )
        console.print("8. convergence check: sc-main against the transform of every legacy item")
        result = check_tables(settings)
        render_result(console, result, dry, backfill_s, code)
        if not result.ok or code:
            raise DynashiftError(f"the demo did not converge: {result.summary()}")
    finally:
        if keep:
            console.print(f"the engine keeps running on {info.endpoint}; stop it with: dynashift local stop --port {port}")
        else:
            local_engine.stop(base.cache_dir, port)
            console.print("local engine stopped")
    console.print(f"demo finished in {time.monotonic() - started:.1f}s")


def render_result(console: Console, result: Any, dry: DryRun, backfill_s: float, code: int) -> None:
    table = Table(title="migration so far")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("source items", str(result.source_items))
    table.add_row("target items", str(result.target_items))
    table.add_row("missing / extra / mismatched / leftover",
                  f"{len(result.missing)} / {len(result.extra)} / {len(result.mismatched)} / {len(result.leftover)}")
    table.add_row("backfill time", f"{backfill_s:.1f}s (exit code {code})")
    for reason, n in sorted(result.quarantined.items()):
        table.add_row(f"quarantined: {reason}", str(n))
    table.add_row("converged", "yes" if result.ok else "NO")
    console.print(table)


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
