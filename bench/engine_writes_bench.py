"""What one target item costs DynamoDB Local to write, by write method: the engine's floor under the backfill.

Run it from the project root::

    .venv/bin/python -m bench.engine_writes_bench            # 3 rounds
    .venv/bin/python -m bench.engine_writes_bench --quick    # 1 round

Method
======

The backfill benchmark (bench/backfill_bench.py) compares whole runs; this one isolates the write
request itself. The same target items (``shared.sc.seed.generate``, by default 500 accounts and 1,500 repositories
(``--items``),
no bad rows, seed 7, each transformed by the sc definition, duplicates of a key dropped) are written into
an empty sc-main (stream and GSI1, as template.yaml defines it) by one synchronous boto3 client, one
request at a time, with each method on a FRESH DynamoDB Local (so no method pays for another's stream
records):

* ``BatchWriteItem``: 25 unconditional puts a request (the naive script's write; not race-safe);
* ``BatchExecuteStatement INSERT``: 25 PartiQL INSERTs a request (create-only: the backfill's default);
* ``PutItem (conditional)``: ``attribute_not_exists(PK)`` (the backfill's put mode, one request an item);
* ``PutItem``: unconditional, one request an item.

For each: the engine's CPU per item (utime + stime of the DynamoDB Local process, all threads, from
/proc), the client's CPU per item, and items/s. Rounds alternate the methods' order. The ratio that
matters is each method's engine CPU per item against BatchWriteItem's from the same round: on a machine
where the engine saturates the cores (DynamoDB Local on 2 cores), a backfill that must write
conditionally cannot go faster than the naive script by more than the inverse of that ratio allows,
whatever the client does. On AWS the service's CPU is not the client's machine's, and the bound is
capacity units and latency instead.

Results: bench/out/engine_writes.json and .md (``--quick``: engine_writes-quick.*).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import common
from bench.common import fresh_engine, pid_cpu_s
from shared.core import aws
from shared.core.codec import to_wire
from shared.core.definition import Item, get_definition
from shared.core.errors import QuarantineError
from shared.core.itemsize import check_target_items
from shared.ops.tables import create_tables
from shared.protocol.apply import insert_statement
from shared.sc.seed import generate

OUT_DIR = Path(__file__).resolve().parent / "out"
BATCH = 25


def target_items(accounts: int = 500, repositories: int = 1500, seed: int = 7) -> list[Item]:
    """The sc transform of generated legacy items, one item per target key."""
    definition = get_definition("sc")
    data = generate(accounts, repositories, 0.0, seed)
    items: dict[tuple[Any, ...], Item] = {}
    for table, rows in data.tables.items():
        for row in rows:
            try:
                targets = definition.transform(table, row)
                check_target_items(targets)
            except QuarantineError:
                continue
            for item in targets:
                items.setdefault(definition.target_key(item), item)
    return list(items.values())


def batch_write(client: Any, table: str, items: list[Item]) -> None:
    for start in range(0, len(items), BATCH):
        request = {table: [{"PutRequest": {"Item": to_wire(i)}} for i in items[start:start + BATCH]]}
        while request:
            request = client.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}


def insert(client: Any, table: str, items: list[Item]) -> None:
    for start in range(0, len(items), BATCH):
        answer = client.batch_execute_statement(
            Statements=[insert_statement(table, i) for i in items[start:start + BATCH]])
        errors = [r for r in answer.get("Responses", []) if "Error" in r]
        if errors:
            raise RuntimeError(f"INSERT refused on an empty table: {errors[0]['Error']}")


def put_conditional(client: Any, table: str, items: list[Item]) -> None:
    for item in items:
        client.put_item(TableName=table, Item=to_wire(item), ConditionExpression="attribute_not_exists(PK)")


def put_plain(client: Any, table: str, items: list[Item]) -> None:
    for item in items:
        client.put_item(TableName=table, Item=to_wire(item))


METHODS: dict[str, tuple[str, Callable[[Any, str, list[Item]], None]]] = {
    "batch_write": ("BatchWriteItem (25, unconditional)", batch_write),
    "insert": ("BatchExecuteStatement INSERT (25, create-only)", insert),
    "put_conditional": ("PutItem (conditional)", put_conditional),
    "put": ("PutItem (unconditional)", put_plain),
}


def measure(method: str, items: list[Item]) -> dict[str, Any]:
    with fresh_engine() as (info, settings):
        create_tables(settings, with_sources=False)
        client = aws.dynamodb(settings)
        engine0, client0, wall0 = pid_cpu_s(info.pid), time.process_time(), time.perf_counter()
        METHODS[method][1](client, settings.target_table, items)
        engine1, client1, wall1 = pid_cpu_s(info.pid), time.process_time(), time.perf_counter()
        pages = client.get_paginator("scan").paginate(TableName=settings.target_table, Select="COUNT",
                                                      ConsistentRead=True)
        written = sum(page["Count"] for page in pages)
    if written != len(items):
        raise RuntimeError(f"{method}: {written} items in sc-main, {len(items)} written")
    n = len(items)
    return {"method": method, "items": n, "engine_cpu_ms_per_item": (engine1 - engine0) * 1000 / n,
            "client_cpu_ms_per_item": (client1 - client0) * 1000 / n, "items_per_s": n / (wall1 - wall0)}


def _stat(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    rows, ratios = [], []
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        rows.append({"method": method, **{k: _stat([r[k] for r in mine])
                                         for k in ("engine_cpu_ms_per_item", "client_cpu_ms_per_item",
                                                   "items_per_s")}})
        if method == "batch_write":
            continue
        paired = [(r, b) for r in mine for b in runs if b["method"] == "batch_write" and b["round"] == r["round"]]
        ratios.append({"method": method,
                       "engine_cpu": _stat([r["engine_cpu_ms_per_item"] / b["engine_cpu_ms_per_item"]
                                            for r, b in paired]),
                       "items_per_s": _stat([r["items_per_s"] / b["items_per_s"] for r, b in paired])})
    insert_ratio = next(r for r in ratios if r["method"] == "insert")
    verdicts = [{
        "target": "create-only INSERT costs the engine no more CPU per item than the naive script's unconditional "
                  "BatchWriteItem (if not, the backfill cannot match the naive script's items/s where the engine "
                  "saturates the cores)",
        "measured": f"{insert_ratio['engine_cpu']['median']:.2f}x ({rounds} round(s)); one request at a time, "
                    f"INSERT reaches {insert_ratio['items_per_s']['median']:.2f}x BatchWriteItem's items/s",
        "pass": insert_ratio["engine_cpu"]["median"] <= 1.0, "informational": True,
    }]
    return {"rows": rows, "ratios": ratios, "verdicts": verdicts}


def render(report: dict[str, Any]) -> str:
    cell = common.cell
    lines = [
        "# Engine cost of one target item, by write method (DynamoDB Local)",
        "",
        f"{report['items']:,} sc-main items (stream + GSI1), one request at a time, each method on a fresh "
        f"engine, {report['rounds']} round(s); {report['machine']['cpus']} CPUs, {report['machine']['engine']}. "
        "Method: the docstring of bench/engine_writes_bench.py.",
        "",
        "| method | engine CPU ms/item | client CPU ms/item | items/s |",
        "|---|---|---|---|",
    ]
    for row in report["summary"]["rows"]:
        lines.append(f"| {METHODS[row['method']][0]} | {cell(row['engine_cpu_ms_per_item'], 2)} | "
                     f"{cell(row['client_cpu_ms_per_item'], 2)} | {cell(row['items_per_s'])} |")
    lines += ["", "| method | engine CPU/item vs BatchWriteItem | items/s vs BatchWriteItem |", "|---|---|---|"]
    for ratio in report["summary"]["ratios"]:
        lines.append(f"| {METHODS[ratio['method']][0]} | {cell(ratio['engine_cpu'], 2)}x | "
                     f"{cell(ratio['items_per_s'], 2)}x |")
    lines += ["", *common.verdict_lines(report["summary"]["verdicts"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_writes_bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3, --quick 1)")
    parser.add_argument("--items", type=int, default=2000,
                        help="legacy items to transform, a quarter accounts (default 2000)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    if args.items < 4:
        parser.error("--items must be at least 4")
    rounds = args.rounds or (1 if args.quick else 3)
    items = target_items(args.items // 4, args.items - args.items // 4)
    started = time.time()
    runs = []
    for number in range(rounds):
        order = list(METHODS) if number % 2 == 0 else list(reversed(METHODS))
        for method in order:
            run = {**measure(method, items), "round": number}
            runs.append(run)
            print(f"round {number + 1}: {method}: engine {run['engine_cpu_ms_per_item']:.2f} ms/item, "
                  f"{run['items_per_s']:.0f} items/s", flush=True)
    report = {"started_at": datetime.fromtimestamp(started, UTC).isoformat(), "rounds": rounds, "items": len(items),
              "machine": common.machine_info(), "runs": runs, "summary": summarise(runs, rounds),
              "runtime_s": time.time() - started}
    return common.publish(report, args.out_dir, "engine_writes-quick" if args.quick else "engine_writes", render)


if __name__ == "__main__":
    common.script_main(main)
