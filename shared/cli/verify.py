"""CLI commands `verify`, `status` and `quarantine list|retry`.

Thin: parse options, call `shared.verify.verifier` / `shared.cli.status`, render with
rich. Exit codes: 0 when verify is ok, 1 when differences remain, 2 on bad
input or an unreachable table (`shared.cli.main.main` turns the DynashiftError
into one line). Nothing here catches an error to exit by itself.

`--json` always means: the report as JSON on stdout and nothing else there
(no progress, no table); `verify --json-file FILE` also (or instead) writes
it to a file.

`--reason` accepts only the reason codes the engine and the configured
migration definition can raise (every `QuarantineError` subclass once the
definition is imported); an unknown one exits 2 listing them.

Quarantine entries keep the full legacy image, which is personal data. The
listing shows source table, key, reason, message and detection time only;
`--with-images` adds the image and the target keys (held, collision), which
can embed an email. Without it the images are not even read (projection).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from shared.cli.context import Context, console, emit_json, pass_ctx
from shared.core import capacity
from shared.verify.progress import RichObserver

if TYPE_CHECKING:
    from shared.core.settings import Settings
    from shared.store.control import QuarantineEntry


@click.command()
@click.option("--table", default="all", show_default=True, help="all, or one source table (sc-accounts, ...).")
@click.option("--segments", type=int, default=8, show_default=True, help="Parallel scan segments per table.")
@click.option("--sample", type=float, default=1.0, show_default=True,
              help="Fraction of source items (and the target items they own) to verify, by key hash.")
@click.option("--settle", type=float, default=None,
              help="Seconds to wait before re-checking a difference (default: setting verify_settle_s).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (nothing else there).")
@click.option("--json-file", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the JSON report to this file.")
@click.option("--repair", is_flag=True, help="Re-sync every difference from the source (race-safe), then re-check.")
@pass_ctx
def verify(ctx: Context, table: str, segments: int, sample: float, settle: float | None, as_json: bool,
           json_path: Path | None, repair: bool) -> None:
    """Compare source and target both ways; exit 0 when they agree, 1 when they differ."""
    from shared.verify import verifier

    settings = ctx.settings
    request = verifier.make_request(settings, table=table, segments=segments, sample=sample, settle_s=settle,
                                    repair=repair, json_path=json_path)
    if as_json:
        report = verifier.run(settings, request)  # no progress: stdout carries the JSON only
        emit_json(report)
    else:
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
    from shared.verify.differences import KINDS

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
    for part, usage in ((p, report["capacity"].get(p)) for p in ("verify", "repair")):
        if usage is not None:
            dollars = capacity.format_usd(usage["usd"]) if usage["usd"] is not None else "no rate known"
            view.add_row(f"capacity ({part})", f"{usage['read_units']:,.1f} read, {usage['write_units']:,.1f} write "
                                               f"units ({dollars} on demand in {report['capacity']['region']})")
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
    """One screen: mode, backfill, stream consumers, quarantine, last verify, last backup."""
    from shared.cli.status import gather

    data = gather(ctx.settings)
    if as_json:
        emit_json(data)
        return
    console.print(f"mode: [bold]{data['mode']}[/]")
    if data["backfill"]:
        view = Table(title="backfill")
        for column in ("table", "units", "read", "written", "quarantined", "items/s", "state", "write units"):
            view.add_column(column)
        for row in data["backfill"]:
            state = "done" if row["finished"] else (f"ETA {row['eta_s']:.0f}s" if row["eta_s"] is not None else "running")
            view.add_row(row["table"], f"{row['units_done']}/{row['units_total']}", str(row["read"]),
                         str(row["written"]), str(row["quarantined"]), str(row["items_per_s"]), state,
                         f"{row['write_units']:,.1f}")
        console.print(view)
    else:
        console.print("backfill: not planned yet")
    view = Table(title="stream consumers (Lambda event source mappings)")
    for column in ("direction", "table", "function", "state"):
        view.add_column(column)
    for row in data["consumers"]["mappings"]:
        state = row.get("note") or f"{row['state']} from {row['starting_position']}, last: {row['last_processing_result']}"
        view.add_row(row["direction"], row["table"], row["function"] or "-", state)
    console.print(view)
    view = Table(title="stream consumers: acknowledged records per shard")
    for column in ("direction", "table", "shard", "pending", "lag", "state"):
        view.add_column(column)
    for row in data["consumers"]["shards"]:
        if "note" in row:
            view.add_row(row["direction"], "-", "-", "-", "-", row["note"])
            continue
        state = "finished" if row["finished"] else ("caught up" if row["pending"] == 0 else "behind")
        pending = str(row["pending"]) + ("" if row["pending_counted_all"] else "+")  # read to the first gap only
        view.add_row(row["direction"], row["table"], row["shard_id"], pending, f"{row['lag_s']:.1f}s", state)
    console.print(view)
    for direction, usage in data["mirror_capacity"].items():
        per_record = f", {usage['write_units'] / usage['records']:.2f} write units per record" if usage["records"] else ""
        dollars = capacity.format_usd(usage["usd"]) if usage["usd"] is not None else "no rate known"
        console.print(f"{direction} mirror, last 24 h: {usage['records']:,.0f} records, {usage['write_units']:,.1f} "
                      f"write units, {usage['read_units']:,.1f} read units ({dollars} on demand){per_record}",
                      soft_wrap=True)
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


def known_reasons(settings: Settings) -> list[str]:
    """Every quarantine reason code: the engine's and the configured definition's `QuarantineError`s."""
    from shared.core.definition import get_definition
    from shared.core.errors import QuarantineError

    get_definition(settings.migration)  # imports the definition's modules, and so its own error classes
    reasons: set[str] = set()
    pending: list[type[QuarantineError]] = [QuarantineError]
    while pending:
        cls = pending.pop()
        reasons.add(cls.reason)
        pending.extend(cls.__subclasses__())
    return sorted(reasons)


def _reason_choice(click_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`--reason`: a click.Choice built at run time, from the settings' migration definition."""
    if value is None:
        return None
    settings = click_ctx.find_object(Context).settings  # type: ignore[union-attr]
    return str(click.Choice(known_reasons(settings)).convert(value, param, click_ctx))


REASON_HELP = "Only this reason code (e.g. invalid_email, key_collision); an unknown one lists the allowed."


def quarantine_row(entry: QuarantineEntry, *, with_images: bool) -> dict[str, Any]:
    """One entry as JSON: without images, only what names the item and says why (no personal data)."""
    from shared.verify.differences import jsonable

    row: dict[str, Any] = {
        "table": entry.ref.table,
        "key": list(entry.ref.key),
        "reason": entry.reason,
        "message": entry.message,
        "detected_at": entry.detected_at,
    }
    if with_images:
        row["image"] = jsonable(entry.image)
        row["held_keys"] = sorted(list(k) for k in entry.held_keys)
        row["collision_key"] = list(entry.collision_key) if entry.collision_key else None
    return row


async def _quarantine_entries(settings: Settings, reason: str | None, with_images: bool) -> list[QuarantineEntry]:
    from shared.core import aws
    from shared.store.control import ControlStore
    from shared.verify.verifier import preflight

    await asyncio.to_thread(preflight, settings, [settings.control_table])
    async with aws.aio_dynamodb(settings) as client:
        return await ControlStore(client, settings.control_table).quarantine_list(reason, with_images=with_images)


@quarantine.command("list")
@click.option("--reason", metavar="REASON", callback=_reason_choice, help=REASON_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout instead of a table.")
@click.option("--with-images", is_flag=True,
              help="Also show each item's full legacy image and target keys (personal data: emails).")
@pass_ctx
def quarantine_list(ctx: Context, reason: str | None, as_json: bool, with_images: bool) -> None:
    """List quarantined source items with their reasons (no images unless --with-images)."""
    entries = asyncio.run(_quarantine_entries(ctx.settings, reason, with_images))
    if as_json:
        emit_json([quarantine_row(e, with_images=with_images) for e in entries])
        return
    if not entries:
        console.print("quarantine is empty" + (f" for reason {reason}" if reason else ""))
        return
    view = Table(title=f"quarantine ({len(entries)})")
    for column in ("table", "key", "reason", "message", "detected"):
        view.add_column(column)
    if with_images:
        view.add_column("image")
    for entry in entries:
        detected = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry.detected_at))
        row = [Text(entry.ref.table), Text("|".join(entry.ref.key)), Text(entry.reason), Text(entry.message[:120]),
               Text(detected)]
        if with_images:
            from shared.verify.differences import jsonable

            row.append(Text(json.dumps(jsonable(entry.image), sort_keys=True, default=str)))
        view.add_row(*row)
    console.print(view)


@quarantine.command("retry")
@click.option("--reason", metavar="REASON", callback=_reason_choice, help=REASON_HELP)
@pass_ctx
def quarantine_retry(ctx: Context, reason: str | None) -> None:
    """Re-read each quarantined item and apply it again (after a fix, or once a collision cleared)."""
    from shared.cli.status import retry_quarantine

    report = asyncio.run(retry_quarantine(ctx.settings, reason))
    still = ", ".join(f"{r}: {n}" for r, n in sorted(report.still.items()))
    console.print(f"retried {report.retried}: {report.left} left quarantine"
                  + (f", {report.deleted} deleted at the source (the mirror clears them)" if report.deleted else "")
                  + (f"; still quarantined: {still}" if still else ""))
