"""Lambda entry point: sc-main's stream -> legacy tables (reverse replication).

Thin on purpose, like `handlers.mirror`: one engine per container, hand it
the event, publish what it counted. All logic lives in
`shared.streams.reverse_mirror`; the mode gate (`shared.store.mode`) makes
it write only after cutover (mode `new`, or while freezing towards `old`).
"""

from __future__ import annotations

from typing import Any

# Before pydantic (shared.core.settings): powertools' batch types import its pydantic
# parser models, about 20 ms of a cold start, only if pydantic is imported already.
import aws_lambda_powertools.utilities.batch  # noqa: F401
from aws_lambda_powertools import Logger, Metrics

from shared.core.settings import get_settings
from shared.core.tracing import lambda_tracer
from shared.streams.engine import EngineSlot
from shared.streams.reverse_mirror import ReverseEngine

logger = Logger(service="dynashift-reverse-mirror")
metrics = Metrics(namespace="dynashift", service="reverse-mirror")
traced = lambda_tracer("dynashift-reverse-mirror")
slot = EngineSlot(lambda: ReverseEngine(get_settings()))
use_engine = slot.use  # the local runner hands in its own engine


@logger.inject_lambda_context(correlation_id_path="Records[0].eventID", clear_state=True)
@metrics.log_metrics
@traced
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return slot.handle(event, context, logger=logger, metrics=metrics, message="batch reversed")
