"""Lambda entry points of the backfill state machine (`backfill/statemachine.asl.json`).

Thin on purpose: parse the event, call `backfill.lambda_unit`, return JSON.

* `plan_handler`   event `{"request": <execution input>, "execution": <execution name>}`
                   → `{"run": {...}, "units": [{"table", "unit"}, ...]}` (the Map's items)
* `unit_handler`   event `{"run": {...}, "table", "unit", ...}` (a Map item, or the previous
                   invocation's output) → the same plus `done`, `wait_s` and the unit's counts
* `finish_handler` event `{"run": {...}}` → the tombstones swept and the totals per table;
                   event `{"run": {...}, "failure": {"Error", "Cause"}}` (RecordFailure, the
                   Catch of failed units) → the run marked failed with the reason

A `DynashiftError` propagates as the function error, named by its class
(`TransientError`, `StoreError`, ...), which is what the state machine's
Retry and Catch match on.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aws_lambda_powertools import Logger

from backfill.lambda_unit import RunSpec, finish_run, plan_run, record_failure, run_unit
from shared.core.errors import UsageError
from shared.core.settings import get_settings
from shared.core.tracing import lambda_tracer

logger = Logger(service="dynashift-backfill")
traced = lambda_tracer("dynashift-backfill")


@logger.inject_lambda_context(clear_state=True)
@traced
def plan_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    plan = asyncio.run(plan_run(get_settings(), event.get("request", {}), run_id=event.get("execution")))
    logger.info("backfill planned", extra={"run": plan["run"], "units": len(plan["units"])})
    return plan


@logger.inject_lambda_context(clear_state=True)
@traced
def unit_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    spec = RunSpec.from_json(event.get("run"))
    table, number = event.get("table"), event.get("unit")
    if not isinstance(table, str) or not isinstance(number, int):
        raise UsageError(f"backfill unit event needs a table name and a unit number, got {table!r} / {number!r}")
    logger.append_keys(run_id=spec.run_id, table=table, unit=number)
    outcome = asyncio.run(
        run_unit(get_settings(), spec, table, number, lambda: context.get_remaining_time_in_millis() / 1000)
    )
    logger.info("backfill unit invocation", extra=outcome.to_json())
    # The input comes back too: the state machine loops on this output.
    return {"run": spec.to_json(), **outcome.to_json()}


@logger.inject_lambda_context(clear_state=True)
@traced
def finish_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    spec = RunSpec.from_json(event.get("run"))
    if "failure" in event:
        failed = asyncio.run(record_failure(get_settings(), spec, event["failure"]))
        logger.error("backfill failed", extra=failed)
        return failed
    result = asyncio.run(finish_run(get_settings(), spec))
    logger.info("backfill finished", extra=result)
    return result
