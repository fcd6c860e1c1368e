"""Since when the forward mirror covers a legacy table: the backfill's precondition.

A backfill (scan or export) is safe only if every write made after its read
reaches the target through the mirror. So before it starts, the backfill
asks for a fact that is true wherever the mirror runs:

* **A consumer's own record** ``MIRROR`` / ``<logical table>``
  (``started_at``). The local runner writes it once every shard has an
  iterator (`shared.streams.runner`); the handler writes it on its first batch
  (with the creation time of that batch's oldest record).
* **The event source mapping** (AWS). A quiet legacy table gives the handler
  no batch, so its record may never come. The mapping itself is the fact:
  ListEventSourceMappings on the table's stream for the mirror function
  (setting ``mirror_function``). A mapping in state ``Enabled`` with
  StartingPosition ``TRIM_HORIZON`` will deliver every record of the stream
  from its oldest one on, however late it starts polling (AWS: "creating or
  enabling a mapping takes effect minutes later", which matters only for
  ``LATEST``). So the table is covered since the later of the stream's
  creation (its label is that timestamp) and the mapping's ``LastModified``
  (conservative: earlier records may be covered too). A mapping at
  ``LATEST``, or ``Creating``/``Enabling``/``Updating``, does not count yet.

`wait_for_coverage` waits for either, bounded, saying what it waits for; a
backfill started a second after `mirror run --follow` therefore waits for
the runner instead of failing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.core import aws
from shared.core.errors import UsageError
from shared.core.settings import Settings
from shared.store import keys

POLL_S = 2.0


@dataclass(frozen=True)
class Coverage:
    since: float | None  # None: not covered (yet)
    detail: str  # how it is known, or why not


def lambda_client(settings: Settings) -> Any:
    """Lambda's control plane. Its endpoint is boto3's own (AWS_ENDPOINT_URL_LAMBDA / AWS_ENDPOINT_URL)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "lambda", region_name=settings.effective_region,
        config=Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=10),
    )


def stream_created_at(label: str | None) -> float | None:
    """A stream label is the ISO 8601 time the stream was created (e.g. 2026-12-03T21:00:00.000)."""
    if not label:
        return None
    try:
        return datetime.fromisoformat(label).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def from_mappings(mappings: list[dict[str, Any]], stream_label: str | None) -> Coverage:
    """The coverage a list of event source mappings (of the mirror function, on one stream) gives."""
    if not mappings:
        return Coverage(None, "no event source mapping of the mirror function on this stream")
    notes = []
    for mapping in mappings:
        state, start = mapping.get("State"), mapping.get("StartingPosition")
        if state == "Enabled" and start == "TRIM_HORIZON":
            modified = mapping.get("LastModified")
            modified_at = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or 0)
            since = max(stream_created_at(stream_label) or 0.0, modified_at)
            return Coverage(since, f"event source mapping {mapping.get('UUID', '?')} is Enabled from TRIM_HORIZON")
        if state == "Enabled":
            notes.append(f"mapping {mapping.get('UUID', '?')} starts at {start}, which can miss records "
                         "(redeploy it with TRIM_HORIZON)")
        else:
            notes.append(f"mapping {mapping.get('UUID', '?')} is {state}")
    return Coverage(None, "; ".join(notes))


def _recorded(dynamodb: Any, settings: Settings, table: str) -> float | None:
    try:
        response = dynamodb.get_item(TableName=settings.control_table,
                                     Key=keys.mirror_start(table), ConsistentRead=True)
    except Exception as exc:
        raise aws.translate(exc, f"read the mirror's start from {settings.control_table}") from exc
    item = response.get("Item")
    return float(item["started_at"]["N"]) if item else None


def mirror_coverage(settings: Settings, table: str, *, dynamodb: Any = None, lambdas: Any = None) -> Coverage:
    """Since when the forward mirror covers `table` (logical name), and how that is known."""
    dynamodb = dynamodb or aws.dynamodb(settings)
    recorded = _recorded(dynamodb, settings, table)
    if recorded is not None:
        return Coverage(recorded, "recorded by the mirror")
    if not settings.mirror_function:
        return Coverage(None, "no mirror has recorded a start, and setting mirror_function (DYNASHIFT_MIRROR_FUNCTION, "
                              "stack-output/MirrorFunctionName) is not set to look at the event source mapping")
    physical = settings.physical_name(table)
    try:
        description = dynamodb.describe_table(TableName=physical)["Table"]
    except Exception as exc:
        raise aws.translate(exc, f"describe {physical}") from exc
    arn = description.get("LatestStreamArn")
    if not arn:
        return Coverage(None, f"{physical} has no stream (dynashift enable-streams)")
    try:
        mappings = event_source_mappings(lambdas or lambda_client(settings), arn, settings.mirror_function)
    except Exception as exc:
        translated = aws.translate(exc, "list the mirror's event source mappings")
        return Coverage(None, str(translated))
    return from_mappings(mappings, description.get("LatestStreamLabel"))


def event_source_mappings(lambdas: Any, stream_arn: str, function: str) -> list[dict[str, Any]]:
    """Every event source mapping of `function` on `stream_arn` (ListEventSourceMappings, all pages)."""
    mappings: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"EventSourceArn": stream_arn, "FunctionName": function}
    while True:
        page = lambdas.list_event_source_mappings(**kwargs)
        mappings.extend(page.get("EventSourceMappings", []))
        if not page.get("NextMarker"):
            return mappings
        kwargs["Marker"] = page["NextMarker"]


async def wait_for_coverage(
    settings: Settings,
    table: str,
    timeout_s: float,
    *,
    progress: Callable[[str], None] | None = None,
    check: Callable[[], Coverage] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> float:
    """The mirror's start for `table`, waiting up to `timeout_s` for it; UsageError after that."""
    check = check or (lambda: mirror_coverage(settings, table))
    started = clock()
    last_note = ""
    while True:
        coverage = await asyncio.to_thread(check)
        if coverage.since is not None:
            return coverage.since
        waited = clock() - started
        if waited >= timeout_s:
            raise UsageError(
                f"the mirror does not cover {table} ({coverage.detail}) after waiting {timeout_s:g}s: start "
                "replication first (sam deploy, or dynashift mirror run --follow), or the writes made during the "
                "backfill are lost"
            )
        if progress is not None and coverage.detail != last_note:
            progress(f"waiting for the mirror to cover {table} ({coverage.detail}); up to {timeout_s - waited:.0f}s more")
            last_note = coverage.detail
        await sleep(min(POLL_S, max(0.05, timeout_s - waited)))


__all__ = ["Coverage", "event_source_mappings", "from_mappings", "mirror_coverage", "stream_created_at", "wait_for_coverage"]
