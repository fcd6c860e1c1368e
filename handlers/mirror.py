"""Lambda entry point: legacy tables' streams -> sc-main (the forward mirror).

Thin on purpose: one engine per container, hand it the event, publish what
it counted (`shared.streams.engine.EngineSlot`). All logic lives in
`shared.streams.mirror` and `shared.protocol.apply`.
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
from shared.streams.mirror import MirrorEngine

logger = Logger(service="dynashift-mirror")
metrics = Metrics(namespace="dynashift", service="mirror")
traced = lambda_tracer("dynashift-mirror")
slot = EngineSlot(lambda: MirrorEngine(get_settings()))
use_engine = slot.use  # the local runner hands in its own engine


@logger.inject_lambda_context(correlation_id_path="Records[0].eventID", clear_state=True)
@metrics.log_metrics
@traced
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return slot.handle(event, context, logger=logger, metrics=metrics, message="batch applied")
