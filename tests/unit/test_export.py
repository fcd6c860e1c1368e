"""Reading a DynamoDB PITR export (local folder and S3), resuming by line, and the export-time guard."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import Binary

from backfill.export import (
    ExportLocation,
    check_export_time,
    iter_file,
    open_export,
    parse_source,
)
from shared.core.aws import s3_client_kwargs
from shared.core.errors import UsageError
from shared.core.settings import Settings, load_settings
from tests.export_fixture import upload_export, write_export

EXPORT_TIME = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def every_type_item(n: int) -> dict[str, Any]:
    return {
        "pk": f"ACCOUNT#{n}",
        "sk": "PROFILE",
        "n_int": Decimal(n),
        "n_frac": Decimal("-12345678901234567890.123456789"),
        "blob": bytes([0, 255, n % 256, 10, 13]),
        "flag": n % 2 == 0,
        "nothing": None,
        "tags": {"a", "ünïcödé", "🙂"},
        "scores": {Decimal(1), Decimal("2.5")},
        "blobs": {b"\x00", b"\xff\x10"},
        "nested": {"list": [Decimal(1), "two", b"\x03", [{"deep": {"x": None}}]], "empty": {}, "none": []},
        "empty_map": {},
        "empty_list": [],
        "name": 'Zoë ✓ 名前\nnewline "quoted"',
    }


def normalize(item: dict[str, Any]) -> Any:
    """Binary wrappers compare equal to bytes one way only; make both sides plain bytes."""
    if isinstance(item, Binary):
        return bytes(item.value)
    if isinstance(item, dict):
        return {k: normalize(v) for k, v in item.items()}
    if isinstance(item, list):
        return [normalize(v) for v in item]
    if isinstance(item, set):
        return {normalize(v) for v in item}
    return item


def settings() -> Settings:
    return load_settings()


async def read_all(location: ExportLocation, key: str, **kw: Any) -> list[tuple[int, list[dict[str, Any]]]]:
    return [(line, items) async for line, items in iter_file(location, key, settings(), **kw)]


async def read_export(location: ExportLocation) -> list[dict[str, Any]]:
    info = await open_export(location, settings())
    items: list[dict[str, Any]] = []
    for data_file in info.files:
        for _, chunk in await read_all(location, data_file.key):
            items.extend(chunk)
    return items


def by_pk(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {item["pk"]: normalize(item) for item in items}


def one_line(exc: pytest.ExceptionInfo[UsageError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- local round trip
def test_local_round_trip_keeps_every_dynamodb_type(tmp_path: Path) -> None:
    # GIVEN an export of items using every DynamoDB type, split over 3 files
    items = [every_type_item(n) for n in range(7)]
    export_dir = write_export(tmp_path, items, export_time=EXPORT_TIME, files=3)

    # WHEN it is opened from its parent folder and every file is read
    location = parse_source(str(tmp_path))
    info = asyncio.run(open_export(location, settings()))
    read = asyncio.run(read_export(location))

    # THEN the manifests are understood and every item comes back identical
    assert location == ExportLocation(kind="local", path=str(export_dir.resolve()))
    assert info.export_time == EXPORT_TIME
    assert info.table_name == "sc-accounts"
    assert info.table_arn == "arn:aws:dynamodb:us-east-1:000000000000:table/sc-accounts"
    assert info.item_count == 7
    assert [f.item_count for f in info.files] == [3, 2, 2]
    assert all(f.key.startswith("data/") and f.key.endswith(".json.gz") for f in info.files)
    assert by_pk(read) == by_pk(items)
    assert isinstance(read[0]["blob"], (bytes, Binary)) and normalize(read[0]["blob"]) == bytes([0, 255, 0, 10, 13])
    assert read[0]["empty_map"] == {} and read[0]["nested"]["empty"] == {}


def test_the_export_folder_itself_is_accepted_too(tmp_path: Path) -> None:
    # GIVEN an export
    export_dir = write_export(tmp_path, [every_type_item(1)], export_time=EXPORT_TIME, files=1)

    # WHEN it is named by its own AWSDynamoDB/<id> folder, or by the AWSDynamoDB folder
    direct = parse_source(str(export_dir))
    via_awsdynamodb = parse_source(str(tmp_path / "AWSDynamoDB"))

    # THEN both point at the same export
    assert direct == via_awsdynamodb == ExportLocation(kind="local", path=str(export_dir.resolve()))


def test_missing_summary_means_unknown_export_time(tmp_path: Path) -> None:
    # GIVEN an export copied without its manifest-summary.json
    write_export(tmp_path, [every_type_item(n) for n in range(3)], export_time=EXPORT_TIME, summary=False)

    # WHEN it is opened
    info = asyncio.run(open_export(parse_source(str(tmp_path)), settings()))

    # THEN the files are still listed, the time is unknown and the count comes from the files
    assert info.export_time is None and info.table_name is None
    assert info.item_count == 3 and len(info.files) == 2


# ----------------------------------------------------------- chunking and resume
def test_chunks_report_lines_consumed(tmp_path: Path) -> None:
    # GIVEN one data file of 7 items
    write_export(tmp_path, [every_type_item(n) for n in range(7)], export_time=EXPORT_TIME, files=1)
    location = parse_source(str(tmp_path))
    key = asyncio.run(open_export(location, settings())).files[0].key

    # WHEN it is read 3 items at a time
    chunks = asyncio.run(read_all(location, key, chunk=3))

    # THEN chunks are 3, 3, 1 and each carries the number of lines consumed so far
    assert [(line, len(items)) for line, items in chunks] == [(3, 3), (6, 3), (7, 1)]
    assert [i["pk"] for _, items in chunks for i in items] == [f"ACCOUNT#{n}" for n in range(7)]


def test_resume_skips_exactly_start_line_lines(tmp_path: Path) -> None:
    # GIVEN a data file of 10 items, and a reader that checkpointed after its second chunk of 3
    write_export(tmp_path, [every_type_item(n) for n in range(10)], export_time=EXPORT_TIME, files=1)
    location = parse_source(str(tmp_path))
    key = asyncio.run(open_export(location, settings())).files[0].key
    checkpoint = asyncio.run(read_all(location, key, chunk=3))[1][0]

    # WHEN it resumes from the checkpoint
    resumed = asyncio.run(read_all(location, key, start_line=checkpoint, chunk=3))

    # THEN it gets exactly the items after the checkpoint, with line numbers that continue
    assert checkpoint == 6
    assert [i["pk"] for _, items in resumed for i in items] == [f"ACCOUNT#{n}" for n in range(6, 10)]
    assert [line for line, _ in resumed] == [9, 10]
    # and resuming at the very end yields nothing
    assert asyncio.run(read_all(location, key, start_line=10)) == []


def test_blank_lines_count_as_lines_but_carry_no_item(tmp_path: Path) -> None:
    # GIVEN a data file with a blank line between two items
    export_dir = write_export(tmp_path, [], export_time=EXPORT_TIME, files=1)
    key = asyncio.run(open_export(parse_source(str(export_dir)), settings())).files[0].key
    lines = [json.dumps({"Item": {"pk": {"S": "a"}}}), "", json.dumps({"Item": {"pk": {"S": "b"}}})]
    (export_dir / key).write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))

    # WHEN it is read, and read again from line 2
    location = parse_source(str(export_dir))
    whole = asyncio.run(read_all(location, key))
    after_two = asyncio.run(read_all(location, key, start_line=2))

    # THEN line numbers are physical lines
    assert whole == [(3, [{"pk": "a"}, {"pk": "b"}])]
    assert after_two == [(3, [{"pk": "b"}])]


def test_checkpoint_beyond_the_end_of_the_file_is_refused(tmp_path: Path) -> None:
    # GIVEN a file of 2 items and a checkpoint claiming 5 lines were applied
    write_export(tmp_path, [every_type_item(n) for n in range(2)], export_time=EXPORT_TIME, files=1)
    location = parse_source(str(tmp_path))
    key = asyncio.run(open_export(location, settings())).files[0].key

    # WHEN it resumes THEN the mismatch is reported, not silently treated as done
    with pytest.raises(UsageError, match="has 2 lines but the checkpoint is at line 5") as exc:
        asyncio.run(read_all(location, key, start_line=5))
    one_line(exc)


# --------------------------------------------------------------- bad input
def test_missing_folder_and_bad_sources_are_usage_errors(tmp_path: Path) -> None:
    # GIVEN sources that are not exports WHEN parsed THEN each is a one-line UsageError
    cases = {
        str(tmp_path / "nope"): "does not exist",
        "": "empty",
        "gs://bucket/prefix": "neither a local folder nor s3://",
        "s3:///prefix": "names no bucket",
        str(tmp_path): "no DynamoDB export in",
    }
    for text, expected in cases.items():
        with pytest.raises(UsageError, match=expected) as exc:
            parse_source(text)
        one_line(exc)


def test_a_parent_with_two_exports_is_ambiguous(tmp_path: Path) -> None:
    # GIVEN two exports below one prefix
    first = write_export(tmp_path, [], export_time=EXPORT_TIME)
    second = write_export(tmp_path, [], export_time=EXPORT_TIME + 1)

    # WHEN the parent is named THEN both are listed and the user is asked to choose
    with pytest.raises(UsageError, match="holds 2 exports") as exc:
        parse_source(str(tmp_path))
    assert first.name in one_line(exc) and second.name in str(exc.value)


def test_s3_uri_parses_bucket_and_prefix() -> None:
    # GIVEN/WHEN S3 URIs with and without a prefix THEN bucket and prefix are split, slashes trimmed
    assert parse_source("s3://bkt/a/b/") == ExportLocation(kind="s3", bucket="bkt", prefix="a/b")
    assert parse_source("s3://bkt") == ExportLocation(kind="s3", bucket="bkt", prefix="")


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (None, "manifest-files.json is missing"),
        ("{not json\n", "manifest-files.json line 1 is not JSON"),
        ('{"itemCount": 1}\n', "line 1 has no dataFileS3Key"),
        ('{"itemCount": -1, "dataFileS3Key": "AWSDynamoDB/x/data/a.json.gz"}\n', "is not a count"),
        ('{"itemCount": 1, "dataFileS3Key": "AWSDynamoDB/x/../../etc/passwd"}\n', "outside the export folder"),
    ],
)
def test_malformed_files_manifest_is_a_usage_error(tmp_path: Path, manifest: str | None, expected: str) -> None:
    # GIVEN an export whose manifest-files.json is missing or malformed
    export_dir = write_export(tmp_path, [every_type_item(1)], export_time=EXPORT_TIME, files=1)
    target = export_dir / "manifest-files.json"
    if manifest is None:
        target.unlink()
    else:
        target.write_text(manifest)

    # WHEN it is opened THEN one line names the file and the problem
    with pytest.raises(UsageError, match=expected) as exc:
        asyncio.run(open_export(parse_source(str(export_dir)), settings()))
    assert "unreadable export" in one_line(exc) and "manifest-files.json" in str(exc.value)


@pytest.mark.parametrize(
    ("summary", "expected"),
    [
        ("[1, 2", "manifest-summary.json is not JSON"),
        ('{"exportTime": "yesterday"}', "exportTime 'yesterday' is not an ISO 8601 time"),
        ('{"outputFormat": "ION"}', "outputFormat ION"),
        ('{"exportType": "INCREMENTAL_EXPORT"}', "exportType INCREMENTAL_EXPORT"),
    ],
)
def test_malformed_or_unsupported_summary_is_a_usage_error(tmp_path: Path, summary: str, expected: str) -> None:
    # GIVEN an export whose manifest-summary.json is malformed or describes an export we can't read
    export_dir = write_export(tmp_path, [every_type_item(1)], export_time=EXPORT_TIME, files=1)
    (export_dir / "manifest-summary.json").write_text(summary)

    # WHEN it is opened THEN one line names the file and the problem
    with pytest.raises(UsageError, match=expected) as exc:
        asyncio.run(open_export(parse_source(str(export_dir)), settings()))
    assert "manifest-summary.json" in one_line(exc)


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("{oops", "line 2: not JSON"),
        ('{"Keys": {"pk": {"S": "x"}}}', 'line 2: no {"Item": {...}} object'),
        ('{"Item": {"n": {"N": "twelve"}}}', "line 2: bad attribute value"),
        ('{"Item": {"b": {"B": "!!!not base64"}}}', "line 2: bad attribute value"),
        ('{"Item": {"x": {"WAT": 1}}}', "line 2: bad attribute value"),
    ],
)
def test_bad_data_line_names_file_and_line(tmp_path: Path, bad_line: str, expected: str) -> None:
    # GIVEN a data file whose second line is bad
    export_dir = write_export(tmp_path, [], export_time=EXPORT_TIME, files=1)
    location = parse_source(str(export_dir))
    key = asyncio.run(open_export(location, settings())).files[0].key
    good = json.dumps({"Item": {"pk": {"S": "ok"}}})
    (export_dir / key).write_bytes(gzip.compress(f"{good}\n{bad_line}\n".encode()))

    # WHEN it is read THEN the error names the file and the line, on one line
    with pytest.raises(UsageError, match=expected) as exc:
        asyncio.run(read_all(location, key))
    assert key in one_line(exc)


def test_truncated_or_missing_data_file_is_a_usage_error(tmp_path: Path) -> None:
    # GIVEN an export whose first data file is cut in half and whose second one is gone
    export_dir = write_export(tmp_path, [every_type_item(n) for n in range(40)], export_time=EXPORT_TIME, files=2)
    location = parse_source(str(export_dir))
    first, second = (f.key for f in asyncio.run(open_export(location, settings())).files)
    data = (export_dir / first).read_bytes()
    (export_dir / first).write_bytes(data[: len(data) // 2])
    (export_dir / second).unlink()

    # WHEN they are read THEN each fails with a one-line UsageError naming the file
    for key, expected in ((first, "unreadable export"), (second, "is missing")):
        with pytest.raises(UsageError, match=expected) as exc:
            asyncio.run(read_all(location, key))
        assert key in one_line(exc)


# -------------------------------------------------------------------------- S3
@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    # a DynamoDB endpoint must not leak into the S3 client
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9")
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


def test_s3_client_kwargs_use_the_s3_endpoint_not_dynamodbs(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a DynamoDB endpoint and an S3 endpoint
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:8000")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")

    # WHEN S3 client kwargs are built THEN the S3 endpoint wins, with path-style addressing
    kwargs = s3_client_kwargs(settings())
    assert kwargs["endpoint_url"] == "http://127.0.0.1:9000"
    assert kwargs["config"].s3 == {"addressing_style": "path"}

    # AND with no S3-specific variable there is no endpoint at all (the real regional S3)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    assert "endpoint_url" not in s3_client_kwargs(settings())


def test_s3_round_trip_streams_every_type(tmp_path: Path, s3: Any) -> None:
    # GIVEN an export uploaded to S3 under a prefix, as DynamoDB lays it out
    items = [every_type_item(n) for n in range(25)]
    write_export(tmp_path, items, export_time=EXPORT_TIME, files=3)
    s3.create_bucket(Bucket="exports-rt")
    upload_export(s3, "exports-rt", "team/exports", tmp_path)

    # WHEN it is named by its parent prefix and read in chunks of 4, resuming one file half way
    location = parse_source("s3://exports-rt/team/exports")
    info = asyncio.run(open_export(location, settings()))
    read: list[dict[str, Any]] = []
    for data_file in info.files:
        chunks = asyncio.run(read_all(location, data_file.key, chunk=4))
        read.extend(i for _, chunk in chunks for i in chunk)
    first = info.files[0]
    resumed = asyncio.run(read_all(location, first.key, start_line=4, chunk=4))

    # THEN it reads the same as locally: manifests, every item, and the resume
    assert info.export_time == EXPORT_TIME and info.table_name == "sc-accounts" and info.item_count == 25
    assert info.export_dir.startswith("AWSDynamoDB/") and all(f.key.startswith(info.export_dir) for f in info.files)
    assert by_pk(read) == by_pk(items)
    assert sum(len(c) for _, c in resumed) == (first.item_count or 0) - 4


def test_s3_small_decompression_steps_and_concatenated_members(
    tmp_path: Path, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a data file made of two gzip members (legal gzip), read with a tiny bound on each inflate step
    from backfill import export

    monkeypatch.setattr(export, "_MAX_OUT", 7)
    export_dir = write_export(tmp_path, [], export_time=EXPORT_TIME, files=1)
    data_file = next((export_dir / "data").iterdir())
    lines = [json.dumps({"Item": {"pk": {"S": f"k{n}"}, "pad": {"S": "x" * 300}}}) + "\n" for n in range(6)]
    data_file.write_bytes(gzip.compress("".join(lines[:4]).encode()) + gzip.compress("".join(lines[4:]).encode()))
    s3.create_bucket(Bucket="exports-steps")
    upload_export(s3, "exports-steps", "", tmp_path)
    location = parse_source(f"s3://exports-steps/AWSDynamoDB/{export_dir.name}")

    # WHEN it is read
    chunks = asyncio.run(read_all(location, f"data/{data_file.name}"))

    # THEN every byte of both members arrives, in order
    assert [(line, [i["pk"] for i in items]) for line, items in chunks] == [(6, [f"k{n}" for n in range(6)])]


def test_s3_export_folder_prefix_and_missing_export(tmp_path: Path, s3: Any) -> None:
    # GIVEN an export uploaded at the bucket root
    export_dir = write_export(tmp_path, [every_type_item(1)], export_time=EXPORT_TIME, files=1)
    s3.create_bucket(Bucket="exports-root")
    upload_export(s3, "exports-root", "", tmp_path)

    # WHEN it is named by its own folder THEN keys are relative to that folder
    location = parse_source(f"s3://exports-root/AWSDynamoDB/{export_dir.name}")
    assert [normalize(i) for i in asyncio.run(read_export(location))] == [normalize(every_type_item(1))]

    # AND a prefix with no export, or a missing bucket, is a one-line UsageError
    for source, expected in (
        ("s3://exports-root/elsewhere", "no manifest-files.json"),
        ("s3://no-such-bucket-here/x", "no such bucket"),
    ):
        with pytest.raises(UsageError, match=expected) as exc:
            asyncio.run(open_export(parse_source(source), settings()))
        one_line(exc)


def test_s3_truncated_data_file_is_a_usage_error(tmp_path: Path, s3: Any) -> None:
    # GIVEN an export in S3 whose data file was cut short
    export_dir = write_export(tmp_path, [every_type_item(n) for n in range(50)], export_time=EXPORT_TIME, files=1)
    data_file = next((export_dir / "data").iterdir())
    data_file.write_bytes(data_file.read_bytes()[:-200])
    s3.create_bucket(Bucket="exports-cut")
    upload_export(s3, "exports-cut", "p", tmp_path)
    location = parse_source("s3://exports-cut/p")
    key = asyncio.run(open_export(location, settings())).files[0].key

    # WHEN it is read THEN the truncation is detected rather than silently ending early
    with pytest.raises(UsageError, match="truncated|not valid gzip") as exc:
        asyncio.run(read_all(location, key))
    one_line(exc)


# --------------------------------------------------------------- export time guard
@pytest.mark.parametrize(
    ("export_time", "mirror_started", "expected"),
    [
        (EXPORT_TIME, None, "the mirror has never run"),
        (None, EXPORT_TIME, "point in time is unknown"),
        (EXPORT_TIME, EXPORT_TIME + 5, "not safely after the mirror's start"),  # export before the mirror
        (EXPORT_TIME, EXPORT_TIME - 30, "not safely after the mirror's start"),  # inside the fuzz window
        (EXPORT_TIME, EXPORT_TIME - 59.9, "not safely after the mirror's start"),  # just inside
    ],
)
def test_check_export_time_refuses_unsafe_exports(
    export_time: float | None, mirror_started: float | None, expected: str
) -> None:
    # GIVEN an export time and a mirror start WHEN checked THEN it is refused with the reason
    with pytest.raises(UsageError, match=expected) as exc:
        check_export_time(export_time, mirror_started)
    one_line(exc)


def test_check_export_time_explains_the_window() -> None:
    # GIVEN an export 30 s after the mirror started WHEN checked THEN the message names the unsafe window
    with pytest.raises(UsageError) as exc:
        check_export_time(EXPORT_TIME, EXPORT_TIME - 30)
    assert str(exc.value) == (
        "export at 2026-01-01T00:00:00Z is not safely after the mirror's start at 2025-12-31T23:59:30Z: "
        "its point in time is fuzzy by about a minute, so writes between 2025-12-31T23:59:00Z and "
        "2025-12-31T23:59:30Z could be missing from both; take a new export at least 60 s after the mirror started"
    )


def test_check_export_time_accepts_an_export_well_after_the_mirror() -> None:
    # GIVEN exports at or beyond a minute after the mirror started WHEN checked THEN they pass
    check_export_time(EXPORT_TIME, EXPORT_TIME - 60)
    check_export_time(EXPORT_TIME, EXPORT_TIME - 3600)
    check_export_time(EXPORT_TIME, EXPORT_TIME - 10, fuzz_s=5)
