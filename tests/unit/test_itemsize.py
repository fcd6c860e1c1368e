"""DynamoDB item size rules, as the engine uses them to quarantine big items."""

from __future__ import annotations

from decimal import Decimal

import pytest
from boto3.dynamodb.types import Binary
from hypothesis import given
from hypothesis import strategies as st

from shared.core.codec import to_dynamodb_json, to_wire
from shared.core.itemsize import MAX_ITEM_BYTES, item_size_bytes, wire_item_size_bytes
from tests.unit.test_sc_properties import dynamodb_values, text


def test_limit_is_400_kib() -> None:
    # GIVEN DynamoDB's documented limit
    # THEN the constant is 400 KB in binary kilobytes
    assert MAX_ITEM_BYTES == 409_600


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("", 0),
        ("abc", 3),
        ("é", 2),  # UTF-8 bytes, not characters
        ("🚀", 4),
        (True, 1),
        (False, 1),
        (None, 1),
        (Binary(b"\x00\x01\x02"), 3),
        (b"\x00\x01", 2),
        (Decimal(1), 2),  # 1 digit → 1 + 1
        (Decimal(12), 2),  # 2 digits → 1 + 1
        (Decimal(123), 3),  # 3 digits → 2 + 1
        (Decimal("1000000"), 2),  # trailing zeros are free
        (Decimal("0.001"), 2),  # leading zeros are free
        (Decimal("-12.34"), 3),  # 4 digits → 2 + 1
        (Decimal("12345678901234567890123456789012345678"), 20),  # 38 digits, DynamoDB's most → 19 + 1
        (Decimal("1.2345678901234567890123456789012345678E+100"), 20),  # the same digits, the exponent free
        (12345, 4),  # a Python int counts like N
        ({"ab", "c"}, 3),  # SS: sum of members
        ({Decimal(1), Decimal(123)}, 5),  # NS
        ([], 3),  # L: 3 bytes overhead
        (["a", True], 3 + (1 + 1) + (1 + 1)),  # + 1 per element
        ({}, 3),  # M: 3 bytes overhead
        ({"k": "vv"}, 3 + 1 + 1 + 2),  # + 1 per element + key name
        ({"m": {"x": [None]}}, 3 + 1 + 1 + (3 + 1 + 1 + (3 + 1 + 1))),
    ],
)
def test_each_value_type_is_counted_by_dynamodb_rules(value: object, size: int) -> None:
    # GIVEN an item with one attribute named "a" (1 byte)
    # WHEN its size is computed
    # THEN it is the name plus the value's size
    assert item_size_bytes({"a": value}) == 1 + size


def test_names_count_in_utf8_and_every_attribute_adds_up() -> None:
    # GIVEN an item with a non-ASCII attribute name
    item = {"PK": "ACCOUNT#1", "naïve": "x"}
    # THEN each name counts its UTF-8 bytes
    assert item_size_bytes(item) == (2 + 9) + (6 + 1)


def test_an_item_just_over_the_limit_is_detected() -> None:
    # GIVEN an item of exactly the limit and one a byte bigger
    at_limit = {"a": "x" * (MAX_ITEM_BYTES - 1)}
    over = {"a": "x" * MAX_ITEM_BYTES}
    # THEN only the second exceeds it
    assert item_size_bytes(at_limit) == MAX_ITEM_BYTES
    assert item_size_bytes(over) > MAX_ITEM_BYTES


def test_floats_and_unknown_types_are_refused_or_measured_honestly() -> None:
    # GIVEN values the deserializer never produces
    # THEN an unknown type is refused loudly instead of guessed
    with pytest.raises(TypeError, match="object"):
        item_size_bytes({"a": object()})


@given(st.dictionaries(text, dynamodb_values, min_size=1, max_size=5))
def test_the_wire_form_measures_what_the_native_item_measures(item) -> None:
    # GIVEN any item of every DynamoDB type, nested
    # WHEN it is measured in the wire format a request carries, and as DynamoDB JSON (binary as base64)
    # THEN both agree with the native measure: the capacity ledger prices INSERTs from the wire form
    native = item_size_bytes(item)
    assert wire_item_size_bytes(to_wire(item)) == native
    assert wire_item_size_bytes(to_dynamodb_json(item)) == native


def test_the_wire_form_refuses_an_unknown_type_by_name() -> None:
    with pytest.raises(TypeError, match="XX"):
        wire_item_size_bytes({"a": {"XX": "1"}})
