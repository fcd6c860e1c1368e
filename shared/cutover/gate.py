"""The cutover's gate: every check a switch needs before any downtime (step 1 of the protocol).

For a cutover: the last `verify` is clean, complete and recent; quarantine
is empty (or accepted); every legacy table has a recent completed backup
(or the check is skipped); and, for both switches, both mirror consumers
catch up with their streams within `--max-lag`. Every failing check is
reported, not just the first. Each check returns a `GateCheck`; nothing
here writes.
"""

from __future__ import annotations

import asyncio

from shared.core.settings import Settings
from shared.cutover.protocol import CUTOVER, GateCheck, Ports, Switch
from shared.store.mode import ModeState


def default_gate_checks(
    settings: Settings,
    switch: Switch,
    state: ModeState,
    *,
    max_lag_s: float,
    accept_quarantined: bool,
    skip_backup_check: bool,
    ports: Ports,
) -> list[GateCheck]:
    checks: list[GateCheck] = []
    if switch is CUTOVER:
        checks.append(check_verify(settings, ports.clock()))
        checks.append(check_quarantine(settings, accept_quarantined))
        checks.append(
            GateCheck("backup", True, "skipped (--skip-backup-check)") if skip_backup_check
            else check_backups(settings, ports.clock())
        )
    # Both consumers must be running: the active one with a bounded lag, the
    # other one because it takes over (reverse replication) or must have
    # skipped everything before the flip.
    for direction in switch.drains:
        checks.append(check_lag(ports, direction, max_lag_s))
    return checks


def check_verify(settings: Settings, now: float) -> GateCheck:
    from shared.verify.report import last_verify

    last = last_verify(settings)
    if not last:
        return GateCheck("verify", False, "no verify result yet (run: dynashift verify)")
    age = now - float(last["finished_at"])
    if not last.get("ok"):
        return GateCheck("verify", False, f"the last verify ({age:.0f}s ago) found differences")
    if age > settings.verify_max_age_s:
        return GateCheck("verify", False,
                         f"the last clean verify is {age:.0f}s old (limit verify_max_age_s={settings.verify_max_age_s:g})")
    from shared.core.definition import get_definition

    every_table = {source.name for source in get_definition(settings.migration).sources}
    covered = set(last.get("tables") or [])
    if not every_table <= covered or float(last.get("sample", 1.0)) < 1.0:
        # A clean partial run proves nothing about the rest: the gate wants all of it.
        return GateCheck("verify", False,
                         f"the last clean verify covered {', '.join(sorted(covered)) or 'no table'}"
                         f" at sample {float(last.get('sample', 1.0)):g}; run a full `dynashift verify`")
    return GateCheck("verify", True, f"clean, {age:.0f}s ago")


def check_quarantine(settings: Settings, accept: bool) -> GateCheck:
    from shared.core import aws
    from shared.store.control import ControlStore

    async def counts() -> dict[str, int]:
        async with aws.aio_dynamodb(settings) as client:
            return await ControlStore(client, settings.control_table).quarantine_counts()

    reasons = asyncio.run(counts())
    total = sum(reasons.values())
    if not total:
        return GateCheck("quarantine", True, "empty")
    listing = ", ".join(f"{n} {r}" for r, n in reasons.items())
    if accept:
        return GateCheck("quarantine", True, f"{total} item(s) accepted ({listing})")
    return GateCheck("quarantine", False,
                     f"{total} item(s) ({listing}); fix them or pass --accept-quarantined")


def check_backups(settings: Settings, now: float) -> GateCheck:
    from shared.ops.backup import backup_gate_problems

    problems = backup_gate_problems(settings, now=now)
    if problems:
        return GateCheck("backup", False, "; ".join(problems))
    return GateCheck("backup", True, "every legacy table has a recent completed backup")


def check_lag(ports: Ports, direction: str, max_lag_s: float) -> GateCheck:
    """The consumer reaches the stream ends as of now within `max_lag_s`: its lag is under the bound."""
    started = ports.clock()
    if ports.wait_caught_up(direction, max_lag_s):
        return GateCheck(f"{direction} mirror lag", True, f"caught up in {ports.clock() - started:.2f}s")
    return GateCheck(f"{direction} mirror lag", False,
                     f"did not acknowledge every record in its streams within {max_lag_s:g}s (is the stack's "
                     f"mapping enabled, or `mirror run --direction {direction}` running?)")
