"""What operators run: `cutover` and `rollback` (`run_switch`), `finalize`, and the by-hand flag.

`run_switch` reads the mode, resumes or aborts a frozen switch, runs the
gate (`shared.cutover.gate`) and then the protocol
(`shared.cutover.protocol.SwitchProtocol`) through the real ports
(`shared.cutover.aws_ports`). `finalize` cleans up after the monitoring
period (the protocol's note says what it does; it never deletes a table).
`force_mode` writes the flag without the protocol, for repairing it by hand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from shared.core.errors import UsageError
from shared.core.settings import Settings
from shared.cutover.aws_ports import AwsPorts
from shared.cutover.gate import default_gate_checks
from shared.cutover.protocol import (
    CUTOVER,
    PERSISTENT_EXTRA,
    ROLLBACK,
    CutoverError,
    GateCheck,
    Ports,
    Progress,
    Switch,
    SwitchAborted,
    SwitchOptions,
    SwitchProtocol,
    SwitchReport,
    storable,
    switch_of,
)
from shared.store.mode import Mode, ModeState, ModeStore


def run_switch(
    settings: Settings,
    switch: Switch,
    *,
    ports: Ports | None = None,
    timeout_s: float | None = None,
    max_lag_s: float | None = None,
    accept_quarantined: bool = False,
    skip_backup_check: bool = False,
    resume: bool = False,
    crash_after: str | None = None,
    progress: Progress | None = None,
    gate_checks: Callable[..., list[GateCheck]] | None = None,
) -> SwitchReport:
    """`dynashift cutover` / `dynashift rollback` (with `--resume`).

    Raises CutoverError when the gate refuses, SwitchAborted when the switch
    went back to its origin; returns the report otherwise.
    """
    options = SwitchOptions(
        timeout_s=timeout_s if timeout_s is not None else settings.cutover_timeout_s,
        cache_age_s=settings.mode_cache_age_s + settings.cutover_inflight_grace_s,
        crash_after=crash_after,
    )
    ports = ports or AwsPorts(settings)
    protocol = SwitchProtocol(ports, options, progress)
    state = ports.read_mode()

    if state.mode == Mode.FREEZE:
        in_progress = switch_of(state)
        if resume or in_progress is switch:
            return _raise_if_aborted(protocol.resume(state))
        # `rollback` while a cutover is frozen: go back, that *is* the rollback.
        return _raise_if_aborted(protocol.abort(state, f"{switch.op} requested during a {in_progress.op}"))
    if resume:
        return protocol.resume(state)
    if state.extra.get("finalized_at"):
        raise CutoverError(f"the migration was finalized; {switch.op} is no longer possible")
    if state.mode != switch.origin:
        raise CutoverError(f"{switch.op} needs mode {switch.origin}, but the mode is {state.mode}")

    checks = (gate_checks or default_gate_checks)(
        settings, switch, state, max_lag_s=max_lag_s if max_lag_s is not None else settings.cutover_max_lag_s,
        accept_quarantined=accept_quarantined, skip_backup_check=skip_backup_check, ports=ports,
    )
    failed = [c for c in checks if not c.ok]
    if failed:
        raise CutoverError(f"{switch.op} refused by the gate: " + "; ".join(f"{c.name}: {c.detail}" for c in failed))
    for check in checks:
        (progress or (lambda _l: None))(f"gate: {check.name}: {check.detail}")
    # The gate took a while: the freeze write is conditional on the version read before it.
    return _raise_if_aborted(protocol.start(switch, state, checks))


def _raise_if_aborted(report: SwitchReport) -> SwitchReport:
    if report.outcome == "aborted":
        raise SwitchAborted(
            f"{report.op} aborted, mode is back to {report.mode} after a freeze of "
            f"{report.freeze_window_s:.2f}s: {report.reason}"
        )
    return report


@dataclass
class FinalizeReport:
    tombstones_swept: int
    already_finalized: bool
    commands: list[str]


def finalize(settings: Settings, *, ports: Ports | None = None) -> FinalizeReport:
    """Clean up after the monitoring period; never deletes a legacy table."""
    from shared.core import aws
    from shared.core.definition import get_definition
    from shared.protocol.apply import sweep_tombstones
    from shared.store.control import StaleWriterRegistry

    ports = ports or AwsPorts(settings)
    state = ports.read_mode()
    if state.mode != Mode.NEW:
        raise CutoverError(f"finalize needs mode new (after a cutover), but the mode is {state.mode}")
    definition = get_definition(settings.migration)

    async def sweep() -> int:
        async with aws.aio_dynamodb(settings) as client:
            if await StaleWriterRegistry(client, settings.control_table).active():
                raise CutoverError("a backfill is still registered as a writer; finish or stop it first")
            return await sweep_tombstones(settings, definition, client, older_than_s=0)

    swept = asyncio.run(sweep())
    already = bool(state.extra.get("finalized_at"))
    if not already:
        ports.write_mode(
            replace(state, extra={**state.extra, "finalized_at": ports.clock(), "reverse_replication": "stopped"}),
            state.version,
        )
    legacy = [settings.physical_name(s.name) for s in definition.sources]
    commands = [
        "# stop reverse replication in AWS (it already stopped applying):",
        ("aws lambda list-event-source-mappings --function-name <ReverseMirrorFunction> "
        "--query 'EventSourceMappings[].UUID' --output text"),
        "aws lambda update-event-source-mapping --uuid <UUID> --no-enabled",
        "# later, once the backups' retention allows it, retire the legacy tables:",
        *(f"aws dynamodb update-table --table-name {t} --no-deletion-protection-enabled" for t in legacy),
        *(f"aws dynamodb delete-table --table-name {t}" for t in legacy),
    ]
    return FinalizeReport(tombstones_swept=swept, already_finalized=already, commands=commands)


def force_mode(settings: Settings, mode: Mode, towards: Mode | None = None) -> ModeState:
    """`dynashift mode set X --force`: write the flag without the protocol.

    Skips the gate, the cache wait and the drains, and any transition rule:
    only for repairing a flag by hand. Still optimistic (a concurrent switch
    wins) and recorded in `extra` (`step = forced`).
    """
    from shared.core import aws
    from shared.core.aws import error_code, translate
    from shared.core.errors import ModeConflict
    from shared.store.mode import item_from_state

    if mode == Mode.FREEZE and towards not in (Mode.OLD, Mode.NEW):
        raise UsageError("mode set freeze: --towards old|new is required")
    if mode != Mode.FREEZE:
        towards = None
    client = aws.dynamodb(settings)
    store = ModeStore(client, settings.control_table)
    current = store.read(consistent=True)
    now = time.time()
    extra = {k: v for k, v in current.extra.items() if k in PERSISTENT_EXTRA}
    extra.update(step="forced", reason=f"set by hand from {current.describe()}", forced_at=now)
    if mode == Mode.FREEZE:
        extra.update(op=(CUTOVER if towards == Mode.NEW else ROLLBACK).op, freeze_started_at=now,
                     deadline=now + settings.cutover_timeout_s, timeout_s=settings.cutover_timeout_s,
                     cache_age_s=settings.mode_cache_age_s + settings.cutover_inflight_grace_s)
    stored = ModeState(mode=mode, towards=towards, version=current.version + 1, since=now, extra=extra)
    condition: dict[str, Any] = (
        {"ConditionExpression": "attribute_not_exists(PK)"} if current.version == 0 else {
            "ConditionExpression": "#v = :v", "ExpressionAttributeNames": {"#v": "version"},
            "ExpressionAttributeValues": {":v": {"N": str(current.version)}}}
    )
    try:
        client.put_item(TableName=settings.control_table, Item=item_from_state(storable(stored)), **condition)
    except Exception as exc:
        if error_code(exc) == "ConditionalCheckFailedException":
            raise ModeConflict("the mode flag changed meanwhile: look again (dynashift mode)") from exc
        raise translate(exc, f"write the mode flag to {settings.control_table}") from exc
    return stored


def read_mode(settings: Settings) -> ModeState:
    """The mode flag, read strongly."""
    from shared.core import aws

    return ModeStore(aws.dynamodb(settings), settings.control_table).read(consistent=True)


__all__ = ["FinalizeReport", "finalize", "force_mode", "read_mode", "run_switch"]
