"""`dynashift backfill run|status`: plan the units, start the workers, show progress.

The operator-facing side of the backfill. It validates the options, plans
(or resumes) one run per source table in the control table, starts the
worker processes (`--workers`, each running several units at once), shows a
rich progress bar per table from the control table's counters (against the
table's *approximate* ItemCount), and when every unit is done it sweeps the
tombstones the mirror left while the backfill ran and prints a summary.

Running it again resumes: the plan is found, done units are skipped, and
units left by dead workers are resumed from their checkpoints once their
leases expire. `--restart` forgets the plan, and asks first.

`run_backfill_report` also returns the run's report as data (`--json`
prints it on stdout; the CLI then hands this module stderr's console).
`--dry-run` plans nothing and writes nothing, not even to the control
table: it feeds every source item (scanned page by page, or read from an
export chunk by chunk) through `shared.ops.dryrun.DryRun` and prints its report.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backfill.units import Run, UnitStore, UnitView
from backfill.worker import Worker, WorkerOptions, new_owner, run_worker, worker_process
from shared.core import aws
from shared.core.definition import get_definition
from shared.core.errors import StoreError, TransientError, UsageError
from shared.core.settings import Settings
from shared.protocol.apply import sweep_tombstones
from shared.store.mode import Mode, read_mode_async

if TYPE_CHECKING:  # rich is the CLI's; the backfill Lambdas import this module without it
    from rich.console import Console



@dataclass
class BackfillRequest:
    table: str  # logical name or "all"
    segments: int = 8
    workers: int = 1
    rate: float | None = None
    write_mode: str = "insert"
    source: str = "scan"
    dry_run: bool = False
    restart: bool = False
    report_path: Path | None = None  # --dry-run --json-file FILE: the dry-run report as JSON
    allow_no_mirror: bool = False
    write_rate: float | None = None  # --dry-run --write-rate: legacy writes/s, for the mirror's cost estimate


def resolve_tables(settings: Settings, table: str) -> list[str]:
    definition = get_definition(settings.migration)
    names = [s.name for s in definition.sources]
    if table == "all":
        return names
    if table not in names:
        raise UsageError(f"--table: unknown table {table!r} (choose from: {', '.join(names)}, all)")
    return [table]


async def mirror_started_at(settings: Settings, table: str, progress: Callable[[str], None] | None) -> float:
    """Since when the mirror covers `table`, waiting for it (bounded): see `shared.streams.coverage`."""
    from shared.streams.coverage import wait_for_coverage

    return await wait_for_coverage(settings, table, settings.mirror_wait_s, progress=progress)


async def approx_item_count(client: Any, physical: str) -> int:
    try:
        return int((await client.describe_table(TableName=physical))["Table"].get("ItemCount", 0))
    except Exception as exc:
        raise aws.translate(exc, f"describe {physical}") from exc


async def plan_runs(settings: Settings, request: BackfillRequest, tables: list[str],
                    progress: Callable[[str], None] | None = None) -> tuple[list[Run], Any]:
    """Check the preconditions and plan (or find) one run per table."""
    export = None
    async with aws.aio_dynamodb(settings) as client:
        store = UnitStore(client, settings.control_table)
        if request.source.startswith("export:"):
            from backfill.export import check_export_time, open_export, parse_source

            if len(tables) != 1:
                raise UsageError("--source export: an export holds one table; name it with --table")
            export = parse_source(request.source.removeprefix("export:"))
            info = await open_export(export, settings)
            if not request.allow_no_mirror:
                check_export_time(info.export_time, await mirror_started_at(settings, tables[0], progress))
        elif request.source != "scan":
            raise UsageError(f"--source must be scan or export:PATH_OR_S3_URI, not {request.source!r}")
        # Options are checked before anything is read from the control table.
        mode = await read_mode_async(client, settings.control_table)
        if mode.mode is not Mode.OLD:
            # After (or during) a cutover the application writes sc-main; a copy
            # of the legacy tables would overwrite newer data with older.
            raise UsageError(f"the backfill runs only in mode old, and the mode is {mode.describe()}")
        runs = []
        for table in tables:
            physical = settings.physical_name(table)
            approx = await approx_item_count(client, physical)
            if request.source == "scan" and not request.allow_no_mirror:
                await mirror_started_at(settings, table, progress)
            if request.restart:
                await store.reset(table)
            if export is not None:
                files = [f.key for f in info.files]
                run = await store.plan(table, units=len(files), kind="file", source=request.source,
                                       write_mode=request.write_mode, files=files, approx_items=info.item_count)
            else:
                run = await store.plan(table, units=request.segments, kind="segment", source="scan",
                                       write_mode=request.write_mode, approx_items=approx)
            runs.append(run)
    return runs, export


def run_backfill(settings: Settings, overrides: dict[str, Any], request: BackfillRequest, console: Console) -> int:
    """Returns the process exit code (0 when every unit is done)."""
    return run_backfill_report(settings, overrides, request, console)[0]


def run_backfill_report(
    settings: Settings, overrides: dict[str, Any], request: BackfillRequest, console: Console
) -> tuple[int, dict[str, Any]]:
    """The exit code and the run's report as JSON-ready data (`backfill run --json`).

    Everything for a person goes to `console` (the CLI hands it stderr's with --json).
    """
    tables = resolve_tables(settings, request.table)
    if request.dry_run:
        return run_dry(settings, request, tables, console)
    runs, export = asyncio.run(plan_runs(settings, request, tables, progress=console.print))
    units_in_flight = max(1, math.ceil(max(r.segments for r in runs) / request.workers))
    options = WorkerOptions(
        tables=tables,
        write_mode=request.write_mode,
        rate_per_s=request.rate / request.workers if request.rate else None,
        units_in_flight=units_in_flight,
        lease_s=settings.backfill_lease_s,
        export=export,
    )
    started = time.time()
    if request.workers == 1:
        asyncio.run(_in_process(settings, options, tables, console))
    else:
        _in_processes(settings, overrides, options, request.workers, tables, console)
    runs = asyncio.run(_load(settings, tables))
    unfinished = [r.table for r in runs if r.done < len(r.units)]
    elapsed = time.time() - started
    region = settings.effective_region
    render_summary(console, runs, elapsed, region)
    report: dict[str, Any] = {
        "dry_run": False,
        "source": request.source,
        "elapsed_s": round(elapsed, 3),
        "tables": [_status_row(r, time.time(), region) for r in runs],
        "unfinished": unfinished,
        "complete": not unfinished,
        "tombstones_swept": None,
    }
    if unfinished:
        console.print(f"not finished: {', '.join(unfinished)} (workers stopped); run the same command to resume")
        return 1, report
    swept = asyncio.run(_finish(settings, tables, console.print))
    report["tombstones_swept"] = swept
    console.print(f"backfill complete; {swept} tombstones swept")
    return 0, report


async def _load(settings: Settings, tables: list[str]) -> list[Run]:
    async with aws.aio_dynamodb(settings) as client:
        store = UnitStore(client, settings.control_table)
        runs = [await store.load(t) for t in tables]
    return [r for r in runs if r is not None]


async def _finish(settings: Settings, tables: list[str], progress: Callable[[str], None] | None = None) -> int:
    """After the last unit: sweep the tombstones the mirror left meanwhile, mark done.

    The mirror may keep leaving tombstones for up to `stale_writer_refresh_s`
    after the last worker deregistered; after that, if no other stale writer
    is registered, no tombstone can be needed any more (a new backfill fences
    before reading) and all of them go. A writer still registered is either
    alive (another backfill: it renews its lease) or died without
    deregistering (killed: its lease lapses, and until then its writes could
    still land). So the sweep first waits, at most until the leases seen now
    have lapsed, for every other writer to go; then all tombstones go, or, if
    one is still live, only those older than horizon + margin, which no
    stale writer can need (the mirror's periodic sweep takes the rest later).
    """
    from shared.store.control import StaleWriterRegistry

    await asyncio.sleep(settings.stale_writer_refresh_s + 0.5)
    async with aws.aio_dynamodb(settings) as client:
        registry = StaleWriterRegistry(client, settings.control_table)
        others = await _await_stopped_writers(registry, progress)
        life = settings.stale_write_horizon_s + settings.consistency_margin_s if others else 0.0
        swept = await sweep_tombstones(settings, get_definition(settings.migration), client, older_than_s=life)
        store = UnitStore(client, settings.control_table)
        for table in tables:
            await store.mark_finished(table)
    return swept


async def _await_stopped_writers(registry: Any, progress: Callable[[str], None] | None) -> bool:
    """Wait until no other stale writer is live, at most until the leases live now would
    lapse unrenewed; True if one still is (it renewed: a backfill that is running)."""
    until = await registry.live_until()
    if until is None:
        return False
    if progress is not None:
        progress(f"another stale writer is still registered (a backfill running, or one killed before it "
                 f"deregistered): waiting up to {max(0.0, until - time.time()):.0f} s for its lease to lapse "
                 "before the final tombstone sweep")
    while time.time() < until:
        await asyncio.sleep(min(1.0, max(0.05, until - time.time())))
        if not await registry.active():
            return False
    return await registry.active()


async def _in_process(settings: Settings, options: WorkerOptions, tables: list[str], console: Console) -> None:
    started: list[Worker] = []
    worker = asyncio.create_task(run_worker(settings, options, new_owner(), started=started.append))
    await _progress(settings, tables, console, lambda: worker.done(),
                    views=lambda: started[0].views if started else {})
    await worker


def _in_processes(
    settings: Settings, overrides: dict[str, Any], options: WorkerOptions, workers: int, tables: list[str],
    console: Console,
) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=worker_process, args=(overrides, options, new_owner()), daemon=False)
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    asyncio.run(_progress(settings, tables, console, lambda: all(not p.is_alive() for p in processes)))
    for process in processes:
        process.join()


PROGRESS_EVERY_S = 1.0  # a display refresh
# In-process, the display reads the worker's own copy of each unit list (`UnitView`): its
# units are live, other workers' at most this old. Otherwise one Query per table a refresh.
PROGRESS_VIEW_AGE_S = 5.0


async def _progress(settings: Settings, tables: list[str], console: Console, finished: Any,
                    views: Callable[[], dict[str, UnitView]] | None = None) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f} of ~{task.total:,.0f} items (approx.)"),
        TextColumn("{task.fields[units]}"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
    )
    started = time.time()
    with progress:
        tasks = {t: progress.add_task(t, total=1, units="", rate="") for t in tables}
        async with aws.aio_dynamodb(settings) as client:
            store = UnitStore(client, settings.control_table)
            runs: dict[str, Run] = {}
            while True:
                done_flag = finished()
                for table in tables:
                    view = views().get(table) if views else None
                    try:
                        if view is None or done_flag or table not in runs:
                            run = await store.load(table)  # the last refresh reads the table itself
                        else:
                            run = replace(runs[table], units=await view.units(within_s=PROGRESS_VIEW_AGE_S))
                    except TransientError:
                        continue  # throttled or a 5xx after botocore's retries: a display, not worth failing for
                    if run is None:
                        continue
                    runs[table] = run
                    totals = run.totals()
                    elapsed = max(1e-6, time.time() - started)
                    progress.update(
                        tasks[table],
                        completed=totals["read"],
                        total=max(run.approx_items or 0, totals["read"], 1),
                        units=f"units {run.done}/{len(run.units)}",
                        rate=f"{totals['read'] / elapsed:,.0f}/s",
                    )
                if done_flag:
                    return
                await asyncio.sleep(PROGRESS_EVERY_S)


def render_summary(console: Console, runs: list[Run], elapsed: float, region: str) -> None:
    from rich.table import Table

    from shared.core import capacity

    table = Table(title=f"backfill summary ({elapsed:.1f}s)")
    columns = ("table", "units done", "read", "written", "skipped (mirror first)", "quarantined", "items/s",
               "write units")
    for column in columns:
        table.add_column(column, justify="right" if column != "table" else "left")
    total = capacity.Usage()
    items = 0
    for run in runs:
        totals = run.totals()
        usage = run.usage()
        total.add(usage)
        items += totals["read"]
        table.add_row(
            run.table, f"{run.done}/{len(run.units)}", str(totals["read"]), str(totals["written"]),
            str(totals["skipped"]), str(totals["quarantined"]), f"{totals['read'] / max(elapsed, 1e-6):,.0f}",
            f"{usage.write_units:,.1f}",
        )
    console.print(table)
    per_item = f"; {total.write_units / items:.2f} write units per source item" if items else ""
    console.print(f"capacity: {capacity.describe(total, region)}{per_item} (every answer's ConsumedCapacity, "
                  f"checkpoints included; prices as of {capacity.PRICES_AS_OF})", soft_wrap=True)


def status(settings: Settings) -> list[dict[str, Any]]:
    """Per-table progress of the backfill, for `backfill status` and `status`."""
    definition = get_definition(settings.migration)
    runs = asyncio.run(_load(settings, [s.name for s in definition.sources]))
    now = time.time()
    return [_status_row(run, now, settings.effective_region) for run in runs]


def _status_row(run: Run, now: float, region: str) -> dict[str, Any]:
    from shared.core import capacity

    totals = run.totals()
    usage = run.usage()
    started = min((u.started_at for u in run.units if u.started_at), default=None)
    elapsed = ((run.finished_at or now) - started) if started else 0.0
    rate = totals["read"] / elapsed if elapsed > 0 else 0.0
    remaining = max(0, (run.approx_items or 0) - totals["read"])
    return {
        "table": run.table,
        "source": run.source,
        "write_mode": run.write_mode,
        "units_done": run.done,
        "units_total": len(run.units),
        "units_running": sum(1 for u in run.units if u.status == "running"),
        **totals,
        "items_per_s": round(rate, 1),
        "eta_s": None if run.finished_at or rate == 0 else round(remaining / rate, 1),
        "approx_items": run.approx_items,
        "finished": run.finished_at is not None,
        # A failed Step Functions execution (backfill/lambda_unit.py record_failure), until a run resumes.
        "failed": run.finished_at is None and run.failure is not None,
        "failure": None if run.finished_at else run.failure,
        "max_completions_per_unit": max((u.completions for u in run.units), default=0),
        "read_units": round(usage.read_units, 1),
        "write_units": round(usage.write_units, 1),
        "write_units_per_item": round(usage.write_units / totals["read"], 3) if totals["read"] else None,
        "on_demand_usd": capacity.price(usage, region),
    }


def run_dry(
    settings: Settings, request: BackfillRequest, tables: list[str], console: Console
) -> tuple[int, dict[str, Any]]:
    """Transform every source item (a scan, or an export), write nothing, report."""
    from shared.ops.dryrun import DryRun, render_dry_run

    dry = DryRun(get_definition(settings.migration), index_keys=target_index_keys(settings))
    if request.source.startswith("export:"):
        from backfill.export import iter_file, open_export, parse_source

        if len(tables) != 1:
            raise UsageError("--source export: an export holds one table; name it with --table")
        location = parse_source(request.source.removeprefix("export:"))

        async def read_export() -> None:
            info = await open_export(location, settings)
            for data_file in info.files:
                async for _, items in iter_file(location, data_file.key, settings):
                    dry.add_all(tables[0], items)

        asyncio.run(read_export())
    elif request.source == "scan":
        asyncio.run(_scan_dry(settings, tables, request.segments, dry))
    else:
        raise UsageError(f"--source must be scan or export:PATH_OR_S3_URI, not {request.source!r}")
    dry.finish(region=settings.effective_region, write_mode=request.write_mode, source=request.source.split(":")[0],
               rate=request.rate, write_rate=request.write_rate)
    render_dry_run(console, dry.report)
    if request.report_path:
        try:
            dry.report.write_json(request.report_path)
        except OSError as exc:
            raise UsageError(f"--json-file: cannot write {request.report_path}: {exc.strerror or exc}") from None
        console.print(f"report written to {request.report_path}")
    return 0, dry.report.as_dict()


def target_index_keys(settings: Settings) -> list[tuple[str, ...]]:
    """The key attributes of each GSI of the target table, as template.yaml defines it."""
    from shared.ops.tables import TARGET_RESOURCE, table_specs

    create = table_specs(settings)[TARGET_RESOURCE].create
    return [tuple(k["AttributeName"] for k in index["KeySchema"]) for index in create.get("GlobalSecondaryIndexes", [])]


DRY_RUN_PAGE_ITEMS = 500  # the backfill's own largest page (`backfill.worker.WorkerOptions.page_items`)
DRY_RUN_PAGES_IN_FLIGHT = 2  # pages read or counted at once, whatever --segments says


async def _scan_dry(settings: Settings, tables: list[str], segments: int, dry: Any) -> None:
    """Parallel scan, counted page by page, in bounded memory whatever the table's size.

    A scan page is up to 1 MB on the wire and about 25 times that once parsed, so
    eight segments each holding a full page at once cost about 200 MB. The
    segments therefore take turns: at most `DRY_RUN_PAGES_IN_FLIGHT` pages of at
    most `DRY_RUN_PAGE_ITEMS` items are read or counted at a time, and a page is
    dropped before its segment asks for the next one. Counting is CPU work in
    this process, so more pages in flight would not make it faster.
    """
    from shared.core.codec import to_native

    slots = asyncio.Semaphore(DRY_RUN_PAGES_IN_FLIGHT)
    async with aws.aio_dynamodb(settings, pool=64) as client:
        for table in tables:
            physical = settings.physical_name(table)

            async def segment(number: int, table: str = table, physical: str = physical) -> None:
                kwargs: dict[str, Any] = {"TableName": physical, "Segment": number, "TotalSegments": segments,
                                          "Limit": DRY_RUN_PAGE_ITEMS}
                while True:
                    async with slots:
                        try:
                            page = await client.scan(**kwargs)
                        except Exception as exc:
                            raise aws.translate(exc, f"scan {physical}") from exc
                        # DryRun.add is synchronous: no other segment runs in between.
                        dry.add_all(table, (to_native(i) for i in page.get("Items", [])))
                        last = page.get("LastEvaluatedKey")
                        del page
                    if last is None:
                        return
                    kwargs["ExclusiveStartKey"] = last

            await asyncio.gather(*(segment(n) for n in range(segments)))


def status_json(settings: Settings) -> str:
    return json.dumps(status(settings), indent=2)


__all__ = ["BackfillRequest", "StoreError", "run_backfill", "run_backfill_report", "status", "status_json"]
