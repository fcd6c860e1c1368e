"""The backfill's precondition: since when the mirror covers a table (no AWS)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from shared.core.errors import UsageError
from shared.core.settings import load_settings
from shared.streams.coverage import Coverage, from_mappings, mirror_coverage, stream_created_at, wait_for_coverage

LABEL = "2026-12-01T10:00:00.000"
LABEL_AT = datetime(2026, 12, 1, 10, tzinfo=UTC).timestamp()


def mapping(state: str = "Enabled", start: str = "TRIM_HORIZON", modified: float = LABEL_AT + 3600) -> dict:
    return {"UUID": "u-1", "State": state, "StartingPosition": start,
            "LastModified": datetime.fromtimestamp(modified, tz=UTC)}


def test_an_enabled_mapping_from_trim_horizon_covers_since_it_was_last_modified():
    coverage = from_mappings([mapping()], LABEL)
    assert coverage.since == LABEL_AT + 3600 and "Enabled from TRIM_HORIZON" in coverage.detail


def test_a_mapping_older_than_its_stream_covers_since_the_stream_was_created():
    # GIVEN a stream re-enabled (a new label) after the mapping was last modified
    assert from_mappings([mapping(modified=LABEL_AT - 60)], LABEL).since == LABEL_AT


@pytest.mark.parametrize(("state", "start", "why"), [
    ("Creating", "TRIM_HORIZON", "is Creating"),
    ("Enabling", "TRIM_HORIZON", "is Enabling"),
    ("Disabled", "TRIM_HORIZON", "is Disabled"),
    ("Enabled", "LATEST", "starts at LATEST"),
])
def test_a_mapping_that_is_not_yet_running_or_starts_at_latest_does_not_count(state, start, why):
    coverage = from_mappings([mapping(state=state, start=start)], LABEL)
    assert coverage.since is None and why in coverage.detail


def test_no_mapping_is_no_coverage():
    assert from_mappings([], LABEL) == Coverage(None, "no event source mapping of the mirror function on this stream")


def test_stream_labels_are_read_as_utc():
    assert stream_created_at(LABEL) == LABEL_AT
    assert stream_created_at(None) is None and stream_created_at("not a time") is None


class Control:
    """DescribeTable and the MIRROR item, as the control table and the legacy table answer them."""

    def __init__(self, started_at: float | None = None) -> None:
        self.started_at = started_at

    def get_item(self, **_: object) -> dict:
        return {"Item": {"started_at": {"N": str(self.started_at)}}} if self.started_at else {}

    def describe_table(self, TableName: str) -> dict:  # noqa: N803
        return {"Table": {"LatestStreamArn": f"arn:stream/{TableName}", "LatestStreamLabel": LABEL}}


class Lambdas:
    def __init__(self, *mappings: dict) -> None:
        self.mappings = list(mappings)
        self.calls: list[dict] = []

    def list_event_source_mappings(self, **kwargs: object) -> dict:
        self.calls.append(kwargs)
        return {"EventSourceMappings": self.mappings}


def test_a_mirrors_own_record_is_enough_and_the_mapping_is_asked_only_without_it():
    settings = load_settings(mirror_function="dynashift-mirror")
    lambdas = Lambdas(mapping())
    assert mirror_coverage(settings, "sc-accounts", dynamodb=Control(123.0), lambdas=lambdas).since == 123.0
    assert lambdas.calls == []
    # WHEN no mirror recorded a start (a quiet table) / THEN the mapping of the configured function decides
    covered = mirror_coverage(settings, "sc-accounts", dynamodb=Control(), lambdas=lambdas)
    assert covered.since == LABEL_AT + 3600
    assert lambdas.calls == [{"EventSourceArn": "arn:stream/sc-accounts", "FunctionName": "dynashift-mirror"}]


def test_without_the_mirror_function_setting_it_says_how_to_name_it():
    coverage = mirror_coverage(load_settings(), "sc-accounts", dynamodb=Control(), lambdas=Lambdas(mapping()))
    assert coverage.since is None and "DYNASHIFT_MIRROR_FUNCTION" in coverage.detail


async def no_sleep(_: float) -> None:
    return None


def test_the_wait_reports_progress_once_per_reason_and_refuses_after_its_bound():
    answers = iter([Coverage(None, "mapping u-1 is Creating")] * 3 + [Coverage(None, "mapping u-1 is Enabling")] * 3)
    clock = iter([0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    printed: list[str] = []
    with pytest.raises(UsageError, match="does not cover sc-accounts .mapping u-1 is Enabling. after waiting 5s"):
        asyncio.run(wait_for_coverage(load_settings(), "sc-accounts", 5, progress=printed.append,
                                      check=lambda: next(answers), clock=lambda: next(clock), sleep=no_sleep))
    assert len(printed) == 2 and "Creating" in printed[0] and "Enabling" in printed[1]


def test_the_wait_returns_as_soon_as_the_mirror_covers_the_table():
    answers = iter([Coverage(None, "mapping u-1 is Creating"), Coverage(42.0, "recorded by the mirror")])
    assert asyncio.run(wait_for_coverage(load_settings(), "sc-accounts", 60, check=lambda: next(answers),
                                         sleep=no_sleep)) == 42.0
