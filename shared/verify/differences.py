"""What verify compares and what it reports: the canonical form, and a difference.

Items are compared in a canonical form that keeps DynamoDB's types (sets
sorted, numbers normalised), so two items are equal here exactly when
DynamoDB would store equal values; a 16-byte digest of that form is what the
spill store keeps instead of the item. A `Difference` is one confirmed
disagreement: its kind (`KINDS`), source, target key and attribute diff.
Pure functions only: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from decimal import Context, Decimal
from typing import Any

from boto3.dynamodb.types import Binary

from shared.core.definition import Item, TargetKey
from shared.store.control import key_from_text

KINDS = ("missing", "extra", "mismatched", "leftover", "quarantine_missing", "quarantine_stale")
ABSENT = "<absent>"
LEFTOVER_PREFIX = "_dynashift"


# DynamoDB keeps 38 significant digits; normalize() in the default context would round to 28,
# and two numbers that differ in their 29th digit would look equal.
_EXACT = Context(prec=40)


def _number(value: Any) -> str:
    number = Decimal(value) if not isinstance(value, Decimal) else value
    return "0" if number == 0 else str(number.normalize(_EXACT))


def canonical(value: Any) -> Any:
    """A JSON-able form with DynamoDB's types kept: equal exactly when DynamoDB would store equal values."""
    # The exact types a decoded item holds first (every item verify reads is digested).
    kind = type(value)
    if kind is str:
        return ["S", value]
    if kind is dict:
        return _canonical_map(value)
    if kind is Decimal:
        return ["N", _number(value)]
    if kind is list:
        return _canonical_list(value)
    return _canonical_other(value)


def _canonical_map(value: dict[str, Any]) -> list[Any]:
    return ["M", {k: canonical(v) for k, v in value.items()}]


def _canonical_list(value: list[Any] | tuple[Any, ...]) -> list[Any]:
    return ["L", [canonical(v) for v in value]]


def _canonical_other(value: Any) -> Any:
    if isinstance(value, str):
        return ["S", value]
    if isinstance(value, bool):
        return ["BOOL", value]
    if isinstance(value, (Decimal, int, float)):
        return ["N", _number(value)]
    if value is None:
        return ["NULL"]
    if isinstance(value, dict):
        return _canonical_map(value)
    if isinstance(value, (list, tuple)):
        return _canonical_list(value)
    if isinstance(value, (bytes, bytearray, Binary)):
        return ["B", base64.b64encode(bytes(value.value if isinstance(value, Binary) else value)).decode()]
    if isinstance(value, (set, frozenset)):
        members = [canonical(v) for v in value]
        tag = {"S": "SS", "N": "NS", "B": "BS"}.get(members[0][0] if members else "S", "SS")
        return [tag, sorted(m[1] for m in members)]
    raise TypeError(f"not a DynamoDB value: {type(value).__name__}")


def digest(item: Item | None) -> bytes | None:
    if item is None:
        return None
    text = _ENCODER.encode(canonical(item))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


# One encoder for every digest (json.dumps with options builds a new one per call); a canonical
# form is a tree, never circular, so the check is skipped.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), check_circular=False)


def jsonable(value: Any) -> Any:
    """A readable JSON value for reports (sets sorted, numbers as numbers, binary as base64)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v) for v in value), key=str)
    if isinstance(value, (bytes, bytearray, Binary)):
        return base64.b64encode(bytes(value.value if isinstance(value, Binary) else value)).decode()
    return value


def attribute_diff(expected: Item | None, actual: Item | None) -> dict[str, Any]:
    """Attribute by attribute: ``{name: {"expected": v, "actual": v}}`` for every name that differs."""
    expected, actual = expected or {}, actual or {}
    diff = {}
    for name in sorted(set(expected) | set(actual)):
        mine, theirs = expected.get(name, ABSENT), actual.get(name, ABSENT)
        if (mine is ABSENT) != (theirs is ABSENT) or (
            mine is not ABSENT and canonical(mine) != canonical(theirs)
        ):
            diff[name] = {"expected": jsonable(mine), "actual": jsonable(theirs)}
    return diff


def is_leftover(item: Item | None) -> bool:
    return bool(item) and str(item.get("entity", "")).startswith(LEFTOVER_PREFIX)  # type: ignore[union-attr]



def observation_digest(parts: list[Any]) -> bytes:
    """A digest of what a candidate depends on: the target item's and the sources' digests (or entry)."""

    def plain(part: Any) -> Any:
        if isinstance(part, bytes):
            return part.hex()
        if isinstance(part, tuple):
            return tuple(plain(p) for p in part)
        return part

    return hashlib.blake2b(repr([plain(p) for p in parts]).encode(), digest_size=16).digest()



@dataclass
class Difference:
    kind: str
    source: str | None  # SourceRef.as_text()
    target_key: TargetKey | None
    diff: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source,
                "target_key": list(self.target_key) if self.target_key else None, "diff": self.diff}



def unconfirmed(subject: str, value: str, kind: str) -> Difference:
    """A nominated difference past the re-check limit: counted in its kind, never re-read."""
    if subject == "k":
        return Difference(kind, None, key_from_text(value), {})
    return Difference(kind, value, None, {})
