"""DynamoDB's item size, computed from a native item or straight from the wire format.

DynamoDB refuses an item above 400 KB, counting attribute names and values
by its own rules. The engine checks a target item against `MAX_ITEM_BYTES`
before writing it, so an oversized item is quarantined with a clear reason
instead of failing the write. The rules (AWS "Item sizes and formats"):

- S: UTF-8 bytes; B: raw bytes; BOOL and NULL: 1 byte.
- N: about one byte per two significant digits, plus one.
- L and M: 3 bytes, plus each element's size and 1 byte per element (a map
  element also counts its key's UTF-8 bytes).
- SS / NS / BS: the sum of the members' sizes.
- Each top-level attribute also counts its name's UTF-8 bytes.

`wire_item_size_bytes` measures an item in the wire format (``{"S": ...}``
values, as a request's parameters hold it) by the same rules without
decoding it first: the capacity ledger prices every INSERT that DynamoDB
Local leaves unpriced this way (`shared.core.capacity`).

Numbers are an estimate (DynamoDB does not publish the exact encoding); the
estimate errs upwards by at most a byte per number.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import Binary

from shared.core.errors import ItemTooLarge

MAX_ITEM_BYTES = 400 * 1024

_DOCUMENT_OVERHEAD = 3
_ELEMENT_OVERHEAD = 1


def item_size_bytes(item: Mapping[str, Any]) -> int:
    """Size of a native item as DynamoDB counts it against its 400 KB limit."""
    return sum(_utf8(name) + value_size_bytes(value) for name, value in item.items())


def value_size_bytes(value: Any) -> int:
    # The exact types a decoded item holds first (every item a writer sends is measured);
    # subclasses and the rarer types take the general path.
    kind = type(value)
    if kind is str:
        return _utf8(value)
    if kind is Decimal:
        return _number_size(value)
    if kind is dict:
        return _map_size(value)
    if kind is list:
        return _list_size(value)
    return _other_size_bytes(value)


def _map_size(value: Mapping[Any, Any]) -> int:
    return _DOCUMENT_OVERHEAD + sum(
        _ELEMENT_OVERHEAD + _utf8(str(key)) + value_size_bytes(element) for key, element in value.items()
    )


def _list_size(value: list[Any] | tuple[Any, ...]) -> int:
    return _DOCUMENT_OVERHEAD + sum(_ELEMENT_OVERHEAD + value_size_bytes(element) for element in value)


def _other_size_bytes(value: Any) -> int:
    # bool before int: bool is an int subclass in Python, BOOL is not N.
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, int | float | Decimal):
        return _number_size(value)
    if isinstance(value, Binary):
        return len(value.value)
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    if isinstance(value, set | frozenset):
        return sum(value_size_bytes(member) for member in value)
    if isinstance(value, list | tuple):
        return _list_size(value)
    if isinstance(value, Mapping):
        return _map_size(value)
    raise TypeError(f"not a native DynamoDB value: {type(value).__name__}")


def _number_size(value: int | float | Decimal) -> int:
    number = value if isinstance(value, Decimal) else Decimal(str(value))
    if not number.is_finite() or number.is_zero():
        return 1 + 1
    # Leading and trailing zeros cost nothing: 1000 and 0.001 are one digit. Counted from the
    # digits as written (not normalize(), which rounds to the context's 28 digits: DynamoDB keeps 38).
    digits = number.as_tuple().digits
    significant = len(digits)
    while significant > 1 and digits[significant - 1] == 0:
        significant -= 1
    return (significant + 1) // 2 + 1


def _utf8(text: str) -> int:
    if text.isascii():
        return len(text)
    # surrogatepass: a lone surrogate should be measured, not crash the check.
    return len(text.encode("utf-8", "surrogatepass"))


def wire_item_size_bytes(item: Mapping[str, Any]) -> int:
    """Size of an item in the wire format, as `item_size_bytes` of its decoded form."""
    size = 0
    for name, value in item.items():  # a loop, strings inline: most attributes are top-level strings
        text = value.get("S")
        size += _utf8(name) + (_utf8(text) if type(text) is str else _wire_value_size(value))
    return size


def _wire_value_size(value: Mapping[str, Any]) -> int:
    for tag, inner in value.items():
        if tag == "S":
            return _utf8(inner)
        if tag == "N":
            return _number_text_size(inner)
        if tag == "M":
            return _DOCUMENT_OVERHEAD + sum(
                _ELEMENT_OVERHEAD + _utf8(key) + _wire_value_size(element) for key, element in inner.items()
            )
        if tag == "L":
            return _DOCUMENT_OVERHEAD + sum(_ELEMENT_OVERHEAD + _wire_value_size(element) for element in inner)
        if tag in ("BOOL", "NULL"):
            return 1
        if tag == "SS":
            return sum(_utf8(member) for member in set(inner))
        if tag == "NS":
            return sum(_number_size(number) for number in {Decimal(member) for member in inner})  # 1 == 1.0
        if tag == "B":
            return len(_wire_binary(inner))
        if tag == "BS":
            return sum(len(member) for member in {_wire_binary(member) for member in inner})
        raise TypeError(f"DynamoDB type {tag} is not supported")
    return _DOCUMENT_OVERHEAD  # {}: DynamoDB Local's rendering of an empty map in stream records


def _number_text_size(text: str) -> int:
    """`_number_size` of a number as DynamoDB's wire format writes it, read off its digits."""
    mantissa = text.lstrip("+-").partition("e")[0].partition("E")[0]
    digits = mantissa.replace(".", "", 1)
    if not digits.isdigit() or not digits.isascii():
        return _number_size(Decimal(text))  # not plain digits: let Decimal read it
    significant = len(digits.strip("0"))  # leading and trailing zeros cost nothing
    return (max(significant, 1) + 1) // 2 + 1


def _wire_binary(value: Any) -> bytes:
    # base64 text in DynamoDB JSON; raw bytes in a request's parameters or a parsed answer.
    if isinstance(value, str):
        return base64.b64decode(value)
    return bytes(value)


def check_target_items(items: list[Mapping[str, Any]]) -> None:
    """The engine's own checks on a transform result (same as the writers')."""
    for item in items:
        size = item_size_bytes(item)
        if size > MAX_ITEM_BYTES:
            raise ItemTooLarge(
                f"target item {item.get('PK')}/{item.get('SK')} would be {size} bytes, over DynamoDB's 400 KB limit"
            )


__all__ = ["MAX_ITEM_BYTES", "check_target_items", "item_size_bytes", "value_size_bytes", "wire_item_size_bytes"]
