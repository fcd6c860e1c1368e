"""Lambda's shapes, for running the handlers on one machine: a stream record as Lambda delivers it, and a context.

`lambda_record` turns a GetRecords record into exactly what Lambda's event
source mapping hands a handler (epoch seconds for the creation time, binary
attributes as base64 text); `LocalContext` holds the parts of Lambda's
context object that powertools reads. The local runner, the benchmarks and
the tests build their events here, so the handlers see one shape.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from shared.core.codec import b64_attribute


@dataclass
class LocalContext:
    """The parts of Lambda's context object that powertools reads."""

    function_name: str = "dynashift-mirror-local"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:local:000000000000:function:dynashift-mirror-local"
    aws_request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    log_group_name: str = "local"
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def lambda_record(raw: dict[str, Any], stream_arn: str, region: str) -> dict[str, Any]:
    """A GetRecords record in the exact shape Lambda delivers it."""
    body = dict(raw["dynamodb"])
    created = body.get("ApproximateCreationDateTime")
    if created is not None and hasattr(created, "timestamp"):
        body["ApproximateCreationDateTime"] = int(created.timestamp())
    for image in ("Keys", "NewImage", "OldImage"):
        if image in body:
            body[image] = {k: b64_attribute(v) for k, v in body[image].items()}
    record = {
        "eventID": raw["eventID"],
        "eventName": raw["eventName"],
        "eventVersion": raw.get("eventVersion", "1.1"),
        "eventSource": "aws:dynamodb",
        "awsRegion": raw.get("awsRegion", region),
        "dynamodb": body,
        "eventSourceARN": stream_arn,
    }
    if "userIdentity" in raw:
        record["userIdentity"] = raw["userIdentity"]
    return record


__all__ = ["LocalContext", "lambda_record"]
