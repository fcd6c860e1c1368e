"""Reading a DynamoDB point-in-time export (full export, DYNAMODB_JSON) as a backfill source.

Layout, as DynamoDB writes it under the export prefix the caller chose::

    <export-prefix>/AWSDynamoDB/<exportId>/manifest-summary.json   one JSON object
    <export-prefix>/AWSDynamoDB/<exportId>/manifest-files.json     JSON Lines, one object per data file
    <export-prefix>/AWSDynamoDB/<exportId>/data/<name>.json.gz     gzip, one {"Item": <DynamoDB JSON>} per line
    (plus *.checksum files and an empty `_started` marker, which are not read)

The summary holds `exportTime` (ISO 8601), `tableArn`, `itemCount`,
`outputFormat` and `exportType`; each manifest-files line holds `itemCount`,
`md5Checksum`, `etag` and `dataFileS3Key`. That key is the *full* S3 key at
the time of the export (`<export-prefix>/AWSDynamoDB/<id>/data/…`), so it is
reduced to the part after `AWSDynamoDB/<id>/`: an export that was copied to
another bucket, prefix or local folder still reads.

Invariants:

* `DataFile.key` is relative to the `ExportLocation` as `parse_source`
  returned it, so a unit's file name stored in the control table means the
  same thing to every worker process on every host (they all receive the
  same location).
* `iter_file` yields `(lines_consumed, items)`: `lines_consumed` counts
  physical lines of the decompressed file, blank ones included. Resuming with
  `start_line=lines_consumed` skips exactly what was yielded before. A gzip
  stream can't seek, so a resume decompresses and discards the skipped part.
* Memory is bounded by one read block, one decompressed block and one chunk
  of items, whatever the size of the file.
* The export's point in time is fuzzy by about a minute. `check_export_time`
  refuses an export unless the mirror was running before the earliest moment
  that point could be, since a write in between would be in neither the
  export nor the mirror.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from shared.core import aws
from shared.core.codec import from_dynamodb_json
from shared.core.errors import TransientError, UsageError
from shared.core.settings import Settings

SUMMARY = "manifest-summary.json"
FILES = "manifest-files.json"
EXPORT_DIR = "AWSDynamoDB"

_READ_BLOCK = 1 << 16  # compressed bytes per read
_MAX_OUT = 1 << 20  # decompressed bytes per step, so a "zip bomb" block can't balloon memory
_IN_EXPORT_DIR = re.compile(r"(?:^|/)AWSDynamoDB/[^/]+/(.+)$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class ExportLocation:
    """Where an export lives: a local export folder, or an S3 prefix (export folder or a parent)."""

    kind: str  # "local" or "s3"
    path: str | None = None  # local: absolute path of the AWSDynamoDB/<id> folder
    bucket: str | None = None  # s3
    prefix: str = ""  # s3: no leading or trailing slash; may be ""

    @property
    def is_s3(self) -> bool:
        return self.kind == "s3"

    def s3_key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def describe(self, relative: str = "") -> str:
        """Human name of the location, or of a file relative to it (for messages)."""
        if self.is_s3:
            return f"s3://{self.bucket}/{self.s3_key(relative)}".rstrip("/")
        return str(Path(self.path or "") / relative) if relative else str(self.path)

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class DataFile:
    key: str  # relative to the ExportLocation (what iter_file takes)
    item_count: int | None = None


@dataclass(frozen=True)
class ExportInfo:
    location: ExportLocation
    export_dir: str  # relative to the location: "" or "AWSDynamoDB/<id>"
    export_time: float | None  # epoch seconds; None when manifest-summary.json is absent
    table_arn: str | None
    table_name: str | None
    item_count: int | None
    files: list[DataFile] = field(default_factory=list)
    export_arn: str | None = None


# --------------------------------------------------------------------- locating
def parse_source(text: str) -> ExportLocation:
    """`PATH` (the AWSDynamoDB/<id> folder, or a parent holding exactly one export) or `s3://bucket/prefix`."""
    text = (text or "").strip()
    if not text:
        raise UsageError("export source is empty: give a local folder or s3://bucket/prefix")
    if text.lower().startswith("s3://"):
        parsed = urlparse(text)
        if not parsed.netloc:
            raise UsageError(f"export source {text!r} names no bucket: use s3://bucket/prefix")
        return ExportLocation(kind="s3", bucket=parsed.netloc, prefix=parsed.path.strip("/"))
    if _SCHEME.match(text):
        raise UsageError(f"export source {text!r} is neither a local folder nor s3://bucket/prefix")
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise UsageError(f"export folder {folder} does not exist or is not a folder")
    if _looks_like_export(folder):
        return ExportLocation(kind="local", path=str(folder.resolve()))
    found = [d for d in _candidate_dirs(folder) if _looks_like_export(d)]
    if len(found) == 1:
        return ExportLocation(kind="local", path=str(found[0].resolve()))
    if not found:
        raise UsageError(
            f"no DynamoDB export in {folder}: expected {FILES} there or in {EXPORT_DIR}/<exportId>/ below it"
        )
    names = ", ".join(sorted(str(d.relative_to(folder)) for d in found))
    raise UsageError(f"{folder} holds {len(found)} exports ({names}): name one of them")


def _looks_like_export(folder: Path) -> bool:
    return (folder / FILES).is_file() or (folder / SUMMARY).is_file()


def _candidate_dirs(folder: Path) -> list[Path]:
    parents = [folder / EXPORT_DIR] + ([folder] if folder.name == EXPORT_DIR else [])
    return [d for parent in parents if parent.is_dir() for d in sorted(parent.iterdir()) if d.is_dir()]


# --------------------------------------------------------------------------- S3
def _s3_client(settings: Settings) -> Any:
    from aiobotocore.session import get_session

    return get_session().create_client("s3", **aws.s3_client_kwargs(settings))


def _s3_failure(exc: BaseException, url: str) -> Exception:
    """Transient faults stay retryable; anything else means the export can't be read."""
    translated = aws.translate(exc, f"read {url}")
    if isinstance(translated, TransientError):
        return translated
    code = aws.error_code(exc)
    if code in ("NoSuchKey", "404", "NotFound"):
        problem = "no such object"
    elif code == "NoSuchBucket":
        problem = "no such bucket"
    elif code:
        problem = _one_line(f"{code}: {getattr(exc, 'response', {}).get('Error', {}).get('Message', '')}")
    else:
        problem = _one_line(str(exc) or type(exc).__name__)
    error = UsageError(f"unreadable export: {url}: {problem}")
    error.__cause__ = exc
    return error


async def _s3_get_text(client: Any, location: ExportLocation, relative: str) -> str | None:
    """The object's text, or None when it does not exist."""
    url = location.describe(relative)
    try:
        response = await client.get_object(Bucket=location.bucket, Key=location.s3_key(relative))
        async with response["Body"] as body:
            data = await body.read()
    except Exception as exc:
        if aws.error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise _s3_failure(exc, url) from exc
    return _decode(data, url)


async def _s3_export_dirs(client: Any, location: ExportLocation) -> list[str]:
    """Export folders (relative to the location) below an S3 prefix that is not one itself."""
    bases = [f"{EXPORT_DIR}/"] + ([""] if location.prefix.rsplit("/", 1)[-1] == EXPORT_DIR else [])
    root = location.s3_key("")  # "prefix/" or ""
    found: list[str] = []
    for base in bases:
        kwargs: dict[str, Any] = {"Bucket": location.bucket, "Prefix": root + base, "Delimiter": "/"}
        while True:
            try:
                page = await client.list_objects_v2(**kwargs)
            except Exception as exc:
                raise _s3_failure(exc, location.describe(base)) from exc
            found.extend(common["Prefix"][len(root) :].rstrip("/") for common in page.get("CommonPrefixes", []))
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
    exports = []
    for relative in found:
        try:
            await client.head_object(Bucket=location.bucket, Key=location.s3_key(f"{relative}/{FILES}"))
        except Exception as exc:
            if aws.error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                continue
            raise _s3_failure(exc, location.describe(f"{relative}/{FILES}")) from exc
        exports.append(relative)
    return exports


# ---------------------------------------------------------------------- manifests
async def open_export(location: ExportLocation, settings: Settings) -> ExportInfo:
    """Read the export's manifests: its point in time, table, item count and data files."""
    if location.is_s3:
        async with _s3_client(settings) as client:
            export_dir = ""
            files_text = await _s3_get_text(client, location, FILES)
            summary_text = await _s3_get_text(client, location, SUMMARY) if files_text is not None else None
            if files_text is None:
                dirs = await _s3_export_dirs(client, location)
                if not dirs:
                    raise UsageError(
                        f"unreadable export: no {FILES} at {location} nor in {EXPORT_DIR}/<exportId>/ below it"
                    )
                if len(dirs) > 1:
                    raise UsageError(f"{location} holds {len(dirs)} exports ({', '.join(dirs)}): name one of them")
                export_dir = dirs[0]
                files_text = await _s3_get_text(client, location, f"{export_dir}/{FILES}")
                summary_text = await _s3_get_text(client, location, f"{export_dir}/{SUMMARY}")
                if files_text is None:  # deleted between the listing and the read
                    raise UsageError(f"unreadable export: {location.describe(f'{export_dir}/{FILES}')} is missing")
    else:
        export_dir = ""
        folder = Path(location.path or "")
        files_text = _read_local(folder / FILES)
        summary_text = _read_local(folder / SUMMARY) if (folder / SUMMARY).exists() else None
    prefix = f"{export_dir}/" if export_dir else ""
    summary = _parse_summary(summary_text, location.describe(prefix + SUMMARY)) if summary_text is not None else {}
    files = _parse_files(files_text, location.describe(prefix + FILES), prefix)
    counts = [f.item_count for f in files]
    item_count = summary.get("itemCount")
    if item_count is None and None not in counts:
        item_count = sum(c or 0 for c in counts)
    table_arn = summary.get("tableArn")
    return ExportInfo(
        location=location,
        export_dir=export_dir,
        export_time=summary.get("exportTime"),
        table_arn=table_arn,
        table_name=table_arn.split(":table/", 1)[1].split("/", 1)[0] if table_arn and ":table/" in table_arn else None,
        item_count=item_count,
        files=files,
        export_arn=summary.get("exportArn"),
    )


def _read_local(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"unreadable export: {path} is missing") from None
    except OSError as exc:
        raise UsageError(f"unreadable export: {path}: {exc.strerror or exc}") from None
    return _decode(data, str(path))


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"unreadable export: {name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _parse_summary(text: str, name: str) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"unreadable export: {name} is not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(raw, dict):
        raise UsageError(f"unreadable export: {name} is not a JSON object")
    output_format = raw.get("outputFormat")
    if output_format not in (None, "DYNAMODB_JSON"):
        raise UsageError(f"unsupported export: {name} says outputFormat {output_format}; export as DYNAMODB_JSON")
    export_type = raw.get("exportType")
    if export_type not in (None, "FULL_EXPORT"):
        raise UsageError(f"unsupported export: {name} says exportType {export_type}; use a FULL_EXPORT")
    summary: dict[str, Any] = {
        "exportTime": _epoch(raw.get("exportTime"), name, "exportTime"),
        "tableArn": raw.get("tableArn") if isinstance(raw.get("tableArn"), str) else None,
        "exportArn": raw.get("exportArn") if isinstance(raw.get("exportArn"), str) else None,
        "itemCount": None,
    }
    if raw.get("itemCount") is not None:
        summary["itemCount"] = _count(raw["itemCount"], f"{name}: itemCount")
    return summary


def _epoch(value: Any, name: str, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:  # AWS writes "…Z"; a bare time is taken as UTC, never as local time
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp()
    raise UsageError(f"unreadable export: {name}: {what} {value!r} is not an ISO 8601 time")


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"unreadable export: {what} {value!r} is not a count")
    return value


def _parse_files(text: str, name: str, prefix: str) -> list[DataFile]:
    files = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"unreadable export: {name} line {number} is not JSON ({exc.msg})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("dataFileS3Key"), str):
            raise UsageError(f"unreadable export: {name} line {number} has no dataFileS3Key")
        key = _relative_data_key(entry["dataFileS3Key"], f"{name} line {number}")
        count = entry.get("itemCount")
        files.append(
            DataFile(key=prefix + key, item_count=None if count is None else _count(count, f"{name} line {number}"))
        )
    return files


def _relative_data_key(s3_key: str, where: str) -> str:
    match = _IN_EXPORT_DIR.search(s3_key)
    relative = match.group(1) if match else s3_key
    _check_relative(relative, where)
    return relative


def _check_relative(key: str, where: str) -> None:
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or ".." in parts:
        raise UsageError(f"unreadable export: {where}: data file {key!r} is outside the export folder")


# ---------------------------------------------------------------------- data files
async def iter_file(
    location: ExportLocation, data_file: str, settings: Settings, *, start_line: int = 0, chunk: int = 500
) -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """Native items of one data file, `chunk` at a time, as `(lines_consumed, items)`; skips `start_line` lines."""
    if chunk < 1:
        raise UsageError(f"chunk must be at least 1, not {chunk}")
    if start_line < 0:
        raise UsageError(f"start_line must be 0 or more, not {start_line}")
    _check_relative(data_file, str(location))
    name = location.describe(data_file)
    blocks = _s3_blocks(location, data_file, settings, name) if location.is_s3 else _local_blocks(location, data_file)
    consumed = 0
    items: list[dict[str, Any]] = []
    # aclosing: a caller that stops early (lease lost) releases the file or the S3 connection at once
    async with contextlib.aclosing(blocks), contextlib.aclosing(_lines(blocks)) as lines:
        async for line in lines:
            consumed += 1
            if consumed <= start_line or not line.strip():
                continue
            items.append(_parse_line(line, name, consumed))
            if len(items) >= chunk:
                yield consumed, items
                items = []
    if consumed < start_line:
        raise UsageError(
            f"unreadable export: {name} has {consumed} lines but the checkpoint is at line {start_line}; "
            "was the export replaced? restart the backfill"
        )
    if items:
        yield consumed, items


def _parse_line(line: bytes, name: str, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        problem = f"not JSON ({exc.msg} at column {exc.colno})"
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 ({exc.reason})"
    else:
        item = record.get("Item") if isinstance(record, dict) else None
        if not isinstance(item, dict):
            problem = 'no {"Item": {...}} object'
        else:
            try:
                native = from_dynamodb_json(item)
                _check_numbers(native)
                return native
            except (TypeError, ValueError, ArithmeticError, AttributeError) as exc:  # bad tag, number or base64
                problem = f"bad attribute value ({type(exc).__name__}: {exc})"
    raise UsageError(f"unreadable export: {name} line {number}: {_one_line(problem)}")


def _check_numbers(value: Any) -> None:
    """boto3's decimal context turns a garbled N ("twelve") into NaN without a word; DynamoDB never stores one."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"number {value} is not a DynamoDB number")
    elif isinstance(value, dict):
        for inner in value.values():
            _check_numbers(inner)
    elif isinstance(value, (list, set, frozenset)):
        for inner in value:
            _check_numbers(inner)


async def _lines(blocks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    pending = b""
    async for block in blocks:
        pending += block
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line
    if pending:
        yield pending


async def _local_blocks(location: ExportLocation, data_file: str) -> AsyncIterator[bytes]:
    path = Path(location.path or "") / data_file
    try:
        with gzip.open(path, "rb") as stream:
            while block := stream.read(_READ_BLOCK):
                yield block
                await asyncio.sleep(0)  # a long skip on resume must not starve heartbeats
    except FileNotFoundError:
        raise UsageError(f"unreadable export: {path} is missing") from None
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError; EOFError = truncated
        raise UsageError(f"unreadable export: {path}: {_one_line(str(exc) or type(exc).__name__)}") from None


async def _s3_blocks(location: ExportLocation, data_file: str, settings: Settings, name: str) -> AsyncIterator[bytes]:
    async with _s3_client(settings) as client:
        try:
            response = await client.get_object(Bucket=location.bucket, Key=location.s3_key(data_file))
        except Exception as exc:
            raise _s3_failure(exc, name) from exc
        async with response["Body"] as body:
            try:
                async for block in _gunzip(_read_blocks(body), name):
                    yield block
            except UsageError:
                raise
            except Exception as exc:
                raise _s3_failure(exc, name) from exc


async def _read_blocks(body: Any) -> AsyncIterator[bytes]:
    while block := await body.read(_READ_BLOCK):
        yield block


async def _gunzip(compressed: AsyncIterator[bytes], name: str) -> AsyncIterator[bytes]:
    """Incremental gunzip, with bounded output per step; concatenated gzip members are read in turn."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    seen_input = False
    try:
        async for data in compressed:
            seen_input = True
            while data:
                out = inflater.decompress(data, _MAX_OUT)
                if out:
                    yield out
                if inflater.eof:
                    # the member ended: what follows is the next member (at the end, unconsumed_tail
                    # repeats unused_data, so only unused_data is taken)
                    data = inflater.unused_data
                    if data:
                        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                else:
                    data = inflater.unconsumed_tail
    except zlib.error as exc:
        raise UsageError(f"unreadable export: {name} is not valid gzip ({exc})") from None
    if seen_input and not inflater.eof:
        raise UsageError(f"unreadable export: {name} is truncated (gzip stream ends early)")


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------- safety
def check_export_time(export_time: float | None, mirror_started_at: float | None, fuzz_s: float = 60.0) -> None:
    """Refuse an export whose (fuzzy) point in time may precede the mirror's start."""
    if mirror_started_at is None:
        raise UsageError(
            "the mirror has never run for this table, so writes made after the export's point in time would be "
            f"lost: start replication first, then take a new export at least {fuzz_s:.0f} s later"
        )
    if export_time is None:
        raise UsageError(
            f"the export's point in time is unknown (no exportTime in {SUMMARY}), so it cannot be shown to follow "
            "the mirror's start: use an export with its summary manifest, or --source scan"
        )
    earliest = export_time - fuzz_s
    if earliest < mirror_started_at:
        raise UsageError(
            f"export at {_iso(export_time)} is not safely after the mirror's start at {_iso(mirror_started_at)}: "
            f"its point in time is fuzzy by about {_human(fuzz_s)}, so writes between {_iso(earliest)} and "
            f"{_iso(mirror_started_at)} could be missing from both; take a new export at least "
            f"{fuzz_s:.0f} s after the mirror started"
        )


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _human(seconds: float) -> str:
    return "a minute" if seconds == 60 else f"{seconds:.0f} s"
