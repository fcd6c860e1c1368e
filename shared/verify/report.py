"""The report (the table in `shared.verify.verifier`'s note) and the stored result.

`build_report` turns a finished run's spill store into the JSON report,
with the capacity the run consumed, priced on demand. Each run is stored in
the control table, ``VERIFY`` / ``LAST`` plus a history item
``VERIFY`` / ``HIST#<finished ISO>`` that expires after 90 days;
`last_verify` reads it back for ``status`` and the cutover gate.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.core import aws, capacity
from shared.core.aws import translate
from shared.core.codec import to_native
from shared.core.errors import UsageError
from shared.core.settings import Settings
from shared.store import keys
from shared.verify.differences import KINDS
from shared.verify.spill import SpillStore

SAMPLES_PER_KIND = 20
HISTORY_TTL_S = 90 * 24 * 3600
COUNT_FIELDS = ("source_items", "target_items", *KINDS, "unconfirmed")


def build_report(store: SpillStore, *, started: float, finished: float, tables: tuple[str, ...], sample: float,
                 settle_s: float, rounds: int, rechecked: int, repair: dict[str, Any] | None,
                 usage: capacity.Usage, repair_usage: capacity.Usage | None, region: str) -> dict[str, Any]:
    """The report of a finished run; `repair_usage` is None when the run did not repair."""
    counts, unconfirmed = store.found_counts()
    source_items, target_items = store.counts("src"), store.counts("act")
    elapsed = max(finished - started, 1e-9)
    differences = sum(counts.values())
    ok = differences == 0 or (repair is not None and repair["remaining"] == 0)
    return {
        "ok": ok,
        "source_items": source_items,
        "target_items": target_items,
        **counts,
        "unconfirmed": unconfirmed,
        "quarantined": store.quarantined_by_reason(),
        "samples": {k: [d.as_dict() for d in store.found(k, SAMPLES_PER_KIND)] for k in KINDS if counts[k]},
        "elapsed_s": round(elapsed, 3),
        "items_per_s": round((source_items + target_items) / elapsed, 1),
        "started_at": started,
        "finished_at": finished,
        "tables": list(tables),
        "sample": sample,
        "settle_s": settle_s,
        "rounds": rounds,
        "rechecked": rechecked,
        "repair": repair,
        "capacity": capacity_report(source_items + target_items, usage, repair_usage, region),
    }


def capacity_report(items: int, usage: capacity.Usage, repair_usage: capacity.Usage | None,
                    region: str) -> dict[str, Any]:
    """Units the run consumed (its control-table reads and result write excepted), priced.

    `usage` is the whole run's, repair's included; `repair_usage` is repair's alone.
    """
    verify_only = usage.minus(repair_usage) if repair_usage is not None else usage
    out: dict[str, Any] = {
        "region": region,
        "verify": {**verify_only.as_dict(), "usd": capacity.price(verify_only, region),
                   "read_units_per_item": round(verify_only.read_units / items, 4) if items else None},
    }
    if repair_usage is not None:
        out["repair"] = {**repair_usage.as_dict(), "usd": capacity.price(repair_usage, region)}
    return out


def write_report(report: dict[str, Any], path: Path) -> None:
    try:
        path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    except OSError as exc:
        raise UsageError(f"--json-file: cannot write {path}: {exc.strerror or exc}") from None




def _result_item(report: dict[str, Any], sk: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        **keys.verify_result(sk),
        "ok": {"BOOL": bool(report["ok"])},
        "started_at": {"N": repr(round(report["started_at"], 3))},
        "finished_at": {"N": repr(round(report["finished_at"], 3))},
        "elapsed_s": {"N": repr(report["elapsed_s"])},
        "tables": {"L": [{"S": t} for t in report["tables"]]},
        "sample": {"N": repr(report["sample"])},
        "quarantined": {"M": {k: {"N": str(v)} for k, v in report["quarantined"].items()}},
    }
    for name in COUNT_FIELDS:
        item[name] = {"N": str(int(report[name]))}
    if report.get("repair"):
        item["repaired"] = {"N": str(report["repair"]["fixed"])}
    return item


async def store_result(client: Any, settings: Settings, report: dict[str, Any]) -> None:
    finished_iso = datetime.fromtimestamp(report["finished_at"], UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    history = _result_item(report, f"HIST#{finished_iso}")
    history["expires_at"] = {"N": str(int(report["finished_at"]) + HISTORY_TTL_S)}
    for item in (_result_item(report, "LAST"), history):
        try:
            await client.put_item(TableName=settings.control_table, Item=item)
        except Exception as exc:
            raise translate(exc, "store the verify result") from exc


def last_verify(settings: Settings) -> dict[str, Any] | None:
    """The last verify result (control item VERIFY/LAST), or None if none ran yet.

    Shape: ``{"ok": bool, "finished_at": float, "started_at": float, "elapsed_s": float,
    "tables": [str], "sample": float, "source_items": int, "target_items": int, "missing": int,
    "extra": int, "mismatched": int, "leftover": int, "quarantine_missing": int,
    "quarantine_stale": int, "unconfirmed": int, "quarantined": {reason: int}}``.
    """
    client = aws.dynamodb(settings)
    try:
        response = client.get_item(TableName=settings.control_table,
                                   Key=keys.verify_result(), ConsistentRead=True)
    except Exception as exc:
        raise translate(exc, f"read the last verify result from {settings.control_table}") from exc
    raw = response.get("Item")
    if not raw:
        return None
    item = to_native(raw)
    result: dict[str, Any] = {"ok": bool(item["ok"]), "tables": list(item.get("tables", []))}
    for name in ("finished_at", "started_at", "elapsed_s", "sample"):
        result[name] = float(item.get(name, 0))
    for name in (*COUNT_FIELDS, "repaired"):
        if name in item:
            result[name] = int(item[name])
    result["quarantined"] = {k: int(v) for k, v in item.get("quarantined", {}).items()}
    return result

