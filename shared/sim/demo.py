"""`dynashift demo`: the whole migration, told as a story on the embedded engine.

Every step is real and runs the operator's own code paths; none is faked:

 1. start AWS's DynamoDB Local (and stop it at the end, unless ``--keep``);
 2. create the tables from template.yaml, and the legacy tables with streams;
 3. seed the legacy tables, bad rows included;
 4. start both stream consumers in background threads for the whole story
    (forward: legacy → sc-main from LATEST; reverse: sc-main → legacy; the
    mode flag decides which one applies) and the application: the
    router-honouring `shared.sim.app_sim.AppSimulator`, which writes where the
    cached mode flag says, retries through a freeze and records every
    acknowledged write;
 5. back up (DynamoDB Local has no backups: the one-line reason is printed);
 6. dry-run the transform over every legacy item;
 7. backfill the history while the application writes;
 8. verify (the operator's `dynashift verify`, live);
 9. cutover through the real gate (verify, quarantine accepted, backup check
    skipped because step 5 could not run, both mirrors' lag), then the lost
    writes are counted on sc-main;
10. writes to the new schema flow back: the reverse mirror drained, every
    acknowledged write must be in the legacy tables too;
11. rollback, lost writes counted on the legacy tables;
12. cutover again, lost writes counted on sc-main;
13. the application stops, the reverse mirror drains, final verify,
    reference convergence check, finalize.

**Lost writes** are computed, not assumed: with the application paused, the
last acknowledged version of every source item it wrote is projected through
the transform and compared with what the authoritative side holds (legacy
items through the transform; sc-main items by owner), so a legacy item rebuilt
by reverse replication compares equal to the application's raw write. The
application's ids never meet the seeded ones, so the check covers exactly the
items it wrote. Any lost write, verify difference, failed switch or broken
convergence ends the demo with `DemoFailed` (one line, exit code 1) after the
figures gathered so far are shown.

**Demo settings** (the demo's own values, whatever the environment says): the mode cache
age is 1 s instead of 5 s (the freeze waits exactly that, plus 0.3 s of
in-flight grace) and verify re-checks a difference after 10 s instead of 30 s
(the mirror lag here is a few seconds at most, even with the 2 cores shared;
5 s once confirmed a difference that was only a lagging mirror's while
another test suite ran beside the demo; the first verify starts once the
forward mirror has caught up). Both are printed. The application writes 10
operations/s per unit of ``--scale``, enough to meet every freeze on this
small machine without outrunning the in-process mirrors.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from shared.core import aws
from shared.core.codec import to_native
from shared.core.definition import Item, MigrationDefinition, SourceRef, TargetKey, get_definition
from shared.core.errors import DemoFailed, DynashiftError, NotSupportedHere, QuarantineError, UsageError
from shared.core.settings import Settings, load_settings
from shared.sim import local_engine
from shared.store.mode import Mode

ACCOUNTS_PER_SCALE = 250
REPOS_PER_SCALE = 750
BAD_FRACTION = 0.03
SEED = 7
APP_RATE_PER_S = 10.0  # application operations per second, per unit of --scale
APP_SEED = 21
PHASE_S = 3.0  # the application writes this long between two steps
DRAIN_TIMEOUT_S = 60.0
DEMO_SETTINGS: dict[str, Any] = {
    "mode_cache_age_s": 1.0,
    "cutover_inflight_grace_s": 0.3,
    "verify_settle_s": 10.0,
    "cutover_max_lag_s": 30.0,
    "cutover_timeout_s": 60.0,
}


# ============================================================================ figures
@dataclass
class Figures:
    """The rows of the final table, in story order (shown even when a step fails)."""

    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, value: Any) -> None:
        self.rows.append((name, str(value)))

    def render(self, console: Console, title: str) -> None:
        table = Table(title=title)
        table.add_column("figure")
        table.add_column("value", justify="right")
        for name, value in self.rows:
            table.add_row(name, value)
        console.print(table)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def mirror_lag_text(settings: Settings, lag_ms: list[float], catch_up_s: list[float]) -> str:
    """Per-record lag from the runner where stream timestamps mean something; else the measured catch-up."""
    if not settings.is_local and lag_ms:
        return f"p50 {percentile(lag_ms, 0.5) / 1000:.1f}s, p99 {percentile(lag_ms, 0.99) / 1000:.1f}s"
    if not catch_up_s:
        return "-"
    return f"caught up in ≤ {max(catch_up_s):.1f}s ({len(catch_up_s)} measures)"


# ============================================================================ lost writes
@dataclass
class LandedCheck:
    """The application's acknowledged writes, looked up on one side."""

    side: str
    items_written: int  # source items the application acknowledged a write on
    lost: list[SourceRef]


def _by_key(definition: MigrationDefinition, targets: list[Item]) -> dict[TargetKey, Item]:
    return {definition.target_key(t): t for t in targets}


def _scan(client: Any, table: str) -> Iterator[Item]:
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        for item in page["Items"]:
            yield to_native(item)


def legacy_projection(settings: Settings, definition: MigrationDefinition,
                      refs: set[SourceRef]) -> dict[SourceRef, dict[TargetKey, Item]]:
    """The transform of each legacy item in `refs` (an untransformable one gets a marker)."""
    client = aws.dynamodb(settings)
    projection: dict[SourceRef, dict[TargetKey, Item]] = {}
    for source in definition.sources:
        for item in _scan(client, settings.physical_name(source.name)):
            ref = source.ref(item)
            if ref not in refs:
                continue
            try:
                projection[ref] = _by_key(definition, definition.transform(source.name, item))
            except QuarantineError as exc:
                projection[ref] = {("<untransformable>",): {"reason": exc.reason}}
    return projection


def target_projection(settings: Settings, definition: MigrationDefinition,
                      refs: set[SourceRef]) -> dict[SourceRef, dict[TargetKey, Item]]:
    """The sc-main items each source item in `refs` owns (tombstones aside)."""
    from shared.protocol.apply import is_tombstone

    projection: dict[SourceRef, dict[TargetKey, Item]] = defaultdict(dict)
    for item in _scan(aws.dynamodb(settings), settings.target_table):
        if is_tombstone(item):
            continue
        owner = definition.owner(item)
        if owner in refs:
            projection[owner][definition.target_key(item)] = item
    return projection


def check_landed(settings: Settings, acked: dict[SourceRef, Item | None], side: Mode) -> LandedCheck:
    """Compare the last acknowledged write of each source item with `side` (old: legacy, new: sc-main).

    Call it with the application paused and the side's writers settled.
    """
    definition = get_definition(settings.migration)
    expected = {ref: _by_key(definition, definition.transform(ref.table, item)) if item is not None else {}
                for ref, item in acked.items()}
    refs = set(expected)
    if side == Mode.OLD:
        actual, name = legacy_projection(settings, definition, refs), "legacy tables"
    else:
        actual, name = target_projection(settings, definition, refs), settings.target_table
    lost = sorted(ref for ref in refs if actual.get(ref, {}) != expected[ref])
    return LandedCheck(name, len(refs), lost)


# ============================================================================ the story
class Story:
    """Numbered steps, each with a one-line explanation; a failed check ends the demo."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.number = 0
        self.figures = Figures()

    def step(self, text: str) -> None:
        self.number += 1
        self.console.print(f"[bold cyan]{self.number}.[/] {text}")

    def say(self, text: str) -> None:
        self.console.print(f"   {text}", highlight=False)

    def require(self, ok: bool, failure: str) -> None:
        if not ok:
            raise DemoFailed(f"demo step {self.number} failed: {failure}")


@dataclass
class Background:
    """The threads that run for the whole story: both consumers and the application."""

    consumers: dict[str, Any] = field(default_factory=dict)
    app: Any = None
    reports: dict[str, Any] = field(default_factory=dict)
    catch_up_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def check_alive(self, story: Story) -> None:
        for direction, consumer in self.consumers.items():
            story.require(consumer.error is None, f"the {direction} mirror stopped: {consumer.error}")

    def stop_app(self) -> None:
        if self.app is not None:
            self.app.stop()

    def stop(self) -> None:
        """Stop everything; a consumer's failure is raised after all are stopped."""
        self.stop_app()
        errors = []
        for direction, consumer in self.consumers.items():
            try:
                self.reports[direction] = consumer.stop()
            except BaseException as exc:  # noqa: BLE001  (reported once everything is stopped)
                errors.append(f"the {direction} mirror failed: {exc}")
        self.consumers = {}
        if errors:
            raise DemoFailed("; ".join(errors))


def run_demo(overrides: dict[str, Any], *, port: int | None, scale: int, keep: bool, console: Console) -> None:
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    base = load_settings(**overrides)
    port = port or local_engine.free_port()
    if local_engine.status(base.cache_dir, port):
        raise UsageError(f"a local engine of ours already runs on port {port} (left by --keep?): stop it with "
                         f"`dynashift local stop --port {port}`, or choose another --port")
    started = time.monotonic()
    story = Story(console)
    console.rule("[bold]dynashift demo")
    story.step(f"Start DynamoDB Local (AWS's own engine) on port {port}.")
    with console.status("starting the engine"):
        info = local_engine.start(base.cache_dir, port)
    story.say(f"{info.kind} answers on {info.endpoint}")
    background = Background()
    failed = True
    try:
        demo_overrides = {**DEMO_SETTINGS, **{k: v for k, v in overrides.items() if v is not None}}
        settings = load_settings(**{**demo_overrides, "endpoint_url": info.endpoint})
        tell_the_story(story, settings, scale, background)
        failed = False
    except DynashiftError:
        story.figures.render(console, "figures so far (the demo failed)")
        raise
    finally:
        try:
            background.stop()
        except DemoFailed:
            if not failed:
                raise
        finally:
            if keep:
                explore(console, info.endpoint, port)
            else:
                local_engine.stop(base.cache_dir, port)
                console.print(f"local engine on port {port} stopped")
    console.print(f"demo finished in {time.monotonic() - started:.0f}s")


def tell_the_story(story: Story, settings: Settings, scale: int, background: Background) -> None:
    from shared.sim.app_sim import AppSimulator, ConsumerThread

    console, figures = story.console, story.figures
    story.say(f"demo settings: mode cache age {settings.mode_cache_age_s:g}s (+{settings.cutover_inflight_grace_s:g}s "
              f"grace), verify settle {settings.verify_settle_s:g}s")

    story.step("Create sc-main and the control table, and the legacy tables.")
    from shared.ops.tables import create_tables
    from shared.sc.seed import run_seed

    for name, outcome, _ in create_tables(settings, with_sources=True):
        story.say(f"{name}: {outcome}")

    accounts, repos = ACCOUNTS_PER_SCALE * scale, REPOS_PER_SCALE * scale
    story.step(f"Seed {accounts} accounts and {repos} repositories; about {BAD_FRACTION:.0%} are bad rows.")
    seeded = asyncio.run(run_seed(settings, accounts, repos, BAD_FRACTION, SEED, console))
    bad = sum(seeded.bad.values())
    figures.add("seeded (bad rows, collision pairs)",
                f"{sum(seeded.written.values()):,} ({bad}, {seeded.collisions})")

    story.step("Start both mirrors and a live application, in the background.")
    background.consumers["forward"] = ConsumerThread(settings, "forward", start_from="latest").start()
    background.consumers["reverse"] = ConsumerThread(settings, "reverse").start()
    app = AppSimulator(settings, rate_per_s=APP_RATE_PER_S * scale, seed=APP_SEED, workers=4)
    background.app = app.start()
    story.say(f"the application writes about {APP_RATE_PER_S * scale:g} operations/s wherever the mode flag says")
    application_phase(story, app, PHASE_S)

    story.step("Back up the legacy tables before touching anything.")
    backup_step(story, settings)

    story.step("Dry run: transform every legacy item, write nothing.")
    dry_run_step(story, settings)

    story.step("Backfill the history while the application keeps writing.")
    backfill_step(story, settings)
    background.check_alive(story)

    story.step("Verify sc-main against the legacy tables, both ways, live.")
    catch_up(story, settings, background, "forward")
    verify_step(story, settings, "verify")

    story.step("Cutover: gate, freeze, cache wait, per-shard drain, flip to new.")
    switch_step(story, settings, background, "cutover 1", Mode.NEW)
    application_phase(story, app, PHASE_S)

    story.step("Writes to the new schema flow back to the legacy tables.")
    reverse_flow_step(story, settings, background)

    story.step("Rollback: freeze, drain the reverse mirror, flip back to old.")
    switch_step(story, settings, background, "rollback", Mode.OLD)
    application_phase(story, app, PHASE_S)

    story.step("Cutover again, with the application still writing.")
    switch_step(story, settings, background, "cutover 2", Mode.NEW)
    application_phase(story, app, PHASE_S)

    story.step("Stop the application; final verify; finalize.")
    final_step(story, settings, background)


# ============================================================================ the steps
def application_phase(story: Story, app: Any, seconds: float) -> None:
    """Let the application write for a while, with a live count."""
    before = app.stats.acknowledged
    deadline = time.monotonic() + seconds
    with story.console.status("the application is writing") as status:
        while time.monotonic() < deadline:
            status.update(f"the application is writing: {app.stats.acknowledged - before} acknowledged")
            time.sleep(0.25)
    story.say(f"the application acknowledged {app.stats.acknowledged - before} writes meanwhile "
              f"({app.stats.acknowledged} in all)")


def backup_step(story: Story, settings: Settings) -> None:
    from shared.ops.backup import ON_DEMAND, BackupManager

    try:
        records = BackupManager(settings).start([ON_DEMAND])
    except NotSupportedHere as exc:
        story.say(f"no backup: {exc}")
        story.figures.add("backup", "none on DynamoDB Local")
        return
    story.say(f"{len(records)} on-demand backup(s) started")
    story.figures.add("backup", f"{len(records)} on-demand backup(s)")


def dry_run_step(story: Story, settings: Settings) -> None:
    from shared.ops.dryrun import DryRun

    definition = get_definition(settings.migration)
    dry = DryRun(definition)
    client = aws.dynamodb(settings)
    with story.console.status("transforming"):
        for source in definition.sources:
            dry.add_all(source.name, (to_native(i) for p in client.get_paginator("scan").paginate(
                TableName=settings.physical_name(source.name)) for i in p["Items"]))
    report = dry.report
    sources, targets = sum(report.source_items.values()), sum(report.target_items.values())
    story.say(f"{sources:,} legacy items would become {targets:,} sc-main items; "
              f"{report.total_quarantined} would be quarantined")
    story.say("by reason: " + ", ".join(f"{r} {n}" for r, n in sorted(report.quarantined.items())))
    story.figures.add("dry run: items in → out, quarantined",
                      f"{sources:,} → {targets:,}, {report.total_quarantined}")


def backfill_step(story: Story, settings: Settings) -> None:
    from backfill.run import BackfillRequest, run_backfill, status

    started = time.monotonic()
    code = run_backfill(settings, {}, BackfillRequest(table="all", segments=4), story.console)
    elapsed = time.monotonic() - started
    story.require(code == 0, f"the backfill did not finish (exit code {code})")
    rows = status(settings)
    read = sum(r["read"] for r in rows)
    written = sum(r["written"] for r in rows)
    story.say(f"read {read:,} legacy items, wrote {written:,} in {elapsed:.1f}s ({read / elapsed:,.0f} items/s "
              "including the final tombstone sweep)")
    story.figures.add("backfill: items read / written, rate", f"{read:,} / {written:,}, {read / elapsed:,.0f} items/s")


def run_verify(settings: Settings, console: Console) -> dict[str, Any]:
    """The operator's verify, with its progress display (one place, should its API move)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from shared.verify import verifier
    from shared.verify.progress import RichObserver

    request = verifier.make_request(settings, segments=4)
    progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"),
                        TextColumn("{task.completed:,.0f} items"), TimeElapsedColumn(), console=console,
                        transient=True)
    with progress:
        return verifier.run(settings, request, RichObserver(progress))


def timed_ports(settings: Settings, background: Background) -> Any:
    """The cutover's AWS ports, recording how long each consumer took to catch up (its lag, measured).

    DynamoDB Local rounds a stream record's ApproximateCreationDateTime down to
    the whole minute, so the runner's per-record lag says nothing here; the
    time a consumer needs to reach its streams' ends as of a moment is an
    honest upper bound of its lag (it includes the polling intervals).
    """
    from shared.cutover.aws_ports import AwsPorts

    class TimedPorts(AwsPorts):
        def wait_caught_up(self, direction: str, timeout_s: float) -> bool:
            started = time.monotonic()
            caught_up = super().wait_caught_up(direction, timeout_s)
            if caught_up:
                background.catch_up_s[direction].append(time.monotonic() - started)
            return caught_up

    return TimedPorts(settings)


def catch_up(story: Story, settings: Settings, background: Background, direction: str) -> None:
    """Wait until the consumer reached its streams' ends as of now (the cutover gate's lag measure)."""
    caught_up = timed_ports(settings, background).wait_caught_up(direction, DRAIN_TIMEOUT_S)
    story.require(caught_up, f"the {direction} mirror did not catch up with its streams in {DRAIN_TIMEOUT_S:g}s")
    story.say(f"the {direction} mirror caught up with its streams in {background.catch_up_s[direction][-1]:.1f}s")


def verify_step(story: Story, settings: Settings, label: str) -> dict[str, Any]:
    from shared.verify.differences import KINDS

    report = run_verify(settings, story.console)
    differences = {kind: report[kind] for kind in KINDS if report[kind]}
    story.say(f"{report['source_items']:,} legacy and {report['target_items']:,} sc-main items in "
              f"{report['elapsed_s']:.1f}s ({report['items_per_s']:,.0f} items/s): "
              + ("no difference" if report["ok"] else f"differences {differences}"))
    story.figures.add(f"{label}: items/s, differences",
                      f"{report['items_per_s']:,.0f}, {sum(report[k] for k in KINDS)}")
    story.require(report["ok"], f"{label} found differences: {differences}")
    return report


def switch_step(story: Story, settings: Settings, background: Background, label: str, target: Mode) -> None:
    from shared.cutover.operations import run_switch
    from shared.cutover.protocol import CUTOVER, ROLLBACK

    app = background.app
    delayed_before, delays_before = app.stats.delayed, len(app.stats.delays_s)
    report = run_switch(settings, CUTOVER if target == Mode.NEW else ROLLBACK, skip_backup_check=True,
                        accept_quarantined=True, progress=story.say, ports=timed_ports(settings, background))
    story.require(report.outcome == "switched" and report.mode == target,
                  f"{label} ended {report.outcome} in mode {report.mode}: {report.reason}")
    # Writes held by the freeze go through once each application instance's cache shows the new mode.
    time.sleep(settings.mode_cache_age_s + 0.2)
    delayed = app.stats.delayed - delayed_before
    delays = app.stats.delays_s[delays_before:]
    held = f", longest wait {max(delays):.2f}s" if delays else ""
    story.say(f"freeze window {report.freeze_window_s:.2f}s; {delayed} writes were held and retried{held}")
    story.figures.add(f"{label}: freeze, writes delayed",
                      f"{report.freeze_window_s:.2f}s, {delayed}" + (f" (median wait {statistics.median(delays):.2f}s)"
                                                                    if delays else ""))
    side = settings.target_table if target == Mode.NEW else "legacy"
    landed = paused_check(story, background, target)
    story.say(f"every acknowledged write looked up on {landed.side}: {len(landed.lost)} lost "
              f"({landed.items_written} items written by the application)")
    story.figures.add(f"{label}: lost writes ({side})", len(landed.lost))
    story.require(not landed.lost, f"{len(landed.lost)} acknowledged writes are not on {landed.side} after {label}, "
                                   f"e.g. {[r.as_text() for r in landed.lost[:3]]}")


def paused_check(story: Story, background: Background, side: Mode,
                 before_check: Callable[[], None] | None = None) -> LandedCheck:
    """Pause the application, (optionally settle something), check the side, resume."""
    app = background.app
    app.pause()
    try:
        if before_check:
            before_check()
        return check_landed(app.settings, dict(app.acked), side)
    finally:
        app.resume()


def reverse_flow_step(story: Story, settings: Settings, background: Background) -> None:
    from shared.streams import drain

    app = background.app
    on_new = app.stats.acknowledged_by_mode.get("new", 0)
    story.say(f"{on_new} application writes went to {settings.target_table} in the new schema")
    background.check_alive(story)

    def drain_reverse() -> None:
        drain.wait_drained(settings, "reverse", DRAIN_TIMEOUT_S)

    landed = paused_check(story, background, Mode.OLD, drain_reverse)
    story.say(f"reverse mirror drained; the legacy tables hold every acknowledged write: {len(landed.lost)} missing")
    story.figures.add("reverse flow: missing on legacy", len(landed.lost))
    story.require(not landed.lost, f"{len(landed.lost)} writes made in the new schema did not reach the legacy "
                                   f"tables, e.g. {[r.as_text() for r in landed.lost[:3]]}")


def final_step(story: Story, settings: Settings, background: Background) -> None:
    from shared.cutover.operations import finalize
    from shared.streams import drain
    from shared.verify.convergence import check_tables

    app = background.app
    stats = background.app.stop()
    background.app = None
    background.check_alive(story)
    drain.wait_drained(settings, "reverse", DRAIN_TIMEOUT_S)
    story.say(f"application stopped: {stats.acknowledged} writes acknowledged "
              f"({dict(stats.acknowledged_by_mode)}), {stats.errors} given up, {stats.rejected} rejected")
    authoritative = check_landed(settings, dict(app.acked), Mode.NEW)
    legacy = check_landed(settings, dict(app.acked), Mode.OLD)
    story.say(f"lost writes on {authoritative.side}: {len(authoritative.lost)}; "
              f"missing on the legacy tables: {len(legacy.lost)}")
    story.require(not authoritative.lost and not legacy.lost,
                  f"{len(authoritative.lost)} lost on sc-main, {len(legacy.lost)} missing on the legacy tables")
    report = verify_step(story, settings, "final verify")
    reference = check_tables(settings)
    story.say(f"reference convergence check: {'converged' if reference.ok else reference.summary()}")
    story.require(reference.ok, f"convergence broken: {reference.summary()}")
    done = finalize(settings)
    story.say(f"finalized: {done.tombstones_swept} tombstones swept; reverse replication recorded as stopped; "
              "in AWS: " + done.commands[2])
    background.stop()
    forward, reverse = background.reports.get("forward"), background.reports.get("reverse")

    figures = story.figures
    figures.add("app writes acked (old / new)",
                f"{stats.acknowledged:,} ({stats.acknowledged_by_mode.get('old', 0):,} / "
                f"{stats.acknowledged_by_mode.get('new', 0):,})")
    figures.add("app writes given up / rejected", stats.errors + stats.rejected)
    figures.add("app writes delayed by freezes", stats.delayed)
    for direction, report_of in (("forward", forward), ("reverse", reverse)):
        if report_of is not None:
            figures.add(f"{direction} mirror: stream records, lag", f"{report_of.records:,}, "
                        + mirror_lag_text(settings, report_of.lag_ms, background.catch_up_s[direction]))
    figures.add("LOST WRITES", len(authoritative.lost))
    for reason, count in sorted(report["quarantined"].items()):
        figures.add(f"quarantined: {reason}", count)
    figures.add("converged (verify + reference check)", "yes")
    figures.render(story.console, "the migration in figures")


def explore(console: Console, endpoint: str, port: int) -> None:
    console.print(f"the engine keeps running on {endpoint}; explore it with:")
    for command in ("status", "mode", "quarantine list", "verify"):
        console.print(f"   dynashift --endpoint-url {endpoint} {command}", highlight=False)
    console.print(f"   aws dynamodb scan --table-name sc-main --max-items 5 --endpoint-url {endpoint}", highlight=False)
    console.print(f"and stop it with: dynashift local stop --port {port}", highlight=False)


__all__ = ["DEMO_SETTINGS", "Figures", "LandedCheck", "check_landed", "run_demo"]
