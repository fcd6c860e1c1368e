"""The cutover flag: which table the application writes, and which mirror runs.

The flag is one item of the control table, ``PK = SK = "MODE"``, with
``mode`` (``old`` | ``freeze`` | ``new``), ``towards`` (while freezing: the
mode being switched to), ``version`` (a counter, +1 per write), ``since``
(epoch seconds of the last change of mode or direction) and whatever other
attributes the cutover orchestration stores beside them (``extra``: they are
read back and written again unchanged unless the caller changes them). An
absent item means ``old``, version 0.

Writes are optimistic: `ModeStore.write` puts the new state only if the
stored version is still the one the caller read (`ModeConflict` otherwise),
and only along the protocol's edges::

    old --> freeze(towards new) --> new --> freeze(towards old) --> old
               \\--abort--> old               \\--abort--> new

Rewriting the same mode and direction is allowed (to update ``extra``).

**Why the two mirrors are gated on the flag.** Both stream consumers run all
the time: the forward mirror (legacy streams -> sc-main) and the reverse
mirror (sc-main's stream -> legacy tables). Each reads the flag strongly once
per batch (never cached: the cache is for the application only) and applies
the batch only in its own modes, otherwise it reports every record processed
without writing anything:

* forward applies in ``old`` and ``freeze`` towards ``new``;
* reverse applies in ``new`` and ``freeze`` towards ``old``.

The cutover drains BOTH consumers, per shard, before it flips ``freeze`` to
the next mode: while freezing towards ``new`` the forward mirror applies the
last legacy writes and the reverse mirror skips what that produced in sc-main;
towards ``old`` the reverse applies and the forward skips. So every stream
record created in one mode has been consumed before the other mode begins,
and a record is consumed by a mirror whose gate matches the mode it was
written in. Nothing the forward mirror or the backfill wrote into sc-main
therefore echoes back into the legacy tables, and nothing the reverse mirror
wrote into the legacy tables echoes forward. (A batch read under one mode
cannot contain records of the next: the records were fetched before the flag
was read, and the next mode only begins after the drain.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from shared.core.aws import error_code, translate
from shared.core.codec import to_native, to_wire
from shared.core.errors import InvalidModeTransition, ModeConflict
from shared.store import keys

MODE_KEY = keys.mode()
_OWN_ATTRS = ("PK", "SK", "mode", "towards", "version", "since")


class Mode(StrEnum):
    OLD = "old"
    FREEZE = "freeze"
    NEW = "new"


@dataclass(frozen=True)
class ModeState:
    mode: Mode
    towards: Mode | None = None  # freeze only: the mode being switched to
    version: int = 0
    since: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> Mode:
        """The mode a freeze came from (its abort target); the mode itself otherwise."""
        if self.mode is Mode.FREEZE:
            return Mode.OLD if self.towards is Mode.NEW else Mode.NEW
        return self.mode

    def describe(self) -> str:
        return f"freeze (towards {self.towards})" if self.mode is Mode.FREEZE else str(self.mode)


INITIAL = ModeState(Mode.OLD)

# (mode, towards) -> the (mode, towards) it may become. Same -> same is allowed too.
_EDGES: dict[tuple[Mode, Mode | None], set[tuple[Mode, Mode | None]]] = {
    (Mode.OLD, None): {(Mode.FREEZE, Mode.NEW)},
    (Mode.FREEZE, Mode.NEW): {(Mode.NEW, None), (Mode.OLD, None)},
    (Mode.NEW, None): {(Mode.FREEZE, Mode.OLD)},
    (Mode.FREEZE, Mode.OLD): {(Mode.OLD, None), (Mode.NEW, None)},
}


def check_transition(current: ModeState, wanted: ModeState) -> None:
    """Raise InvalidModeTransition unless the protocol allows current -> wanted."""
    source = (current.mode, current.towards)
    target = (wanted.mode, wanted.towards)
    if target not in _EDGES:
        raise InvalidModeTransition(
            f"mode {wanted.mode} with towards={wanted.towards} is not a state of the protocol "
            "(freeze needs towards old|new; old and new need none)"
        )
    if target != source and target not in _EDGES[source]:
        allowed = ", ".join(ModeState(m, t).describe() for m, t in sorted(_EDGES[source], key=str))
        raise InvalidModeTransition(
            f"cannot switch mode from {current.describe()} to {wanted.describe()} (allowed: {allowed})"
        )


def forward_applies(state: ModeState) -> bool:
    """The forward mirror applies records in old, and while freezing towards new."""
    return state.mode is Mode.OLD or (state.mode is Mode.FREEZE and state.towards is Mode.NEW)


def reverse_applies(state: ModeState) -> bool:
    """The reverse mirror applies records in new, and while freezing towards old, until
    `dynashift finalize` stopped reverse replication (``extra.reverse_replication``)."""
    if state.extra.get("reverse_replication") == "stopped":
        return False
    return state.mode is Mode.NEW or (state.mode is Mode.FREEZE and state.towards is Mode.OLD)


def state_from_item(item: dict[str, Any] | None) -> ModeState:
    """A ModeState from the control item in wire format (None: absent -> old, version 0)."""
    if not item:
        return INITIAL
    native = to_native(item)
    towards = native.get("towards")
    return ModeState(
        mode=Mode(native["mode"]),
        towards=Mode(towards) if towards else None,
        version=int(native.get("version", 0)),
        since=float(native.get("since", 0)),
        extra={k: v for k, v in native.items() if k not in _OWN_ATTRS},
    )


def item_from_state(state: ModeState) -> dict[str, Any]:
    # DynamoDB takes no floats: extra values that are floats (times) are stored as Decimals.
    extra = {k: _decimal(v) if isinstance(v, float) else v for k, v in state.extra.items()}
    native: dict[str, Any] = {**extra, "mode": str(state.mode), "version": state.version,
                              "since": _decimal(state.since)}
    if state.towards is not None:
        native["towards"] = str(state.towards)
    return {**MODE_KEY, **to_wire(native)}


def _decimal(value: float) -> Any:
    from decimal import Decimal

    return Decimal(repr(round(value, 3)))


class ModeStore:
    """Reads and writes the flag through a (synchronous) boto3 DynamoDB client."""

    def __init__(self, client: Any, control_table: str, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.table = control_table
        self.clock = clock

    def read(self, consistent: bool = True) -> ModeState:
        try:
            response = self.client.get_item(TableName=self.table, Key=MODE_KEY, ConsistentRead=consistent)
        except Exception as exc:
            raise translate(exc, f"read the mode flag from {self.table}") from exc
        return state_from_item(response.get("Item"))

    def write(self, state: ModeState, expected_version: int) -> ModeState:
        """Store `state` if the flag is still at `expected_version`; returns what was stored.

        The stored version is ``expected_version + 1``; ``since`` is now when the
        mode or its direction changes, else kept. Raises ModeConflict when the
        flag moved on since it was read, InvalidModeTransition for a disallowed
        change.
        """
        current = self.read(consistent=True)
        if current.version != expected_version:
            raise ModeConflict(
                f"the mode flag changed meanwhile (version {current.version}, expected {expected_version}; "
                f"now {current.describe()}): read it again"
            )
        check_transition(current, state)
        moved = (state.mode, state.towards) != (current.mode, current.towards)
        stored = replace(state, version=expected_version + 1, since=self.clock() if moved else current.since)
        condition: dict[str, Any]
        if expected_version == 0:
            condition = {"ConditionExpression": "attribute_not_exists(PK)"}
        else:
            condition = {
                "ConditionExpression": "#v = :v",
                "ExpressionAttributeNames": {"#v": "version"},
                "ExpressionAttributeValues": {":v": {"N": str(expected_version)}},
            }
        try:
            self.client.put_item(TableName=self.table, Item=item_from_state(stored), **condition)
        except Exception as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise ModeConflict(
                    f"the mode flag changed meanwhile (expected version {expected_version}): read it again"
                ) from exc
            raise translate(exc, f"write the mode flag to {self.table}") from exc
        return stored


async def read_mode_async(client: Any, control_table: str) -> ModeState:
    """Strongly consistent read of the flag through an aiobotocore client (the mirrors, once per batch)."""
    try:
        response = await client.get_item(TableName=control_table, Key=MODE_KEY, ConsistentRead=True)
    except Exception as exc:
        raise translate(exc, f"read the mode flag from {control_table}") from exc
    return state_from_item(response.get("Item"))


__all__ = [
    "INITIAL",
    "Mode",
    "ModeState",
    "ModeStore",
    "check_transition",
    "forward_applies",
    "read_mode_async",
    "reverse_applies",
]
