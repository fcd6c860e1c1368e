"""`dynashift mode`, `cutover`, `rollback` and `finalize`: thin commands over `shared.cutover.protocol`.

Each parses its options, calls the library and prints what happened; the
protocol, its persistence and its checks live in `shared.cutover.protocol`.

`--json` (on every command here) prints one JSON object on stdout and
nothing else there: no progress lines, no prompt (a confirmation question
goes to stderr). It carries what the human output says. A switch reports
``op``, ``outcome`` (``switched``, ``aborted``, ``refused`` or ``nothing``),
``from_mode`` / ``to_mode`` (the flag as the command found it and as it left
it), ``freeze_window_s``, ``reason``, ``resumed``, the gate's findings and
the step timings. A refusal or an abort (exit 1) still prints its JSON on
stdout, then the one error line on stderr; any other error (bad input, an
unreachable endpoint or missing table, both exit 2, or a concurrent change
of the flag) prints no JSON, only its line.
To report what happened without reading the flag again, a switch runs over
`AwsPorts` that remember the first mode read and the last one written, and a
gate that remembers its checks.

Guards that must come before anything is written or asked:

* `finalize` reads the mode first and refuses (exit 2) unless it is `new`,
  before it asks for confirmation;
* `mode set --force` writes the flag without the protocol, so it refuses a
  non-local endpoint unless `--allow-remote` is given; the refusal looks at
  the settings only, before any client is built. `mode` alone (reading the
  flag) and `cutover` / `rollback` are operator commands for AWS and are
  not guarded.

No command here catches an error to exit by itself: `shared.cli.main.main` turns
each into one line and its exit code.
"""

from __future__ import annotations

import time
from typing import Any

import click

from shared.cli.context import Context, console, emit_json, err_console, pass_ctx
from shared.core.settings import Settings
from shared.cutover.aws_ports import AwsPorts
from shared.cutover.protocol import GateCheck, SwitchReport
from shared.store.mode import Mode, ModeState

MODES = click.Choice([m.value for m in Mode])


def _progress(line: str) -> None:
    console.print(f"  {line}", markup=False, highlight=False)


def _json_option(func: click.decorators.FC) -> click.decorators.FC:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the result as JSON on stdout (nothing else there).")(func)


def mode_as_dict(state: ModeState) -> dict[str, Any]:
    """What `dynashift mode` shows, as plain data (the raw `extra` included)."""
    from shared.verify.differences import jsonable

    extra = state.extra
    window = extra.get("freeze_window_s")
    return {
        "mode": state.mode.value,
        "towards": state.towards.value if state.towards else None,
        "version": state.version,
        "since": state.since or None,
        "last_switch": {"op": extra["op"], "step": extra.get("step"),
                        "freeze_window_s": float(window) if window is not None else None} if extra.get("op") else None,
        "reason": extra.get("reason"),
        "finalized": bool(extra.get("finalized_at")),
        "switch_in_progress": state.mode == Mode.FREEZE,
        "extra": jsonable(extra),
    }


@click.group(invoke_without_command=True)
@_json_option
@click.pass_context
def mode(click_ctx: click.Context, as_json: bool) -> None:
    """Show the cutover flag (old, freeze or new). `mode set` changes it by hand."""
    if click_ctx.invoked_subcommand is not None:
        return
    from shared.cutover.operations import read_mode

    ctx: Context = click_ctx.find_object(Context)
    state = read_mode(ctx.settings)
    if as_json:
        emit_json(mode_as_dict(state))
        return
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
@click.option("--allow-remote", is_flag=True,
              help="Required with a non-local endpoint (AWS): you mean to force the real flag.")
@_json_option
@click.pass_context
def mode_set(click_ctx: click.Context, value: str, towards: str | None, force: bool, allow_remote: bool,
             as_json: bool) -> None:
    """Write the flag by hand, WITHOUT the protocol. Dangerous; requires --force.

    It skips the gate, the wait for the application's cached flag and the
    exact drain of both mirrors. Writes still in the old table's stream, or
    made by application instances that still cache the old mode, can then be
    lost or echoed back. Use `dynashift cutover` / `rollback` instead; this is
    for repairing the flag when those cannot run. Against a non-local
    endpoint it also needs --allow-remote.
    """
    from shared.cli.context import refuse_remote_endpoint
    from shared.core.errors import UsageError
    from shared.cutover.operations import force_mode

    settings = click_ctx.find_object(Context).settings  # type: ignore[union-attr]
    as_json = as_json or bool(click_ctx.parent and click_ctx.parent.params.get("as_json"))  # `mode --json set`
    if not force:
        raise UsageError("mode set: refusing without --force (it skips the cutover protocol; see --help)")
    refuse_remote_endpoint(settings, "mode set --force (it writes the flag without the protocol)",
                           allow_remote)  # before any client exists
    stored = force_mode(settings, Mode(value), Mode(towards) if towards else None)
    if as_json:
        emit_json({**mode_as_dict(stored), "forced": True, "drained": False})
        return
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
    func = _json_option(func)
    return func


class RecordingPorts(AwsPorts):
    """The real ports, remembering the first mode read and the last one written (for the report)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.first_read: ModeState | None = None
        self.last_written: ModeState | None = None

    def read_mode(self) -> ModeState:
        state = super().read_mode()
        if self.first_read is None:
            self.first_read = state
        return state

    def write_mode(self, state: ModeState, expected_version: int) -> ModeState:
        stored = super().write_mode(state, expected_version)
        self.last_written = stored
        return stored


def _run(settings: Settings, switch: Any, crash_after: str | None, as_json: bool, **kwargs: Any) -> None:
    import os

    from shared.cutover.gate import default_gate_checks
    from shared.cutover.operations import run_switch
    from shared.cutover.protocol import CrashInjected, CutoverError, SwitchAborted

    ports = RecordingPorts(settings)
    gate: list[GateCheck] = []

    def gate_checks(*args: Any, **options: Any) -> list[GateCheck]:
        gate[:] = default_gate_checks(*args, **options)
        return gate

    try:
        report = run_switch(settings, switch, ports=ports, crash_after=crash_after, gate_checks=gate_checks,
                            progress=None if as_json else _progress, **kwargs)
    except CrashInjected as crash:
        (err_console if as_json else console).print(f"  crash injected after step {crash}: killing the process",
                                                    markup=False)
        console.file.flush()
        err_console.file.flush()
        os._exit(137)
    except (CutoverError, SwitchAborted) as exc:
        if as_json:
            emit_json(failed_switch_as_dict(switch.op, exc, ports, gate))
        raise
    if as_json:
        emit_json(switch_as_dict(report, ports))
    else:
        _report(report)


def _gate_rows(gate: list[GateCheck]) -> list[dict[str, Any]]:
    return [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in gate]


def _mode_value(state: ModeState | None) -> str | None:
    return state.mode.value if state else None


def switch_as_dict(report: SwitchReport, ports: RecordingPorts) -> dict[str, Any]:
    """A finished switch (or a resume with nothing to do) as JSON."""
    return {
        "op": report.op,
        "outcome": report.outcome,
        "from_mode": _mode_value(ports.first_read),
        "to_mode": report.mode.value,
        "freeze_window_s": report.freeze_window_s,
        "reason": report.reason,
        "resumed": report.resumed,
        "gate": _gate_rows(report.gate),
        "timings": report.timings,
    }


def failed_switch_as_dict(op: str, exc: Exception, ports: RecordingPorts, gate: list[GateCheck]) -> dict[str, Any]:
    """A refused switch (nothing written) or an aborted one (the flag went back) as JSON."""
    from shared.cutover.protocol import SwitchAborted

    aborted = isinstance(exc, SwitchAborted)
    written = ports.last_written if aborted else None
    extra = written.extra if written else {}
    window = extra.get("freeze_window_s")
    return {
        "op": op,
        "outcome": "aborted" if aborted else "refused",
        "from_mode": _mode_value(ports.first_read),
        "to_mode": _mode_value(written or ports.first_read),
        "freeze_window_s": float(window) if window is not None else None,
        "reason": extra.get("reason") or str(exc),
        "resumed": False,
        "gate": _gate_rows(gate),
        "timings": {},
    }


def _report(report: SwitchReport) -> None:
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
def cutover(ctx: Context, as_json: bool, timeout: float | None, max_lag: float | None, resume: bool,
            accept_quarantined: bool, skip_backup_check: bool, crash_after: str | None) -> None:
    """Switch the application to sc-main: gate, freeze, drain both mirrors per shard, new.

    Every step is stored in the mode flag, so an interrupted cutover is
    finished or undone with --resume. Past --timeout it returns to old by
    itself and says why.
    """
    from shared.cutover.protocol import CUTOVER

    _run(ctx.settings, CUTOVER, crash_after, as_json, timeout_s=timeout, max_lag_s=max_lag, resume=resume,
         accept_quarantined=accept_quarantined, skip_backup_check=skip_backup_check)


@click.command()
@_switch_options
@pass_ctx
def rollback(ctx: Context, as_json: bool, timeout: float | None, max_lag: float | None, resume: bool,
             crash_after: str | None) -> None:
    """Switch back to the legacy tables: freeze, drain the reverse mirror, old. No write is lost.

    During an unfinished cutover (mode freeze) it simply returns to old.
    """
    from shared.cutover.protocol import ROLLBACK

    _run(ctx.settings, ROLLBACK, crash_after, as_json, timeout_s=timeout, max_lag_s=max_lag, resume=resume)


@click.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_json_option
@pass_ctx
def finalize(ctx: Context, yes: bool, as_json: bool) -> None:
    """After the monitoring period: sweep migration leftovers, stop reverse replication, record completion.

    Rollback is impossible afterwards. It never deletes a legacy table: it
    prints the commands to retire them later. It needs mode new, and says so
    before asking anything.
    """
    from shared.core.errors import UsageError
    from shared.cutover.operations import finalize as run_finalize
    from shared.cutover.operations import read_mode
    from shared.cutover.protocol import CutoverError

    settings = ctx.settings
    state = read_mode(settings)
    if state.mode != Mode.NEW:
        raise UsageError(f"finalize: needs mode new (after a cutover), but the mode is {state.describe()}")
    if not yes and not click.confirm("finalize stops reverse replication; rollback is impossible after it. Go on?",
                                     default=False, err=as_json):
        raise UsageError("finalize: not confirmed (add --yes to skip the question)")
    try:
        report = run_finalize(settings)
    except CutoverError as exc:
        if as_json:
            emit_json({"outcome": "refused", "mode": state.mode.value, "reason": str(exc)})
        raise
    if as_json:
        emit_json({
            "outcome": "already_finalized" if report.already_finalized else "finalized",
            "mode": Mode.NEW.value,
            "tombstones_swept": report.tombstones_swept,
            "reverse_replication": "stopped",
            "commands": report.commands,
        })
        return
    done = "was already finalized" if report.already_finalized else "is finalized"
    console.print(f"the migration {done}: {report.tombstones_swept} tombstone(s) swept, reverse replication "
                  "stopped applying")
    for line in report.commands:
        console.print(line, markup=False, highlight=False)
