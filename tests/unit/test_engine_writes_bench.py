"""bench/engine_writes_bench.py's pure parts: the same-round ratios and the report (no engine)."""

from __future__ import annotations

from bench import engine_writes_bench as bench


def run(method: str, round_: int, engine_ms: float, per_s: float) -> dict[str, float | int | str]:
    return {"method": method, "round": round_, "items": 100, "engine_cpu_ms_per_item": engine_ms,
            "client_cpu_ms_per_item": 0.3, "items_per_s": per_s}


def test_each_method_is_paired_with_batch_write_of_its_own_round():
    runs = []
    for number, factor in ((0, 1.0), (1, 2.0)):  # round 2's engine is twice as slow for every method
        runs += [run("batch_write", number, 3.0 * factor, 500 / factor), run("insert", number, 6.0 * factor,
                 250 / factor), run("put_conditional", number, 7.5 * factor, 100 / factor),
                 run("put", number, 6.0 * factor, 110 / factor)]
    summary = bench.summarise(runs, 2)
    insert = next(r for r in summary["ratios"] if r["method"] == "insert")
    # THEN the ratio is the same in both rounds, though the absolute figures doubled
    assert insert["engine_cpu"] == {"median": 2.0, "min": 2.0, "max": 2.0, "n": 2}
    assert insert["items_per_s"]["median"] == 0.5
    (verdict,) = summary["verdicts"]
    assert verdict["informational"] and not verdict["pass"] and "2.00x" in verdict["measured"]
    report = {"items": 100, "rounds": 2, "machine": {"cpus": 2, "engine": "DynamoDB Local"}, "summary": summary}
    text = bench.render(report)
    assert "| BatchExecuteStatement INSERT (25, create-only) | 2.00x | 0.50x |" in text
