"""Lambda entry point: sc-main's stream -> legacy tables (reverse replication).

Thin on purpose, like `handlers.mirror`: build the engine once per
container, hand it the event, publish what it counted. All logic lives in
`shared.reverse_mirror`; the mode gate (`shared.mode`) makes it write only
after cutover (mode `new`, or while freezing towards `old`).
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from shared.reverse_mirror import ReverseEngine
from shared.settings import get_settings
from shared.tracing import lambda_tracer

logger = Logger(service="dynashift-reverse-mirror")
metrics = Metrics(namespace="dynashift", service="reverse-mirror")
traced = lambda_tracer("dynashift-reverse-mirror")

_engine: ReverseEngine | None = None


def engine() -> ReverseEngine:
    global _engine
    if _engine is None:
        _engine = ReverseEngine(get_settings())
    return _engine


def use_engine(reverse: ReverseEngine | None) -> None:
    """Let the local runner hand in an engine built from its own settings."""
    global _engine
    _engine = reverse


@logger.inject_lambda_context(correlation_id_path="Records[0].eventID", clear_state=True)
@metrics.log_metrics
@traced
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    reverse = engine()
    response = reverse.handle(event, context)
    stats = reverse.last_stats
    logger.info(
        "batch reversed",
        extra={
            "records": stats.records,
            "owners": stats.owners,
            "written": stats.written,
            "deleted": stats.deleted,
            "mode_skipped": stats.mode_skipped,
            "quarantined": stats.quarantine_reasons,
            "failed_records": stats.failed_records,
            "read_units": stats.usage.read_units,
            "write_units": stats.usage.write_units,
        },
    )
    if os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() in ("1", "true"):
        return response
    metrics.add_metric(name="ReverseRecordsApplied", unit=MetricUnit.Count,
                       value=stats.records - stats.failed_records - stats.mode_skipped)
    metrics.add_metric(name="ReverseRecordsSkippedByMode", unit=MetricUnit.Count, value=stats.mode_skipped)
    metrics.add_metric(name="ReverseQuarantined", unit=MetricUnit.Count, value=stats.quarantined)
    metrics.add_metric(name="ReverseRecordsRetried", unit=MetricUnit.Count, value=stats.failed_records)
    metrics.add_metric(name="ReverseWriteUnits", unit=MetricUnit.Count, value=stats.usage.write_units)
    metrics.add_metric(name="ReverseReadUnits", unit=MetricUnit.Count, value=stats.usage.read_units)
    return response
