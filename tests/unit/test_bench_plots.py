"""bench/plots.py draws from the benchmarks' JSON, and only what a report holds."""

from __future__ import annotations

from bench import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def stat(value: float) -> dict[str, float]:
    return {"median": value, "min": value, "max": value, "n": 1}


def mirror_report() -> dict:
    rows = [
        {"scenario": "ceiling", "handler": "ceiling", "records_per_s": stat(600.0)},
        {"scenario": "drain", "handler": "dynashift", "records_per_s": stat(540.0)},
        {"scenario": "drain", "handler": "naive", "records_per_s": stat(300.0)},
        {"scenario": "lag", "handler": "dynashift", "offered_rate": stat(300.0),
         "p50_ms": stat(100.0), "p95_ms": stat(500.0), "p99_ms": stat(900.0), "max_ms": stat(1200.0)},
    ]
    return {"summary": {"rows": rows}}


def test_each_benchmark_with_data_gets_a_png(tmp_path):
    reports = {
        "mirror": mirror_report(),
        "backfill": {"runs": [{"scenario": "put", "items": 10, "rss_samples": [[1.0, 90.0], [2.0, 95.5]]}]},
        "cutover": {"config": {"rate": 50.0}, "runs": [
            {"op": "cutover", "cycle": 0, "outcome": "switched", "freeze_window_s": 2.1},
            {"op": "rollback", "cycle": 0, "outcome": "refused", "freeze_window_s": None},
        ]},
    }
    for name, report in reports.items():
        drawn = plots.draw(name, f"{name}-x", report, tmp_path)
        assert drawn is not None, name
        path, caption = drawn
        assert path == tmp_path / f"{name}-x.png" and caption
        assert path.read_bytes()[:8] == PNG_MAGIC


def test_nothing_is_drawn_without_data_or_for_a_benchmark_without_a_plot(tmp_path):
    assert plots.draw("mirror", "mirror", {"summary": {}}, tmp_path) is None
    assert plots.draw("backfill", "backfill", {"runs": [{"scenario": "put"}]}, tmp_path) is None
    assert plots.draw("cutover", "cutover", None, tmp_path) is None
    assert plots.draw("artifact", "artifact", {"rows": []}, tmp_path) is None
    assert list(tmp_path.iterdir()) == []
