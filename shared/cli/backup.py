"""`dynashift backup create|list|prune` and `dynashift enable-streams`.

Thin: options in, `shared.ops.backup` / `shared.ops.streams_setup` do the work, rich
renders. Registered in `shared.cli.main`, one line per command.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import click
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.cli.context import Context, console, emit_json, pass_ctx
from shared.core.errors import DynashiftError, UsageError
from shared.core.settings import load_settings
from shared.ops.backup import EXPORT, KINDS, ON_DEMAND, BackupManager, BackupRecord, iso_ms


def stdin_is_interactive() -> bool:
    """Whether a person can answer a question (patched in tests)."""
    return sys.stdin.isatty()


@click.group("backup")
def backup() -> None:
    """On-demand backups and PITR exports of the legacy tables (migration plan, phase 2)."""


@backup.command("create")
@click.option("--kind", type=click.Choice(["both", ON_DEMAND, EXPORT]), default="both", show_default=True,
              help="on_demand: CreateBackup; export: ExportTableToPointInTime to S3; both.")
@click.option("--bucket", help="S3 bucket for the exports (default: setting backup_bucket).")
@click.option("--enable-pitr", is_flag=True, help="Turn on point-in-time recovery where an export needs it.")
@click.option("--no-wait", is_flag=True, help="Start the backups and return; `backup list` shows their progress.")
@pass_ctx
def backup_create(ctx: Context, kind: str, bucket: str | None, enable_pitr: bool, no_wait: bool) -> None:
    """Back up every legacy table and wait until it is done.

    Needs no control table (this runs before the stack exists): AWS's own
    listings are the record, and the control table, when it exists, gets a
    copy. Checks everything first (tables, point-in-time recovery, bucket),
    so a refused run starts nothing. After a completed export it prints the
    dry run that tests the migration against that backup data.
    """
    settings = load_settings(**{**ctx.overrides, "backup_bucket": bucket}) if bucket else ctx.settings
    manager = BackupManager(settings)
    kinds = list(KINDS) if kind == "both" else [kind]
    with console.status("checking the tables and starting the backups"):
        records = manager.start(kinds, enable_pitr=enable_pitr)
    for record in records:
        console.print(f"started {_label(record)}: {record.arn}", markup=False, highlight=False, soft_wrap=True)
    if no_wait:
        console.print("not waiting: `dynashift backup list` shows how they are doing")
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        tasks = {r.sk: progress.add_task(f"{_label(r)}: {r.status}", total=None) for r in records}

        def show(record: BackupRecord) -> None:
            progress.update(tasks[record.sk], description=f"{_label(record)}: {record.status}")

        final = manager.wait(records, on_update=show)
    console.print(_records_table(final, time.time()))
    for record in final:
        if record.kind == EXPORT and record.completed:
            console.print(f"test the migration against this export of {record.source or record.table}:")
            console.print("  " + dry_run_command(record), markup=False, highlight=False, soft_wrap=True)
    failed = [r for r in final if not r.completed]
    if failed:
        raise DynashiftError(
            f"{len(failed)} of {len(final)} backups did not complete: "
            + "; ".join(f"{_label(r)} {r.status}" + (f" ({r.failure})" if r.failure else "") for r in failed)
        )


@backup.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_ctx
def backup_list(ctx: Context, as_json: bool) -> None:
    """dynashift's backups, newest first, as AWS lists them (unfinished ones are re-read from AWS)."""
    records = BackupManager(ctx.settings).records(refresh=True)
    if as_json:
        emit_json([r.as_json() for r in records])
        return
    if not records:
        console.print("no backups recorded yet: `dynashift backup create` makes them")
        return
    console.print(_records_table(records, time.time()))


@backup.command("prune")
@click.option("--retention-days", type=click.IntRange(min=1), help="Keep this many days (default: setting "
              "backup_retention_days, 7).")
@click.option("--yes", is_flag=True, help="Delete without asking.")
@pass_ctx
def backup_prune(ctx: Context, retention_days: int | None, yes: bool) -> None:
    """Delete backups and exports older than the retention, and their records.

    Never anything newer than the retention, never a table. Without --yes it
    shows what it would delete and asks (and refuses when nobody can answer).
    """
    days = retention_days or ctx.settings.backup_retention_days
    manager = BackupManager(ctx.settings)
    cutoff, candidates = manager.prune_candidates(days)
    if not candidates:
        console.print(f"nothing is older than {days} days (before {iso_ms(cutoff)})")
        return
    console.print(f"older than {days} days (before {iso_ms(cutoff)}), to be deleted:")
    console.print(_records_table(candidates, time.time()))
    if not yes:
        if not stdin_is_interactive():
            raise UsageError("backup prune: not confirmed and stdin is not a terminal; add --yes to delete")
        if not click.confirm(f"delete these {len(candidates)} backups?", default=False):
            raise UsageError("backup prune: not confirmed; nothing deleted")
    report = manager.prune(candidates, cutoff)
    console.print(f"deleted {len(report.backups_deleted)} on-demand backups and {report.objects_deleted} export "
                  f"objects; removed {report.records_removed} records")
    for record, why in report.kept:
        console.print(f"kept {_label(record)} from {iso_ms(record.created_at)}: {why}", markup=False)


@click.command("enable-streams")
@click.option("--alarm-email", help="E-mail address for the alarm topic the stack creates (template AlarmEmail).")
@click.option("--alarm-topic-arn", help="Existing SNS topic for the alarms instead (template AlarmTopicArn).")
@click.option("--write-samconfig", "samconfig", is_flag=False, flag_value="samconfig.toml", default=None,
              type=click.Path(dir_okay=False, path_type=Path), metavar="[PATH]",
              help="Also write the deploy parameters and region into this samconfig.toml "
                   "(default path: samconfig.toml; other settings and comments are kept).")
@pass_ctx
def enable_streams_command(ctx: Context, alarm_email: str | None, alarm_topic_arn: str | None,
                           samconfig: Path | None) -> None:
    """Turn on NEW_AND_OLD_IMAGES streams on the legacy tables and print the `sam deploy` line.

    The line carries every parameter the stack needs: stream ARNs, table
    names, BackupBucketName and BackupPrefix (settings backup_bucket and
    backup_prefix), the alarm subscriber, and the region. What dynashift
    cannot know is a placeholder that `sam deploy` refuses at once.
    Idempotent. Refuses (exit 2) a table whose stream has another view type.
    """
    from shared.ops.streams_setup import (
        deploy_overrides,
        enable_streams,
        placeholders,
        sam_deploy_command,
        write_samconfig,
    )

    if alarm_email and alarm_topic_arn:
        raise UsageError("--alarm-email and --alarm-topic-arn: give one (the stack subscribes the e-mail to a topic "
                         "it creates, or uses the existing topic)")
    with console.status("reading the legacy tables") as status:
        results = enable_streams(ctx.settings, on_progress=status.update)
    for result in results:
        console.print(f"{result.table} ({result.physical}): {result.outcome}, stream {result.stream_arn}",
                      markup=False, highlight=False, soft_wrap=True)
    alarm = {"alarm_email": alarm_email, "alarm_topic_arn": alarm_topic_arn}
    overrides = deploy_overrides(ctx.settings, results, **alarm)
    if samconfig is not None:
        write_samconfig(samconfig, overrides, ctx.settings.effective_region)
        console.print(f"wrote the deploy parameters and region {ctx.settings.effective_region} to "
                      f"[default.deploy.parameters] of {samconfig.resolve()}", markup=False, highlight=False,
                      soft_wrap=True)
    missing = placeholders(overrides)
    if missing:
        console.print(f"replace the placeholder of {', '.join(missing)} before deploying (CloudFormation refuses it)",
                      markup=False, highlight=False, soft_wrap=True)
    console.print("build and deploy the stack with:")
    console.print("  make sam-build", markup=False, highlight=False)
    console.print("  " + sam_deploy_command(ctx.settings, results, **alarm), markup=False, highlight=False,
                  soft_wrap=True)


def dry_run_command(record: BackupRecord) -> str:
    """The dry run that tests the migration against a completed export (runbook phase 2.2)."""
    table = record.source or record.table  # --table takes the logical name
    return (f"dynashift backfill run --dry-run --source export:{record.s3_uri} --table {shlex.quote(table)} "
            f"--json-file {shlex.quote(f'dry-run-{table}.json')}")


def _label(record: BackupRecord) -> str:
    return f"{record.kind.replace('_', '-')} of {record.table}"


def _records_table(records: list[BackupRecord], now: float) -> Table:
    view = Table(title="backups")
    for column in ("created", "age", "table", "kind", "status"):
        view.add_column(column, no_wrap=column == "created")
    view.add_column("where", overflow="fold")  # ARNs and URIs are copied whole, never cut
    for r in records:
        where = r.s3_uri if r.kind == EXPORT else r.arn
        status = r.status + (f" ({r.failure})" if r.failure else "")
        view.add_row(iso_ms(r.created_at), _age(now - r.created_at), r.table, r.kind, status, where)
    return view


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{max(seconds, 0) / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
