"""X-Ray tracing of the Lambda handlers, built only when it is switched on.

Importing `aws_xray_sdk` (which powertools' `Tracer` does) creates a botocore
X-Ray client for its sampling rules: about 120 ms of every cold start
(bench/artifact_bench.py). Tracing is therefore opt-in: the template's
`EnableXRayTracing` parameter sets the functions' `Tracing` mode and
`POWERTOOLS_TRACE_DISABLED`, and `lambda_tracer` returns powertools'
`capture_lambda_handler` only when that variable does not say it is off.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

Handler = TypeVar("Handler", bound=Callable[..., Any])


def tracing_enabled() -> bool:
    return os.environ.get("POWERTOOLS_TRACE_DISABLED", "").strip().lower() not in ("1", "true")


def lambda_tracer(service: str) -> Callable[[Handler], Handler]:
    """A decorator: powertools' X-Ray capture of a handler when tracing is on, else the handler itself."""
    if not tracing_enabled():
        return lambda handler: handler
    from aws_lambda_powertools import Tracer

    return Tracer(service=service).capture_lambda_handler  # type: ignore[return-value]
