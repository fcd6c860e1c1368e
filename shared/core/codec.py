"""Matched serialize/deserialize between DynamoDB AttributeValues and native items.

boto3's `TypeSerializer`/`TypeDeserializer` do the work; this module adds
what they don't handle in stream records as Lambda delivers them:

* Lambda's events are JSON, so `B`/`BS` values arrive as base64 text, which
  `TypeDeserializer` refuses; they are decoded to bytes (bytes are kept, so a
  raw GetRecords image parses too).
* DynamoDB Local 3.3.1 renders an empty map inside *stream records* as
  ``{}`` instead of ``{"M": {}}`` (GetItem and Scan are correct).

`from_stream_image` repairs both before deserialising, so a stream image and
a scanned item of the same data are equal.
"""

from __future__ import annotations

from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def to_native(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def to_wire(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in item.items()}


def value_to_wire(value: Any) -> dict[str, Any]:
    return _serializer.serialize(value)


def from_stream_image(image: dict[str, Any]) -> dict[str, Any]:
    """A stream record's Keys/NewImage/OldImage as a native item (base64 and quirk repaired)."""
    return {k: _deserializer.deserialize(_b64_in(v)) for k, v in image.items()}


# --- DynamoDB JSON (the export format: B and BS members as base64 text) -------------
def b64_attribute(value: Any) -> Any:
    """A wire attribute value with its binary members as base64 text, as JSON carries
    them: DynamoDB JSON exports, and Lambda's stream events (`shared.streams.runner`)."""
    import base64

    if isinstance(value, dict):
        out = {}
        for tag, inner in value.items():
            if tag == "B":
                out[tag] = base64.b64encode(bytes(inner)).decode()
            elif tag == "BS":
                out[tag] = [base64.b64encode(bytes(b)).decode() for b in inner]
            elif tag == "L":
                out[tag] = [b64_attribute(v) for v in inner]
            elif tag == "M":
                out[tag] = {k: b64_attribute(v) for k, v in inner.items()}
            else:
                out[tag] = inner
        return out
    return value


def _unb64(value: Any) -> Any:
    import base64

    return base64.b64decode(value) if isinstance(value, str) else value


def _b64_in(value: Any) -> Any:
    if isinstance(value, dict):
        if not value:  # DynamoDB Local's stream quirk, see from_stream_image
            return {"M": {}}
        out = {}
        for tag, inner in value.items():
            if tag == "B":
                out[tag] = _unb64(inner)
            elif tag == "BS":
                out[tag] = [_unb64(b) for b in inner]
            elif tag == "L":
                out[tag] = [_b64_in(v) for v in inner]
            elif tag == "M":
                out[tag] = {k: _b64_in(v) for k, v in inner.items()}
            else:
                out[tag] = inner
        return out
    return value


def to_dynamodb_json(item: dict[str, Any]) -> dict[str, Any]:
    """A native item as DynamoDB JSON (JSON-safe: binary as base64)."""
    return {k: b64_attribute(v) for k, v in to_wire(item).items()}


def from_dynamodb_json(item: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB JSON (as in exports and Lambda events) to a native item."""
    return {k: _deserializer.deserialize(_b64_in(v)) for k, v in item.items()}
