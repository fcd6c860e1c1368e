"""Capacity units: what every DynamoDB request cost, added up per component.

On AWS, read and write units are the bill. `attach(client)` (called by
`shared.core.aws` for every DynamoDB client, boto3 and aiobotocore alike)
registers two botocore event handlers:

* ``provide-client-params.dynamodb.*`` sets ``ReturnConsumedCapacity =
  INDEXES`` on every operation whose input accepts it (the data plane:
  Get/Put/Update/DeleteItem, Query, Scan, the batch and transaction calls,
  PartiQL) unless the caller asked for something else;
* ``after-call.dynamodb.*`` reads the ``ConsumedCapacity`` of the answer
  (one entry, or one per table) and adds it to the process-wide `LEDGER`,
  under the component the call was made for and the table it touched.

The component comes from the innermost `scope(...)` around the call (a
context variable, so concurrent asyncio tasks each keep their own): the
backfill, the forward and reverse mirrors, verify and repair each open one.
A scope can also collect into a `Usage` of its own (`scope(into=usage)`):
the backfill keeps one per unit and persists it with the unit's checkpoint,
a mirror keeps one per batch for its EMF metrics. Requests to the control
table are the control-table overhead of whichever component made them;
reports name it apart (`split_control`).

Two things AWS bills that an answer does not carry, kept by AWS's documented
rules instead:

* A conditional write whose condition fails is an error with no
  ``ConsumedCapacity``, yet it "still consumes write capacity ... dependent
  on the size of the existing item (or a minimum of 1)". Each is counted
  (`Usage.failed_conditions`) and charged the minimum, 1 write unit.
* Transactions cost twice a standard request, per item ("TransactWriteItems
  ... consumes 2 WCUs per item up to 1 KB"), and AWS reports the sum.
  DynamoDB Local (3.3.1, measured) does not: two small items are answered
  as 2 units, not 4. Against a local endpoint (`attach(client, local=True)`)
  a TransactWriteItems is charged, per table, the larger of Local's answer
  and AWS's rules applied to the request (a Put: twice its item's started
  KB; an Update, Delete or ConditionCheck: the minimum, 2); index units are
  Local's.
* A BatchExecuteStatement answer from DynamoDB Local carries no
  ``ConsumedCapacity`` at all. Against a local endpoint each INSERT that
  succeeded is charged by the rules: its item's started KB, once for the
  table and once per GSI whose keys the item has (the table's indexes are
  asked once, with DescribeTable, and kept); one refused (the item exists)
  is charged as a refused conditional write, 1 unit.

These are the only places an emulator's behaviour is corrected, so that
local figures are what AWS would bill.

The rules themselves (`write_units`, `read_units`) also serve the dry run's
estimate, and `PRICES` turns units into the on-demand price.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

WRITE_UNIT_BYTES = 1024
READ_UNIT_BYTES = 4096

# On-demand throughput prices, Standard table class, USD per million request
# units: (write, read). Source: https://aws.amazon.com/dynamodb/pricing/on-demand/
# as of 2026-12-03 (the rates set by the November 2024 price reduction).
# Only regions whose rate is known here are listed: for any other region the
# units are shown and the price is said to be unknown, never guessed.
PRICES_AS_OF = "2026-12-03"
PRICES_SOURCE = "https://aws.amazon.com/dynamodb/pricing/on-demand/"
PRICES: dict[str, tuple[float, float]] = {
    "us-east-1": (0.625, 0.125),
    "us-east-2": (0.625, 0.125),
    "us-west-2": (0.625, 0.125),
}

_CONDITIONAL_FAILURE = "ConditionalCheckFailedException"


@dataclass
class Usage:
    """Units consumed, as AWS counts them (a Usage adds up; it never shrinks)."""

    read_units: float = 0.0
    write_units: float = 0.0
    requests: int = 0
    failed_conditions: int = 0  # conditional writes refused: 1 write unit each, included in write_units

    def add(self, other: Usage) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def minus(self, other: Usage) -> Usage:
        return Usage(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def copy(self) -> Usage:
        return Usage(**{f.name: getattr(self, f.name) for f in fields(self)})

    @property
    def units(self) -> float:
        return self.read_units + self.write_units

    def as_dict(self) -> dict[str, float | int]:
        return {
            "read_units": round(self.read_units, 3),
            "write_units": round(self.write_units, 3),
            "requests": self.requests,
            "failed_conditions": self.failed_conditions,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        return cls(**{f.name: type(f.default)(data.get(f.name, f.default)) for f in fields(cls)})


@dataclass
class Ledger:
    """Every unit this process consumed: component -> table -> Usage."""

    entries: dict[str, dict[str, Usage]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, component: str, table: str, usage: Usage) -> None:
        with self._lock:
            self.entries.setdefault(component, {}).setdefault(table, Usage()).add(usage)

    def snapshot(self) -> dict[str, dict[str, Usage]]:
        with self._lock:
            return {c: {t: u.copy() for t, u in tables.items()} for c, tables in self.entries.items()}

    def component(self, name: str) -> Usage:
        total = Usage()
        for usage in self.snapshot().get(name, {}).values():
            total.add(usage)
        return total

    def reset(self) -> None:
        with self._lock:
            self.entries.clear()


LEDGER = Ledger()

# (component, collectors): the innermost scope wins the component; every
# collector of every enclosing scope receives the units.
_SCOPE: contextvars.ContextVar[tuple[str, tuple[Usage, ...]]] = contextvars.ContextVar(
    "dynashift_capacity_scope", default=("other", ())
)


@contextlib.contextmanager
def scope(component: str | None = None, *, into: Usage | None = None) -> Iterator[Usage]:
    """Charge the DynamoDB calls made inside to `component`, and add them to `into`.

    Yields the collector (a new Usage if none is given). Nested scopes keep
    the outer collectors: a unit's Usage inside a run's Usage both count.
    """
    outer_component, outer = _SCOPE.get()
    collector = into if into is not None else Usage()
    token = _SCOPE.set((component or outer_component, (*outer, collector)))
    try:
        yield collector
    finally:
        _SCOPE.reset(token)


def current_component() -> str:
    return _SCOPE.get()[0]


# ------------------------------------------------------------------ the hook
def attach(client: Any, *, local: bool = False, describer: Callable[[str, str], Any] | None = None) -> Any:
    """Make `client` ask for and count consumed capacity; returns the client.

    `local`: the client talks to DynamoDB Local, whose INSERTs this prices itself, with the
    target's indexes read by a synchronous client that `describer(endpoint, region)` makes
    (`shared.core.aws.local_engine_client`; by default one of a new boto3 session)."""
    events = client.meta.events
    events.register("provide-client-params.dynamodb.*", _ask_for_capacity, unique_id="dynashift-capacity-ask")
    events.register(
        "after-call.dynamodb.*",
        _count_local if local else _count,
        unique_id="dynashift-capacity-count",
    )
    if local:
        indexes = _LocalIndexes(client.meta.endpoint_url, client.meta.region_name, describer or _boto3_client)
        events.register("provide-client-params.dynamodb.BatchExecuteStatement", indexes.price_inserts,
                        unique_id="dynashift-capacity-local-inserts")
    return client


_INSERT = re.compile(r"""^\s*INSERT\s+INTO\s+"((?:[^"]|"")+)"\s+VALUE\s*\{(.*)\}\s*$""", re.I | re.S)
_FIELD = re.compile(r"""'((?:[^']|'')*)'\s*:\s*\?""")


def _boto3_client(endpoint: str, region: str) -> Any:
    import boto3

    return boto3.session.Session().client(
        "dynamodb", endpoint_url=endpoint, region_name=region,
        aws_access_key_id="dynashiftlocal", aws_secret_access_key="dynashiftlocal")  # nosec B106: local engine


@dataclass
class _LocalIndexes:
    """The GSI keys of the tables a local client writes with INSERT (DescribeTable, once per table)."""

    endpoint: str
    region: str
    describer: Callable[[str, str], Any]
    known: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)

    def keys_of(self, table: str) -> list[tuple[str, ...]]:
        if table not in self.known:
            described = self.describer(self.endpoint, self.region).describe_table(TableName=table)["Table"]
            self.known[table] = [tuple(k["AttributeName"] for k in index["KeySchema"])
                                 for index in described.get("GlobalSecondaryIndexes", [])]
        return self.known[table]

    def price_inserts(self, params: dict[str, Any], context: dict[str, Any] | None = None, **_: Any) -> None:
        """Each statement's units by AWS's rules (None for anything but an INSERT), for `_count_local`."""
        if context is None:
            return
        units: list[tuple[str, float] | None] = []
        for statement in params.get("Statements", []):
            parsed = _parse_insert(statement.get("Statement", ""))
            if parsed is None:
                units.append(None)
                continue
            table, names = parsed
            item = dict(zip(names, statement.get("Parameters", []), strict=False))
            arms = sum(1 for keys in self.keys_of(table) if all(k in item for k in keys))
            units.append((table, write_units(wire_item_bytes(item), indexes=arms)))
        context["dynashift_statement_units"] = units


@functools.lru_cache(maxsize=256)
def _parse_insert(statement: str) -> tuple[str, tuple[str, ...]] | None:
    """An INSERT's table and attribute names (None: not an INSERT); one text per item shape, so cached."""
    match = _INSERT.match(statement)
    if match is None:
        return None
    names = tuple(name.replace("''", "'") for name in _FIELD.findall(match.group(2)))
    return match.group(1).replace('""', '"'), names


def _data_plane(model: Any) -> bool:
    return "ReturnConsumedCapacity" in model.input_shape.members


def _ask_for_capacity(params: dict[str, Any], model: Any, context: dict[str, Any] | None = None, **_: Any) -> None:
    if not _data_plane(model):
        return
    params.setdefault("ReturnConsumedCapacity", "INDEXES")
    if context is not None:
        context["dynashift_table"] = params.get("TableName", "?")
        if model.name == "TransactWriteItems" and "TransactItems" in params:
            context["dynashift_transaction_units"] = _transaction_units(params["TransactItems"])


def _transaction_units(transact_items: list[dict[str, Any]]) -> dict[str, float]:
    """Per table, AWS's write units for a TransactWriteItems request (table arm only)."""
    units: dict[str, float] = {}
    for entry in transact_items:
        for kind, action in entry.items():
            size = wire_item_bytes(action["Item"]) if kind == "Put" and "Item" in action else 0
            name = action.get("TableName", "?")
            units[name] = units.get(name, 0.0) + write_units(size, transactional=True)
    return units


def wire_item_bytes(item: Mapping[str, Any]) -> int:
    """DynamoDB's size of an item in the wire format ({"S": ...} values), measured without decoding it."""
    from shared.core.itemsize import wire_item_size_bytes

    return wire_item_size_bytes(item)


def _count(parsed: Mapping[str, Any], model: Any, context: dict[str, Any] | None = None, **_: Any) -> None:
    if _data_plane(model):
        record(model.name, parsed, table=(context or {}).get("dynashift_table", "?"))


def _count_local(parsed: Mapping[str, Any], model: Any, context: dict[str, Any] | None = None, **_: Any) -> None:
    if not _data_plane(model):
        return
    context = context or {}
    statement_units = context.get("dynashift_statement_units")
    if statement_units is not None and not parsed.get("ConsumedCapacity"):
        parsed = {**parsed, "ConsumedCapacity": _inserts_consumed(statement_units, parsed.get("Responses", []))}
    record(model.name, parsed, table=context.get("dynashift_table", "?"),
           transaction_units=context.get("dynashift_transaction_units"))


def _inserts_consumed(statement_units: list[tuple[str, float] | None], responses: list[Any]) -> list[dict[str, Any]]:
    """A BatchExecuteStatement answer's ConsumedCapacity as AWS would send it: its successful INSERTs."""
    per_table: dict[str, float] = {}
    for units, response in zip(statement_units, responses, strict=False):
        if units is not None:
            # A refused INSERT is a refused conditional put: the documented minimum, 1.
            charge = units[1] if "Error" not in response else 1.0
            per_table[units[0]] = per_table.get(units[0], 0.0) + charge
    return [{"TableName": table, "WriteCapacityUnits": total, "CapacityUnits": total}
            for table, total in per_table.items()]


def record(
    operation: str,
    parsed: Mapping[str, Any],
    *,
    table: str = "?",
    transaction_units: Mapping[str, float] | None = None,
) -> None:
    """Add one answer's units to the ledger and to the collectors in scope.

    `table` names the request's table, for what the answer does not name
    (a refused conditional write carries no ConsumedCapacity);
    `transaction_units` is the local engine's transaction correction.
    """
    component, collectors = _SCOPE.get()
    consumed = parsed.get("ConsumedCapacity")
    entries = consumed if isinstance(consumed, list) else [consumed] if consumed else []
    error = parsed.get("Error", {}).get("Code") if isinstance(parsed.get("Error"), Mapping) else None
    charges: list[tuple[str, Usage]] = []
    for entry in entries:
        usage = _usage_of(entry, operation)
        if transaction_units:  # DynamoDB Local's short answer for a transaction (see above)
            usage.write_units += _local_table_shortfall(entry, transaction_units)
        charges.append((entry.get("TableName", "?"), usage))
    if error == _CONDITIONAL_FAILURE:
        charges.append((table, Usage(write_units=1.0, failed_conditions=1)))
    if not charges:
        charges.append((table, Usage()))  # throttled, or an answer without units
    charges[0][1].requests += 1
    for table, usage in charges:
        LEDGER.add(component, table, usage)
        for collector in collectors:
            collector.add(usage)


def _local_table_shortfall(entry: Mapping[str, Any], transaction_units: Mapping[str, float]) -> float:
    reported = float(entry.get("Table", {}).get("CapacityUnits", entry.get("CapacityUnits", 0.0)))
    return max(0.0, transaction_units.get(entry.get("TableName", "?"), 0.0) - reported)


def _usage_of(entry: Mapping[str, Any], operation: str) -> Usage:
    read = entry.get("ReadCapacityUnits")
    write = entry.get("WriteCapacityUnits")
    total = float(entry.get("CapacityUnits", 0.0))
    if read is None and write is None:
        # DynamoDB answers a single total; which kind it is follows from the operation.
        is_read = operation in _READS
        return Usage(read_units=total if is_read else 0.0, write_units=0.0 if is_read else total)
    return Usage(read_units=float(read or 0.0), write_units=float(write or 0.0))


_READS = frozenset({"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"})


# ----------------------------------------------------------------- AWS's rules
def write_units(item_bytes: int, *, indexes: int = 0, transactional: bool = False) -> float:
    """Units of one write of an item of `item_bytes`, into the table and `indexes` GSI arms.

    1 unit per started KB, per table and per index the item is written to;
    twice that in a transaction.
    """
    per_arm = max(1, math.ceil(item_bytes / WRITE_UNIT_BYTES))
    return per_arm * (1 + indexes) * (2 if transactional else 1)


def read_units(item_bytes: int, *, consistent: bool = False, transactional: bool = False) -> float:
    """Units of reading `item_bytes` (one item, or a Query/Scan page's total).

    1 unit per started 4 KB for a strongly consistent read, half that for an
    eventually consistent one, twice it in a transaction.
    """
    units = float(max(1, math.ceil(item_bytes / READ_UNIT_BYTES)))
    if transactional:
        return units * 2
    return units if consistent else units / 2


def price(usage: Usage, region: str) -> float | None:
    """The on-demand price of `usage` in USD, or None when the region's rate is not in `PRICES`."""
    rates = PRICES.get(region)
    if rates is None:
        return None
    write_rate, read_rate = rates
    return (usage.write_units * write_rate + usage.read_units * read_rate) / 1_000_000


def format_usd(dollars: float) -> str:
    """Cents for real sums, six decimals for the small ones a test run costs."""
    return f"${dollars:,.2f}" if dollars >= 0.01 or dollars == 0 else f"${dollars:.6f}"


def describe(usage: Usage, region: str) -> str:
    """One line for a report: units and, where the rate is known, the price."""
    dollars = price(usage, region)
    cost = f"{format_usd(dollars)} on demand in {region}" if dollars is not None else \
        f"no on-demand rate known for {region}"
    return f"{usage.write_units:,.1f} write units, {usage.read_units:,.1f} read units ({cost})"


def split_control(tables: Mapping[str, Usage], control_table: str) -> tuple[Usage, Usage]:
    """(data, control-table overhead) of one component's per-table usage."""
    data, control = Usage(), Usage()
    for table, usage in tables.items():
        (control if table == control_table else data).add(usage)
    return data, control


def report(settings: Any, ledger: Ledger | None = None) -> dict[str, Any]:
    """The ledger per component, the control table apart, priced: for --json and summaries."""
    snapshot = (ledger or LEDGER).snapshot()
    region = settings.effective_region
    out: dict[str, Any] = {"region": region, "prices_as_of": PRICES_AS_OF, "components": {}}
    for component, tables in sorted(snapshot.items()):
        data, control = split_control(tables, settings.control_table)
        out["components"][component] = {
            "data": {**data.as_dict(), "usd": price(data, region)},
            "control": {**control.as_dict(), "usd": price(control, region)},
        }
    return out
