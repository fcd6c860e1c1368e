"""DynamoDB's item size, computed from a native item.

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

Numbers are an estimate (DynamoDB does not publish the exact encoding); the
estimate errs upwards by at most a byte per number.
"""

from __future__ import annotations

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


def check_target_items(items: list[Mapping[str, Any]]) -> None:
    """The engine's own checks on a transform result (same as the writers')."""
    for item in items:
        size = item_size_bytes(item)
        if size > MAX_ITEM_BYTES:
            raise ItemTooLarge(
                f"target item {item.get('PK')}/{item.get('SK')} would be {size} bytes, over DynamoDB's 400 KB limit"
            )


__all__ = ["MAX_ITEM_BYTES", "check_target_items", "item_size_bytes", "value_size_bytes"]
