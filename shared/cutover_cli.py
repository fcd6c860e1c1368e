"""`dynashift mode`, `cutover`, `rollback` and `finalize`: thin commands over `shared.cutover`.

Each parses its options, calls the library and prints what happened; the
protocol, its persistence and its checks live in `shared.cutover`.
"""

from __future__ import annotations

import time

import click

from shared.cli_context import Context, console, pass_ctx
from shared.mode import Mode

MODES = click.Choice([m.value for m in Mode])


def _progress(line: str) -> None:
    console.print(f"  {line}", markup=False, highlight=False)


@click.group(invoke_without_command=True)
@click.pass_context
def mode(click_ctx: click.Context) -> None:
    """Show the cutover flag (old, freeze or new). `mode set` changes it by hand."""
    if click_ctx.invoked_subcommand is not None:
        return
    from shared.cutover import read_mode

    ctx: Context = click_ctx.find_object(Context)
    state = read_mode(ctx.settings)
    extra = state.extra
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(state.since)) if state.since else "the start"
    console.print(f"mode: [bold]{state.describe()}[/bold] since {since} (version {state.version})")
    if extra.get("op"):
        window = extra.get("freeze_window_s")
        window_text = f", freeze window {float(window):.2f}s" if window is not None else ""
        console.print(f"last switch: {extra['op']}, step {extra.get('step')}{window_text}")
    if extra.get("reason"):
        console.print(f"reason: {extra['reason']}", markup=False)
    if extra.get("finalized_at"):
        console.print("the migration is finalized; reverse replication is stopped")
    if state.mode == Mode.FREEZE:
        console.print("a switch is in progress or was interrupted: run `dynashift cutover --resume` "
                      "(or `dynashift rollback` to go back)")


@mode.command("set")
@click.argument("value", type=MODES)
@click.option("--towards", type=click.Choice([Mode.OLD.value, Mode.NEW.value]), help="With freeze: the direction.")
@click.option("--force", is_flag=True, help="Required: you understand this skips the whole protocol.")
@pass_ctx
def mode_set(ctx: Context, value: str, towards: str | None, force: bool) -> None:
    """Write the flag by hand, WITHOUT the protocol. Dangerous; requires --force.

    It skips the gate, the wait for the application's cached flag and the
    exact drain of both mirrors. Writes still in the old table's stream, or
    made by application instances that still cache the old mode, can then be
    lost or echoed back. Use `dynashift cutover` / `rollback` instead; this is
    for repairing the flag when those cannot run.
    """
    from shared.cutover import force_mode
    from shared.errors import UsageError

    if not force:
        raise UsageError("mode set: refusing without --force (it skips the cutover protocol; see --help)")
    stored = force_mode(ctx.settings, Mode(value), Mode(towards) if towards else None)
    console.print(f"mode set by hand to {stored.describe()} (version {stored.version}); no drain was done")


def _switch_options(func: click.decorators.FC) -> click.decorators.FC:
    # Test hook: kill the process (os._exit, no cleanup) right after a step was persisted.
    func = click.option("--crash-after", hidden=True)(func)
    func = click.option("--resume", is_flag=True,
                        help="Continue (or, past its deadline, undo) a switch that was interrupted.")(func)
    func = click.option("--max-lag", type=click.FloatRange(min=0, min_open=True),
                        help="Gate: each mirror must catch up with its streams within this (default: "
                             "setting cutover_max_lag_s).")(func)
    func = click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
                        help="Hard limit on the freeze; exceeded, the mode goes back by itself (default: "
                             "setting cutover_timeout_s).")(func)
    return func


def _run(settings: object, switch: object, crash_after: str | None, **kwargs: object) -> None:
    import os

    from shared.cutover import CrashInjected, run_switch

    try:
        report = run_switch(settings, switch, crash_after=crash_after, progress=_progress, **kwargs)  # type: ignore[arg-type]
    except CrashInjected as crash:
        console.print(f"  crash injected after step {crash}: killing the process", markup=False)
        console.file.flush()
        os._exit(137)
    _report(report)


def _report(report: object) -> None:
    from shared.cutover import SwitchReport

    assert isinstance(report, SwitchReport)
    if report.outcome == "nothing":
        console.print(f"no switch in progress: the mode is {report.mode} (consistent)")
        return
    resumed = " (resumed)" if report.resumed else ""
    console.print(
        f"{report.op} done{resumed}: mode is [bold]{report.mode}[/bold]; "
        f"measured freeze window [bold]{report.freeze_window_s:.2f}s[/bold]"
    )


@click.command()
@_switch_options
@click.option("--accept-quarantined", is_flag=True, help="Gate: go ahead although quarantine is not empty.")
@click.option("--skip-backup-check", is_flag=True, help="Gate: do not require a recent backup (local runs).")
@pass_ctx
def cutover(ctx: Context, timeout: float | None, max_lag: float | None, resume: bool, accept_quarantined: bool,
            skip_backup_check: bool, crash_after: str | None) -> None:
    """Switch the application to sc-main: gate, freeze, drain both mirrors per shard, new.

    Every step is stored in the mode flag, so an interrupted cutover is
    finished or undone with --resume. Past --timeout it returns to old by
    itself and says why.
    """
    from shared.cutover import CUTOVER

    _run(ctx.settings, CUTOVER, crash_after, timeout_s=timeout, max_lag_s=max_lag, resume=resume,
         accept_quarantined=accept_quarantined, skip_backup_check=skip_backup_check)


@click.command()
@_switch_options
@pass_ctx
def rollback(ctx: Context, timeout: float | None, max_lag: float | None, resume: bool,
             crash_after: str | None) -> None:
    """Switch back to the legacy tables: freeze, drain the reverse mirror, old. No write is lost.

    During an unfinished cutover (mode freeze) it simply returns to old.
    """
    from shared.cutover import ROLLBACK

    _run(ctx.settings, ROLLBACK, crash_after, timeout_s=timeout, max_lag_s=max_lag, resume=resume)


@click.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def finalize(ctx: Context, yes: bool) -> None:
    """After the monitoring period: sweep migration leftovers, stop reverse replication, record completion.

    Rollback is impossible afterwards. It never deletes a legacy table: it
    prints the commands to retire them later.
    """
    from shared.cutover import finalize as run_finalize
    from shared.errors import UsageError

    if not yes and not click.confirm("finalize stops reverse replication; rollback is impossible after it. Go on?",
                                     default=False):
        raise UsageError("finalize: not confirmed (add --yes to skip the question)")
    report = run_finalize(ctx.settings)
    done = "was already finalized" if report.already_finalized else "is finalized"
    console.print(f"the migration {done}: {report.tombstones_swept} tombstone(s) swept, reverse replication "
                  "stopped applying")
    for line in report.commands:
        console.print(line, markup=False, highlight=False)



