"""CLI commands `verify`, `status` and `quarantine list|retry`.

Thin: parse options, call `shared.verify` / `shared.status`, render with
rich. Exit codes: 0 when verify is ok, 1 when differences remain, 2 on bad
input or an unreachable table (`shared.cli.main` turns the DynashiftError
into one line).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.cli_context import Context, console, pass_ctx


class RichObserver:
    """Renders a verify run's progress: one line per scanned table, and the current phase."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}
        self.phase_task = progress.add_task("starting", total=None)

    def scanned(self, table: str, items: int) -> None:
        if table not in self.tasks:
            self.tasks[table] = self.progress.add_task(f"scan {table}", total=None)
        self.progress.advance(self.tasks[table], items)

    def phase(self, text: str) -> None:
        self.progress.update(self.phase_task, description=text)


@click.command()
@click.option("--table", default="all", show_default=True, help="all, or one source table (sc-accounts, ...).")
@click.option("--segments", type=int, default=8, show_default=True, help="Parallel scan segments per table.")
@click.option("--sample", type=float, default=1.0, show_default=True,
              help="Fraction of source items (and the target items they own) to verify, by key hash.")
@click.option("--settle", type=float, default=None,
              help="Seconds to wait before re-checking a difference (default: setting verify_settle_s).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here.")
@click.option("--repair", is_flag=True, help="Re-sync every difference from the source (race-safe), then re-check.")
@pass_ctx
def verify(ctx: Context, table: str, segments: int, sample: float, settle: float | None, json_path: Path | None,
           repair: bool) -> None:
    """Compare source and target both ways; exit 0 when they agree, 1 when they differ."""
    from shared import verify as verifier

    settings = ctx.settings
    request = verifier.make_request(settings, table=table, segments=segments, sample=sample, settle_s=settle,
                                    repair=repair, json_path=json_path)
    progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"),
                        TextColumn("{task.completed:,.0f} items"), TimeElapsedColumn(), console=console,
                        transient=True)
    with progress:
        report = verifier.run(settings, request, RichObserver(progress))
    render_verify(report)
    if json_path:
        console.print(f"report written to {json_path}")
    if not report["ok"]:
        sys.exit(1)


def render_verify(report: dict[str, Any]) -> None:
    from shared.verify import KINDS

    view = Table(title=f"verify {', '.join(report['tables'])}" + (
        f" (sample {report['sample']:g})" if report["sample"] < 1 else ""))
    view.add_column("figure")
    view.add_column("value", justify="right")
    view.add_row("source items", f"{report['source_items']:,}")
    view.add_row("target items", f"{report['target_items']:,}")
    for kind in KINDS:
        view.add_row(kind, str(report[kind]))
    if report["unconfirmed"]:
        view.add_row("of which not re-checked", str(report["unconfirmed"]))
    for reason, count in sorted(report["quarantined"].items()):
        view.add_row(f"quarantined (known): {reason}", str(count))
    view.add_row("time", f"{report['elapsed_s']:.1f}s ({report['items_per_s']:,.0f} items/s, "
                          f"{report['rounds']} re-check round(s))")
    if report.get("repair"):
        rep = report["repair"]
        view.add_row("repaired", f"{rep['fixed']} of {rep['attempted']}")
    view.add_row("result", "[green]ok[/]" if report["ok"] else "[red]DIFFERENCES[/]")
    console.print(view)
    for kind, samples in report["samples"].items():
        for sample in samples[:5]:
            key = "/".join(sample["target_key"] or []) or "-"
            attrs = ", ".join(sorted(sample["diff"]))[:100]
            console.print(f"  {kind}: target {key} source {sample['source'] or '-'}" + (f" [{attrs}]" if attrs else ""),
                          markup=False, highlight=False)


# ---------------------------------------------------------------------------- status
@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """One screen: mode, backfill, mirror checkpoints, quarantine, last verify, last backup."""
    from shared.status import gather

    data = gather(ctx.settings)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    console.print(f"mode: [bold]{data['mode']}[/]")
    if data["backfill"]:
        view = Table(title="backfill")
        for column in ("table", "units", "read", "written", "quarantined", "items/s", "state"):
            view.add_column(column)
        for row in data["backfill"]:
            state = "done" if row["finished"] else (f"ETA {row['eta_s']:.0f}s" if row["eta_s"] is not None else "running")
            view.add_row(row["table"], f"{row['units_done']}/{row['units_total']}", str(row["read"]),
                         str(row["written"]), str(row["quarantined"]), str(row["items_per_s"]), state)
        console.print(view)
    else:
        console.print("backfill: not planned yet")
    view = Table(title="mirror checkpoints")
    for column in ("table", "shard", "age", "state"):
        view.add_column(column)
    for row in data["mirror"]:
        age = f"{row['age_s']:.0f}s" if row["age_s"] is not None else "-"
        state = row.get("note") or ("finished" if row["finished"] else "open")
        view.add_row(row["table"], row["shard_id"] or "-", age, state)
    console.print(view)
    quarantine = data["quarantine"]
    reasons = ", ".join(f"{r}: {n}" for r, n in quarantine["by_reason"].items())
    console.print(f"quarantine: {quarantine['total']}" + (f" ({reasons})" if reasons else ""))
    last = data["verify"]
    if last:
        age = data["at"] - last["finished_at"]
        verdict = "[green]ok[/]" if last["ok"] else "[red]differences[/]"
        counts = ", ".join(f"{k} {last.get(k, 0)}" for k in ("missing", "extra", "mismatched", "leftover"))
        console.print(f"last verify: {verdict}, {age:.0f}s ago ({', '.join(last['tables'])}; {counts})")
    else:
        console.print("last verify: none yet")
    backup = data["backup"]
    if backup:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(backup["created_at"] or 0)))
        console.print(f"last backup: {backup['kind']} of {backup['table']}, {when}, {backup['status']}")
    else:
        console.print("last backup: none yet")


# ------------------------------------------------------------------------ quarantine
@click.group()
def quarantine() -> None:
    """Source items that cannot be migrated as they are."""


@quarantine.command("list")
@click.option("--reason", help="Only this reason (e.g. invalid_email, key_collision).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with each item's full source image).")
@pass_ctx
def quarantine_list(ctx: Context, reason: str | None, as_json: bool) -> None:
    """List quarantined source items with their reasons."""
    from shared.status import entry_as_dict, quarantine_entries

    entries = asyncio.run(quarantine_entries(ctx.settings, reason))
    if as_json:
        click.echo(json.dumps([entry_as_dict(e) for e in entries], indent=2, default=str))
        return
    if not entries:
        console.print("quarantine is empty" + (f" for reason {reason}" if reason else ""))
        return
    view = Table(title=f"quarantine ({len(entries)})")
    for column in ("table", "key", "reason", "message"):
        view.add_column(column)
    for entry in entries:
        view.add_row(entry.ref.table, "|".join(entry.ref.key), entry.reason, entry.message[:120])
    console.print(view)


@quarantine.command("retry")
@click.option("--reason", help="Only entries with this reason.")
@pass_ctx
def quarantine_retry(ctx: Context, reason: str | None) -> None:
    """Re-read each quarantined item and apply it again (after a fix, or once a collision cleared)."""
    from shared.status import retry_quarantine

    report = asyncio.run(retry_quarantine(ctx.settings, reason))
    still = ", ".join(f"{r}: {n}" for r, n in sorted(report.still.items()))
    console.print(f"retried {report.retried}: {report.left} left quarantine"
                  + (f", {report.deleted} deleted at the source (the mirror clears them)" if report.deleted else "")
                  + (f"; still quarantined: {still}" if still else ""))
