"""`shared.core.codec`'s one-pass decoder gives exactly what boto3's TypeDeserializer gives.

The decoder replaced a repairing copy followed by boto3's walk (for speed); boto3 stays the
reference: for every DynamoDB type, nested, as DynamoDB JSON (base64 binary) and as a parsed
answer (bytes), the two agree value for value and type for type.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.codec import b64_attribute, from_dynamodb_json, from_stream_image, to_dynamodb_json, to_wire
from tests.unit.test_sc_properties import dynamodb_values, text

reference = TypeDeserializer()


def typed(value: Any) -> Any:
    """The value with each member's type kept, so 1 == Decimal(1) == True cannot pass for each other."""
    if isinstance(value, dict):
        return ("M", {k: typed(v) for k, v in value.items()})
    if isinstance(value, list):
        return ("L", [typed(v) for v in value])
    if isinstance(value, set):
        return ("set", sorted((typed(v) for v in value), key=repr))
    return (type(value).__name__, value)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(text, dynamodb_values, min_size=1, max_size=5))
def test_decoding_agrees_with_boto3_for_every_type(item):
    wire = to_wire(item)  # what botocore's parser hands over: binary as bytes
    as_json = json.loads(json.dumps(to_dynamodb_json(item)))  # what JSON carries: binary as base64 text
    expected = typed({k: reference.deserialize(v) for k, v in wire.items()})
    assert typed(from_dynamodb_json(as_json)) == expected
    assert typed(from_stream_image(as_json)) == expected
    assert typed(from_dynamodb_json(wire)) == expected


def test_numbers_keep_dynamodbs_38_digits_and_binary_comes_back_as_binary():
    raw = {"n": {"N": "12345678901234567890123456789012345678"}, "b": {"B": "AP8="}, "bs": {"BS": ["AQ=="]}}
    item = from_dynamodb_json(raw)
    assert item["n"] == Decimal("12345678901234567890123456789012345678") and isinstance(item["n"], Decimal)
    assert item["b"] == Binary(b"\x00\xff") and item["bs"] == {Binary(b"\x01")}


def test_an_empty_map_rendered_as_an_empty_object_in_a_stream_record_decodes_as_an_empty_map():
    # DynamoDB Local 3.3.1 writes {} instead of {"M": {}} inside stream records, nested or not
    image = {"top": {}, "m": {"M": {"inner": {}}}, "l": {"L": [{}]}}
    assert from_stream_image(image) == {"top": {}, "m": {"inner": {}}, "l": [{}]}


def test_an_unknown_type_is_refused_by_name():
    with pytest.raises(TypeError, match="DynamoDB type X is not supported"):
        from_dynamodb_json({"a": {"X": "1"}})


def test_b64_attribute_and_the_decoder_round_trip():
    value = {"M": {"b": {"B": b"\x00"}, "bs": {"BS": [b"\x01"]}, "l": {"L": [{"B": b"\x02"}]}}}
    assert from_dynamodb_json({"a": b64_attribute(value)}) == {"a": {"b": Binary(b"\x00"), "bs": {Binary(b"\x01")},
                                                                     "l": [Binary(b"\x02")]}}


reference_serializer = TypeSerializer()


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(text, dynamodb_values, min_size=1, max_size=5))
def test_encoding_agrees_with_boto3_for_every_type(item):
    assert to_wire(item) == {k: reference_serializer.serialize(v) for k, v in item.items()}


@pytest.mark.parametrize("value", [1.5, Decimal("NaN"), Decimal("Infinity"), Decimal("1" * 39), object()])
def test_what_boto3_refuses_is_refused_the_same_way(value):
    with pytest.raises(Exception) as ours:
        to_wire({"a": value})
    with pytest.raises(Exception) as boto3s:
        reference_serializer.serialize(value)
    assert type(ours.value) is type(boto3s.value) and str(ours.value) == str(boto3s.value)


def test_ints_tuples_and_subclasses_encode_as_boto3_encodes_them():
    class Tagged(str):
        pass

    item = {"i": 7, "t": ("a", Decimal(1)), "s": Tagged("x"), "b": b"\x00", "n": None, "bool": True}
    assert to_wire(item) == {k: reference_serializer.serialize(v) for k, v in item.items()}
