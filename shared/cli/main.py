"""The `dynashift` command line.

Thin by design: each command parses its options, builds the one settings
object, calls the library and renders the result with rich. Every deliberate
error (`DynashiftError`), every usage error and every unreachable endpoint
ends as exactly one readable line on stderr and a non-zero exit code
(2 for bad input or configuration, and for an endpoint nobody answers at),
never a traceback.

Commands that write synthetic data or create tables (`seed`, `tables
create`) refuse a non-local endpoint unless `--allow-remote`
(`shared.cli.context.refuse_remote_endpoint`); `demo` runs on its own engine
and never uses the configured endpoint. With `--json`, a command prints JSON
and nothing else on stdout.
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from shared.cli.context import Context, console, emit_json, err_console, pass_ctx, refuse_remote_endpoint
from shared.core.errors import DynashiftError, EndpointUnreachable, UsageError
from shared.core.settings import Settings

if TYPE_CHECKING:
    from shared.sc.seed import SeedReport


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--endpoint-url", help="DynamoDB endpoint (default: AWS_ENDPOINT_URL_DYNAMODB / AWS_ENDPOINT_URL).")
@click.option("--region", help="AWS region (default: AWS_REGION, else us-east-1).")
@click.version_option(package_name="dynashift")
@click.pass_context
def cli(ctx: click.Context, endpoint_url: str | None, region: str | None) -> None:
    """dynashift: live DynamoDB migration with seconds of write freeze.

    Settings come from options, DYNASHIFT_* environment variables and an
    optional dynashift.toml, in that order.
    """
    ctx.obj = Context({"endpoint_url": endpoint_url, "region": region})


# --------------------------------------------------------------------------- local
@cli.group()
def local() -> None:
    """Run DynamoDB Local, AWS's own engine, in the background."""


@local.command("start")
@click.option("--port", type=click.IntRange(1, 65535), help="Port to listen on (default: setting local_port, 8000).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the data in this folder (default: in memory, gone at stop).",
)
@pass_ctx
def local_start(ctx: Context, port: int | None, data_dir: Path | None) -> None:
    """Fetch (once) and start DynamoDB Local; return when it answers."""
    from shared.sim import local_engine

    settings = ctx.settings
    port = port or settings.local_port
    with console.status(f"starting the local engine on port {port}"):
        info = local_engine.start(settings.cache_dir, port, data_dir)
    where = f"data in {info.data_dir}" if info.data_dir else "in memory"
    console.print(f"{info.kind} is running on {info.endpoint} (pid {info.pid}, {where})")
    console.print(f"use it with: export AWS_ENDPOINT_URL={info.endpoint}")


@local.command("stop")
@click.option("--port", type=click.IntRange(1, 65535), help="Port of the engine to stop (default: local_port).")
@pass_ctx
def local_stop(ctx: Context, port: int | None) -> None:
    """Stop the local engine started by `local start`."""
    from shared.sim import local_engine

    port = port or ctx.settings.local_port
    if local_engine.stop(ctx.settings.cache_dir, port):
        console.print(f"stopped the local engine on port {port}")
    else:
        console.print(f"no local engine of ours is running on port {port}")


@local.command("status")
@click.option("--port", type=click.IntRange(1, 65535), help="Port to check (default: local_port).")
@pass_ctx
def local_status(ctx: Context, port: int | None) -> None:
    """Say whether the local engine is running."""
    from shared.sim import local_engine

    port = port or ctx.settings.local_port
    info = local_engine.status(ctx.settings.cache_dir, port)
    if info:
        console.print(f"{info.kind} is running on {info.endpoint} (pid {info.pid})")
    else:
        console.print(f"no local engine of ours is running on port {port}")
        sys.exit(1)


# -------------------------------------------------------------------------- tables
@cli.group()
def tables() -> None:
    """Create the tables defined in template.yaml."""


@tables.command("create")
@click.option("--with-sources", is_flag=True, help="Also create the legacy tables (with streams), for local use.")
@click.option("--allow-remote", is_flag=True,
              help="Create them although the endpoint is not local (on AWS, `sam deploy` creates them).")
@pass_ctx
def tables_create(ctx: Context, with_sources: bool, allow_remote: bool) -> None:
    """Create sc-main and the control table exactly as template.yaml defines them.

    Creating a table that already exists is not an error. For local engines:
    on AWS the stack creates these tables, and tables made outside it collide
    with `sam deploy`, so a non-local endpoint is refused unless --allow-remote.
    """
    from shared.ops.tables import create_tables

    settings = ctx.settings
    if with_sources:
        what = "tables create --with-sources (creates empty legacy tables, for local use)"
    else:
        what = ("tables create (on AWS the stack creates sc-main and the control table: `sam deploy`; "
                "tables made outside it collide with it)")
    refuse_remote_endpoint(settings, what, allow_remote)
    for name, outcome, notes in create_tables(settings, with_sources=with_sources):
        console.print(f"{name}: {outcome}" + "".join(f" ({n})" for n in notes))


# ---------------------------------------------------------------------------- seed
@cli.command()
@click.option("--accounts", type=click.IntRange(min=0), required=True, help="Number of account items.")
@click.option("--repos", type=click.IntRange(min=0), required=True, help="Number of repository items.")
@click.option(
    "--bad-fraction",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of items with bad data (each quarantine reason represented).",
)
@click.option("--seed", "seed_value", type=int, default=1, show_default=True, help="Random seed (reproducible).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout (progress goes to stderr).")
@click.option("--allow-remote", is_flag=True, help="Write although the endpoint is not local (real AWS).")
@pass_ctx
def seed(ctx: Context, accounts: int, repos: int, bad_fraction: float, seed_value: int, as_json: bool,
         allow_remote: bool) -> None:
    """Write realistic legacy items, every legacy variant included.

    Synthetic data: refused on a non-local endpoint unless --allow-remote.
    """
    from shared.sc.seed import run_seed

    settings = ctx.settings
    refuse_remote_endpoint(settings, "seed (writes synthetic items into the legacy tables)", allow_remote)
    report = asyncio.run(run_seed(settings, accounts, repos, bad_fraction, seed_value,
                                  err_console if as_json else console))
    summary = seed_summary(settings, report)
    if as_json:
        emit_json(summary)
        return
    console.print(f"seeded in {summary['elapsed_s']:.1f}s:")
    for table in summary["tables"]:
        named = table["table"] + (f" ({table['physical']})" if table["physical"] != table["table"] else "")
        console.print(f"  {named}: {table['written']:,} items written", markup=False, highlight=False)
    bad = summary["bad_per_reason"]
    console.print(f"bad items (each should end in quarantine): {summary['bad_total']:,}"
                  + ("" if bad else " (use --bad-fraction for some)"))
    for reason, count in sorted(bad.items()):
        console.print(f"  {reason}: {count:,}", markup=False, highlight=False)
    console.print(f"case collisions (two repositories, one target key): {summary['collisions']} pair(s)")


def seed_summary(settings: Settings, report: SeedReport) -> dict[str, Any]:
    """`seed`'s report as JSON-ready data, physical table names included."""
    return {
        "tables": [{"table": logical, "physical": settings.physical_name(logical), "written": n}
                   for logical, n in report.written.items()],
        "written_total": sum(report.written.values()),
        "bad_per_reason": dict(report.bad),
        "bad_total": sum(report.bad.values()),
        "collisions": report.collisions,
        "elapsed_s": round(report.elapsed_s, 3),
    }


# -------------------------------------------------------------------------- mirror
@cli.group()
def mirror() -> None:
    """Replicate legacy writes to the target (the local stream runner)."""


@mirror.command("run")
@click.option("--follow", is_flag=True, help="Keep polling for new records until SIGINT/SIGTERM.")
@click.option(
    "--from",
    "start_from",
    type=click.Choice(["trim-horizon", "latest"]),
    default="trim-horizon",
    show_default=True,
    help="Where to start a shard that has no checkpoint yet.",
)
@click.option("--max-seconds", type=click.FloatRange(min=0), help="Stop after this long (for scripts).")
@click.option(
    "--direction",
    type=click.Choice(["forward", "reverse"]),
    default="forward",
    show_default=True,
    help="forward: legacy streams -> sc-main; reverse: sc-main's stream -> legacy (writes only after cutover).",
)
@pass_ctx
def mirror_run(ctx: Context, follow: bool, start_from: str, max_seconds: float | None, direction: str) -> None:
    """Poll the legacy tables' streams and apply every record through the mirror handler.

    It calls the same handler function Lambda calls, with Lambda-shaped events,
    keeps a checkpoint per shard in the control table and resumes from it.
    Without --follow it stops once every shard is drained. With --direction
    reverse it polls sc-main's stream through the reverse replication handler
    instead, which writes the legacy tables only after cutover.
    """
    from shared.core import capacity
    from shared.sim.local_lambda import run_mirror

    settings = ctx.settings
    component = "mirror" if direction == "forward" else "reverse-mirror"
    before = capacity.LEDGER.component(component)
    with console.status("mirroring") as status:

        def show(report: Any) -> None:
            status.update(f"mirroring: {report.records} records in {report.batches} batches")

        report = run_mirror(
            settings, direction, follow=follow, start_from=start_from, max_seconds=max_seconds, install_signals=True,
            on_batch=show,
        )
    console.print(
        f"applied {report.records} records in {report.batches} batches "
        f"({report.redelivered} redelivered after transient faults, {report.expired_iterators} iterators renewed, "
        f"{report.tombstones_swept} tombstones swept)"
    )
    usage = capacity.LEDGER.component(component).minus(before)
    per_record = f", {usage.write_units / report.records:.2f} write units per record" if report.records else ""
    console.print(f"capacity: {capacity.describe(usage, settings.effective_region)}{per_record}")


# ------------------------------------------------------------------------ backfill
@cli.group()
def backfill() -> None:
    """Copy the legacy tables' history into the target, race-safely."""


@backfill.command("run")
@click.option("--table", default="all", show_default=True, help="sc-accounts, sc-repositories or all.")
@click.option("--segments", type=click.IntRange(min=1, max=1_000_000), default=8, show_default=True,
              help="Parallel scan segments (units of work) per table.")
@click.option("--workers", type=click.IntRange(min=1, max=256), default=1, show_default=True,
              help="Worker processes on this host; each runs several segments at once.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Cap on source items per second.")
@click.option("--write-mode", type=click.Choice(["insert", "put", "transact"]), default="insert", show_default=True,
              help="insert: create-only PartiQL INSERTs, 25 a request (1x WCU, least client CPU); put: a conditional "
                   "PutItem per item (1x WCU); transact: TransactWriteItems of 100 (2x WCU).")
@click.option("--source", default="scan", show_default=True, help="scan, or export:PATH_OR_S3_URI (a PITR export).")
@click.option("--dry-run", is_flag=True,
              help="Transform and validate everything, write nothing, report, and estimate the real run's cost.")
@click.option("--write-rate", type=click.FloatRange(min=0, min_open=True),
              help="With --dry-run: the application's legacy writes per second, to estimate the mirror's cost a day.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the run's report as JSON on stdout (progress and the rest go to stderr).")
@click.option("--json-file", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="With --dry-run: also write the dry-run report as JSON to this file.")
@click.option("--restart", is_flag=True, help="Forget the saved progress and start over (asks first).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (with --restart).")
@click.option("--allow-no-mirror", is_flag=True,
              help="Run although no mirror ever ran (only for tables nobody writes to).")
@pass_ctx
def backfill_run(ctx: Context, table: str, segments: int, workers: int, rate: float | None, write_mode: str,
                 source: str, dry_run: bool, write_rate: float | None, as_json: bool, report_path: Path | None,
                 restart: bool, yes: bool, allow_no_mirror: bool) -> None:
    """Copy every legacy item into the target. Running it again resumes.

    Safe while the application writes and the mirror runs: every write is
    create-only and never lands over a newer or deleted state.
    """
    from backfill.run import BackfillRequest, run_backfill_report

    if report_path and not dry_run:
        raise UsageError("--json-file: only with --dry-run (use --json for the report of a backfill)")
    if write_rate and not dry_run:
        raise UsageError("--write-rate: only with --dry-run (it feeds the cost estimate)")
    if restart and dry_run:
        raise UsageError("--restart: not with --dry-run (a dry run keeps no progress)")
    if restart and not yes and not click.confirm(
        f"--restart forgets the saved backfill progress of {table}; continue?", default=False, err=as_json
    ):
        raise UsageError("--restart: not confirmed (add --yes to skip the question)")
    request = BackfillRequest(table=table, segments=segments, workers=workers, rate=rate, write_mode=write_mode,
                              source=source, dry_run=dry_run, restart=restart, report_path=report_path,
                              allow_no_mirror=allow_no_mirror, write_rate=write_rate)
    code, report = run_backfill_report(ctx.settings, ctx.overrides, request, err_console if as_json else console)
    if as_json:
        emit_json(report)
    if code:
        sys.exit(code)


@backfill.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_ctx
def backfill_status(ctx: Context, as_json: bool) -> None:
    """Per-table progress: units done, items, rate, ETA."""
    from rich.table import Table

    from backfill.run import status
    from shared.core import capacity

    rows = status(ctx.settings)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        console.print("no backfill has been planned yet")
        return
    view = Table(title="backfill")
    for column in ("table", "units", "read", "written", "skipped", "quarantined", "items/s", "ETA", "write units"):
        view.add_column(column)
    for row in rows:
        eta = "done" if row["finished"] else "FAILED" if row.get("failed") else (
            f"{row['eta_s']:.0f}s" if row["eta_s"] is not None else "?")
        view.add_row(row["table"], f"{row['units_done']}/{row['units_total']}", str(row["read"]),
                     str(row["written"]), str(row["skipped"]), str(row["quarantined"]), str(row["items_per_s"]),
                     eta, f"{row['write_units']:,.1f}")
    console.print(view)
    for row in rows:
        dollars = row["on_demand_usd"]
        cost = f"{capacity.format_usd(dollars)} on demand" if dollars is not None else \
            "no on-demand rate known for the region"
        console.print(f"{row['table']}: {row['write_units']:,.1f} write units, {row['read_units']:,.1f} read units "
                      f"({cost})", soft_wrap=True)
    for row in rows:
        if row.get("failed"):
            console.print(f"{row['table']}: FAILED: {row['failure']} (start the execution again to resume)",
                          markup=False, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------- demo
@cli.command()
@click.option("--port", type=click.IntRange(1, 65535), help="Port for the embedded engine (default: a free one).")
@click.option("--scale", type=click.IntRange(min=1), default=1, show_default=True, help="Multiply the data size.")
@click.option("--keep", is_flag=True, help="Leave the local engine running afterwards, for exploring.")
@pass_ctx
def demo(ctx: Context, port: int | None, scale: int, keep: bool) -> None:
    """The whole migration, told as a story on the embedded DynamoDB Local.

    It never touches the configured endpoint (every step runs against the
    engine it starts), so it needs no --allow-remote.
    """
    from shared.sim.demo import run_demo

    run_demo(ctx.overrides, port=port, scale=scale, keep=keep, console=console)


# ------------------------------------------------------------- component commands
# Each component keeps its own commands beside it (built on shared.cli.context);
# they are registered here, one line each.
from shared.cli.backup import backup as backup_group  # noqa: E402
from shared.cli.backup import enable_streams_command  # noqa: E402

cli.add_command(backup_group)
cli.add_command(enable_streams_command)
from shared.cli.cutover import cutover, finalize, mode, rollback  # noqa: E402

cli.add_command(mode)
cli.add_command(cutover)
cli.add_command(rollback)
cli.add_command(finalize)
from shared.cli.verify import quarantine, status, verify  # noqa: E402

cli.add_command(verify)
cli.add_command(status)
cli.add_command(quarantine)


# ----------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every failure is one line on stderr.

    Library warnings (powertools' "No application metrics to publish" when the
    mirror handler flushes with metrics off, deprecations, ...) are silenced
    for the duration of the command: they are for a developer, never part of
    the operator's output. Lambda never runs this, so it keeps them.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    try:
        cli.main(args=argv, prog_name="dynashift", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("dynashift: aborted")
        return 130
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "dynashift"
        _fail(f"{command}: {exc.format_message()}")
        return 2
    except click.ClickException as exc:
        _fail(exc.format_message())
        return exc.exit_code
    except DynashiftError as exc:
        _fail(str(exc))
        return _exit_code(exc)
    except KeyboardInterrupt:
        err_console.print("dynashift: interrupted")
        return 130
    except Exception as exc:  # the last line of defence: still one line
        from shared.core.aws import translate

        translated = translate(exc, type(exc).__name__)
        if translated is exc:
            _fail(f"unexpected error: {type(exc).__name__}: {exc}")
            return 1
        _fail(str(translated))
        return 2
    return 0


def _exit_code(exc: DynashiftError) -> int:
    """The error's own code, but 2 whenever an unreachable endpoint is behind it.

    A component may wrap the translated connection error in its own (e.g. a
    TransientError "gave up after N attempts"); the operator's problem is
    still the endpoint setting.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, EndpointUnreachable):
            return 2
        cause = cause.__cause__ or cause.__context__
    return exc.exit_code


def _fail(message: str) -> None:
    line = " ".join(str(message).split())
    err_console.print(f"dynashift: error: {line}", markup=False, highlight=False, soft_wrap=True)


def run() -> None:
    sys.exit(main())


__all__ = ["UsageError", "cli", "main", "run"]
