"""Lambda entry point: legacy tables' streams -> sc-main (the forward mirror).

Thin on purpose: build the engine once per container, hand it the event,
publish what it counted. All logic lives in `shared.mirror` and `shared.apply`.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from shared.mirror import MirrorEngine
from shared.settings import get_settings
from shared.tracing import lambda_tracer

logger = Logger(service="dynashift-mirror")
metrics = Metrics(namespace="dynashift", service="mirror")
traced = lambda_tracer("dynashift-mirror")

_engine: MirrorEngine | None = None


def engine() -> MirrorEngine:
    global _engine
    if _engine is None:
        _engine = MirrorEngine(get_settings())
    return _engine


def use_engine(mirror: MirrorEngine) -> None:
    """Let the local runner hand in an engine built from its own settings."""
    global _engine
    _engine = mirror


@logger.inject_lambda_context(correlation_id_path="Records[0].eventID", clear_state=True)
@metrics.log_metrics
@traced
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    mirror = engine()
    response = mirror.handle(event, context)
    stats = mirror.last_stats
    logger.info(
        "batch applied",
        extra={
            "records": stats.records,
            "chains": stats.chains,
            "written": stats.written,
            "removed": stats.removed,
            "quarantined": stats.quarantine_reasons,
            "failed_records": stats.failed_records,
            "read_units": stats.usage.read_units,
            "write_units": stats.usage.write_units,
        },
    )
    if os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() in ("1", "true"):
        # The local runner turns EMF off; powertools would still flush every
        # 100 values on its own, so don't hand it any.
        return response
    metrics.add_metric(name="RecordsApplied", unit=MetricUnit.Count, value=stats.records - stats.failed_records)
    metrics.add_metric(name="RecordsQuarantined", unit=MetricUnit.Count, value=stats.quarantined)
    metrics.add_metric(name="RecordsRetried", unit=MetricUnit.Count, value=stats.failed_records)
    metrics.add_metric(name="WriteUnits", unit=MetricUnit.Count, value=stats.usage.write_units)
    metrics.add_metric(name="ReadUnits", unit=MetricUnit.Count, value=stats.usage.read_units)
    if stats.lag_ms:
        metrics.add_metric(name="LagMs", unit=MetricUnit.Milliseconds, value=max(stats.lag_ms))
    return response
