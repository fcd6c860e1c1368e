"""`shared.core.aws.raw_scan_pages`: Scan pages handed over as DynamoDB JSON, skipping botocore's model walk.

The backfill's worker and the verifier read every source page this way; what they decode
(`from_dynamodb_json`) must be exactly what botocore's parse would have given (`to_native`), for
every DynamoDB type, and the page's cursor must go back as botocore would send it.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import Binary

from shared.core.aws import _raw_scan_pages
from shared.core.codec import from_dynamodb_json, to_dynamodb_json, to_native, to_wire

EVERY_TYPE: dict[str, Any] = {
    "pk": "acct-1", "s": "Zoë 工具 🚀", "n": Decimal("12345678901234567890.5"), "neg": Decimal("-0.001"),
    "b": Binary(b"\x00\xffraw"), "ss": {"a", "b"}, "ns": {Decimal(1), Decimal("2.5")},
    "bs": {Binary(b"\x01"), Binary(b"\x02")}, "bool": False, "null": None, "empty_map": {}, "empty_list": [],
    "m": {"nested": {"deep": [Decimal(1), "x", Binary(b"\x03"), {"k": None}]}}, "l": ["a", Decimal(2), True],
}


def scan_response(items: list[dict[str, Any]], last_key: dict[str, Any] | None) -> dict[str, Any]:
    """A Scan answer as DynamoDB sends it: DynamoDB JSON, binary as base64 text."""
    body: dict[str, Any] = {"Items": [to_dynamodb_json(i) for i in items], "Count": len(items), "ScannedCount": 3,
                            "ConsumedCapacity": {"TableName": "t", "CapacityUnits": 0.5}}
    if last_key is not None:
        body["LastEvaluatedKey"] = to_dynamodb_json(last_key)
    return {"status_code": 200, "headers": {}, "body": json.dumps(body).encode()}


def test_a_raw_page_decodes_to_what_botocore_would_have_parsed_for_every_type():
    # GIVEN a Scan answer holding an item of every type, and a binary cursor
    response = scan_response([EVERY_TYPE], {"pk": "acct-1", "bk": b"\x00\x01"})
    parsed: dict[str, Any] = {}
    # WHEN the hook sees it before botocore's parser
    _raw_scan_pages(response, parsed)
    # THEN the parser is handed nothing to walk, the items are DynamoDB JSON that decode to the
    # same native item botocore's parse would give, and the cursor's binary is bytes again
    assert response["body"] == b"{}" and parsed["RawItems"] is True
    assert [from_dynamodb_json(raw) for raw in parsed["Items"]] == [to_native(to_wire(EVERY_TYPE))]
    assert parsed["LastEvaluatedKey"] == {"pk": {"S": "acct-1"}, "bk": {"B": b"\x00\x01"}}
    assert parsed["Count"] == 1 and parsed["ConsumedCapacity"]["CapacityUnits"] == 0.5


def test_an_error_answer_is_left_to_botocore():
    response = {"status_code": 400, "headers": {}, "body": b'{"__type": "ValidationException"}'}
    parsed: dict[str, Any] = {}
    _raw_scan_pages(response, parsed)
    assert parsed == {} and response["body"] == b'{"__type": "ValidationException"}'


def test_a_parsed_page_decodes_the_same():
    # A client without the hook (a test's fake) gives botocore's parsed form: the worker reads it alike.
    assert from_dynamodb_json(to_wire(EVERY_TYPE)) == to_native(to_wire(EVERY_TYPE))
