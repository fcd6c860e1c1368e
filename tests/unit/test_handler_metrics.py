"""What the two stream handlers publish per batch: one log line and EMF metrics.

Both handlers are `shared.streams.engine.EngineSlot` around their engine; the
alarms of template.yaml read these names (tests/unit/test_template.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.streams.engine import StreamEngine
from shared.streams.lambda_event import LocalContext
from shared.streams.mirror import BatchStats
from shared.streams.reverse_mirror import ReverseStats


class CountingEngine(StreamEngine):
    """Answers every batch with no failure, and the counts it was given."""

    last_stats: Any = None  # a plain attribute here, not the base's per-thread one

    def __init__(self, stats: Any) -> None:
        self.last_stats = stats
        self.events: list[dict[str, Any]] = []

    def handle(self, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        self.events.append(event)
        return {"batchItemFailures": []}

    def close(self) -> None:
        pass


def emf_metrics(output: str) -> dict[str, float]:
    """Metric name -> value, from the EMF blobs powertools printed."""
    values: dict[str, float] = {}
    for line in output.splitlines():
        if line.startswith("{") and "_aws" in line:
            blob = json.loads(line)
            for metric in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                value = blob[metric["Name"]]
                values[metric["Name"]] = value[0] if isinstance(value, list) else value
    return values


@pytest.mark.parametrize(
    ("module", "stats", "expected"),
    [
        ("mirror", BatchStats(records=5, quarantined=1, failed_records=2, lag_ms=[40.0, 75.5]),
         {"RecordsApplied": 3, "RecordsQuarantined": 1, "RecordsRetried": 2, "LagMs": 75.5}),
        ("reverse_mirror", ReverseStats(records=6, mode_skipped=2, failed_records=1, quarantined=1),
         {"ReverseRecordsApplied": 3, "ReverseRecordsSkippedByMode": 2, "ReverseRecordsRetried": 1,
          "ReverseQuarantined": 1}),
    ],
    ids=["forward", "reverse"],
)
def test_a_handler_publishes_its_engines_counts_as_emf(module: str, stats: Any, expected: dict[str, float],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the handler with an engine that counted a batch, and EMF on
    import importlib

    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    handler = importlib.import_module(f"handlers.{module}")
    engine = CountingEngine(stats)
    handler.use_engine(engine)
    try:
        # WHEN Lambda calls it with a batch
        response = handler.lambda_handler({"Records": []}, LocalContext())
    finally:
        handler.use_engine(None)
    # THEN the engine got the event, the response is its partial batch response,
    # and the batch's counts were published under the names the alarms read
    assert engine.events == [{"Records": []}] and response == {"batchItemFailures": []}
    published = emf_metrics(capsys.readouterr().out)
    assert {name: published.get(name) for name in expected} == expected
