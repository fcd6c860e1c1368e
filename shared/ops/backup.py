"""Backups of the legacy tables: on-demand backups and PITR exports, recorded in the control table.

Phase 2 of the migration plan ("back up current data", then "test scripts
against backup data"). Per legacy table, `create` starts

* an on-demand backup (CreateBackup): a full copy AWS can restore into a new
  table, and
* a full point-in-time export (ExportTableToPointInTime, DYNAMODB_JSON) into
  ``s3://<backup_bucket>/<backup_prefix>/<table>/<stamp>``: a prefix of its
  own per export, so it holds exactly one ``AWSDynamoDB/<exportId>/`` folder
  (what ``backfill run --dry-run --source export:<uri>`` reads) and prune can
  delete it as a whole.

Every precondition is checked for every table before anything is started,
so a refused run leaves nothing half done: the legacy tables exist,
point-in-time recovery is on (an export needs it; `enable_pitr` turns it
on), the bucket exists.

**AWS's own listings are the record.** Backups are made in phase 2, before
the stack (and so the control table) exists, so nothing here needs the
control table: `records` lists, per legacy table, the on-demand backups
(ListBackups by TableName, USER backups named ``dynashift-<table>-...``) and
the exports (ListExports by TableArn, DescribeExport for each, those whose S3
prefix lies below ``<backup_prefix>/<table>/``); an export whose S3 objects
are gone (pruned) counts as DELETED and is no longer shown. Creating tables
outside CloudFormation to hold records would collide with the later `sam
deploy`, so it is never asked for.

When the control table exists, each backup is also recorded there (below),
and those records are merged with the listings by ARN (AWS's status wins).
Where the listings are not available (DynamoDB Local answers
UnknownOperationException), the control table's records are all there is.

Records (control table, optional, one per backup)::

    PK = "BACKUP"   SK = "<created_at ISO 8601, ms>#<table>#<kind>"
    table (physical name), source (logical name), kind ("on_demand" | "export"),
    arn, s3_uri (exports), created_at (N, epoch s), status (AWS's own:
    CREATING/AVAILABLE/DELETED for backups, IN_PROGRESS/COMPLETED/FAILED for
    exports), failure (why an export failed), name, updated_at

A record is written as soon as AWS has accepted the request, so a crash or
``--no-wait`` leaves a record whose status the next `records(refresh=True)`
(`backup list`, `latest_backups`) brings up to date from AWS.

Prune removes only what this tool made (the names and prefixes above, or a
control-table record), and only what is older than the retention, checked twice: by the record's `created_at` and by AWS's own
clock (the backup's creation time, each S3 object's LastModified). Anything
newer is kept and reported, and so is its record. It deletes only USER
backups and only objects below the record's own export prefix, which must
lie below `backup_prefix`. It never calls a table operation.

DynamoDB Local implements none of these operations and answers
UnknownOperationException: that becomes one `NotSupportedHere` line.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import Any
from urllib.parse import urlparse

from shared.core import aws
from shared.core.definition import get_definition
from shared.core.errors import ConfigError, NotSupportedHere, StoreError, TransientError, UsageError
from shared.core.settings import Settings
from shared.store import keys

ON_DEMAND = "on_demand"
EXPORT = "export"
KINDS = (ON_DEMAND, EXPORT)
COMPLETED_STATUSES = frozenset({"AVAILABLE", "COMPLETED"})
TERMINAL_STATUSES = COMPLETED_STATUSES | {"FAILED", "DELETED"}
DAY_S = 86400.0

UNSUPPORTED_CODES = frozenset({"UnknownOperationException"})
PITR_UNAVAILABLE = "PointInTimeRecoveryUnavailableException"
NOT_FOUND_CODES = frozenset({"BackupNotFoundException", "ExportNotFoundException", "ResourceNotFoundException"})


def iso_ms(epoch: float) -> str:
    """``2024-03-01T12:00:00.123Z``: sorts as text in time order (rounded to the millisecond)."""
    seconds, millis = divmod(round(epoch * 1000), 1000)
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


def compact_stamp(epoch: float) -> str:
    """``20240301T120000.123Z``, for backup names and S3 prefixes."""
    return iso_ms(epoch).replace("-", "").replace(":", "")


@dataclass(frozen=True)
class BackupRecord:
    table: str  # physical name of the legacy table
    kind: str  # ON_DEMAND or EXPORT
    arn: str
    created_at: float
    status: str
    s3_uri: str | None = None
    source: str | None = None  # logical name (sc-accounts)
    name: str | None = None
    failure: str | None = None
    sk: str = ""  # the control item's sort key: computed once, then read back, never recomputed

    def __post_init__(self) -> None:
        if not self.sk:
            object.__setattr__(self, "sk", f"{iso_ms(self.created_at)}#{self.table}#{self.kind}")

    @property
    def completed(self) -> bool:
        return self.status in COMPLETED_STATUSES

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            **keys.backup(self.sk),
            "table": {"S": self.table},
            "kind": {"S": self.kind},
            "arn": {"S": self.arn},
            "created_at": {"N": repr(round(self.created_at, 3))},
            "status": {"S": self.status},
        }
        for name in ("s3_uri", "source", "name", "failure"):
            value = getattr(self, name)
            if value:
                item[name] = {"S": value}
        return item

    @classmethod
    def from_item(cls, raw: dict[str, Any]) -> BackupRecord:
        def text(name: str) -> str | None:
            return raw[name]["S"] if name in raw else None

        return cls(
            table=raw["table"]["S"],
            kind=raw["kind"]["S"],
            arn=raw["arn"]["S"],
            created_at=float(raw["created_at"]["N"]),
            status=raw["status"]["S"],
            s3_uri=text("s3_uri"),
            source=text("source"),
            name=text("name"),
            failure=text("failure"),
            sk=raw["SK"]["S"],
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "source": self.source,
            "kind": self.kind,
            "status": self.status,
            "created_at": self.created_at,
            "created": iso_ms(self.created_at),
            "arn": self.arn,
            "s3_uri": self.s3_uri,
            "failure": self.failure,
        }


@dataclass
class PruneReport:
    cutoff: float
    backups_deleted: list[str] = field(default_factory=list)
    objects_deleted: int = 0
    records_removed: int = 0
    kept: list[tuple[BackupRecord, str]] = field(default_factory=list)


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise UsageError(f"{uri!r} is not an s3://bucket/prefix URI")
    return parsed.netloc, parsed.path.strip("/")


class BackupManager:
    """Creates, lists, waits for and prunes the backups of one migration's legacy tables.

    `clock` (epoch seconds) and `sleep` are injected, so tests control time.
    """

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.clock = clock
        self.sleep = sleep

    # ------------------------------------------------------------------ clients
    @cached_property
    def dynamodb(self) -> Any:
        return aws.dynamodb(self.settings)

    @cached_property
    def s3(self) -> Any:
        import boto3

        return boto3.session.Session().client("s3", **aws.s3_client_kwargs(self.settings))

    def legacy_tables(self) -> list[tuple[str, str]]:
        """(logical, physical) name of every legacy table of the migration."""
        definition = get_definition(self.settings.migration)
        return [(s.name, self.settings.physical_name(s.name)) for s in definition.sources]

    def _call(self, operation: str, what: str, call: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return call(**kwargs)
        except Exception as exc:
            if aws.error_code(exc) in UNSUPPORTED_CODES:
                raise unsupported(self.settings, operation) from exc
            raise aws.translate(exc, what) from exc

    # ------------------------------------------------------------------- create
    def preflight(self, kinds: Iterable[str], *, enable_pitr: bool = False) -> dict[str, tuple[str, str]]:
        """Check every precondition for every table; returns physical name -> (logical name, table ARN)."""
        kinds = set(kinds)
        if not kinds or not kinds <= set(KINDS):
            raise UsageError(f"backup kinds must be among {', '.join(KINDS)}, not {sorted(kinds)}")
        tables = {}
        for logical, physical in self.legacy_tables():
            description = self._require_table(physical, f"legacy table {logical}", None)
            tables[physical] = (logical, description["TableArn"])
        if EXPORT in kinds:
            off = [p for p in tables if not self._pitr_enabled(p)]
            if off and not enable_pitr:
                raise UsageError(pitr_off_message(off))
            for physical in off:
                self._enable_pitr(physical)
            if not self.settings.backup_bucket:
                raise ConfigError(
                    "backup_bucket is not set, and an export needs one: set DYNASHIFT_BACKUP_BUCKET (or "
                    "backup_bucket in dynashift.toml, or --bucket), or make only on-demand backups with --kind on_demand"
                )
            self._require_bucket(self.settings.backup_bucket)
        return tables

    def start(self, kinds: Iterable[str] = KINDS, *, enable_pitr: bool = False) -> list[BackupRecord]:
        """Start the backups and record them; returns the records (statuses as AWS reported them)."""
        kinds = [k for k in KINDS if k in set(kinds)]
        tables = self.preflight(kinds, enable_pitr=enable_pitr)
        records = []
        for physical, (logical, table_arn) in tables.items():
            for kind in kinds:
                record = self._start_one(kind, physical, logical, table_arn)
                if self.control_table_exists:  # optional: AWS's listings are the record
                    self._put(record)
                records.append(record)
        return records

    @cached_property
    def control_table_exists(self) -> bool:
        """Whether the control table exists (the stack creates it; backups come before the stack)."""
        try:
            self.dynamodb.describe_table(TableName=self.settings.control_table)
        except Exception as exc:
            if aws.error_code(exc) == "ResourceNotFoundException":
                return False
            raise aws.translate(exc, f"describe control table {self.settings.control_table}") from exc
        return True

    def _start_one(self, kind: str, physical: str, logical: str, table_arn: str) -> BackupRecord:
        created_at = round(self.clock(), 3)
        stamp = compact_stamp(created_at)
        if kind == ON_DEMAND:
            name = f"dynashift-{physical[:200]}-{stamp.replace('.', '-')}"
            response = self._call("CreateBackup", f"create backup of {physical}", self.dynamodb.create_backup,
                                  TableName=physical, BackupName=name)
            details = response["BackupDetails"]
            return BackupRecord(table=physical, kind=ON_DEMAND, arn=details["BackupArn"], created_at=created_at,
                                status=details.get("BackupStatus", "CREATING"), source=logical, name=name)
        bucket = self.settings.backup_bucket or ""
        prefix = f"{self.settings.backup_prefix}/{physical}/{stamp}"
        try:
            response = self.dynamodb.export_table_to_point_in_time(
                TableArn=table_arn, S3Bucket=bucket, S3Prefix=prefix, ExportFormat="DYNAMODB_JSON",
                ExportType="FULL_EXPORT", ClientToken=uuid.uuid4().hex,
            )
        except Exception as exc:
            if aws.error_code(exc) == PITR_UNAVAILABLE:
                raise UsageError(pitr_off_message([physical])) from exc
            if aws.error_code(exc) in UNSUPPORTED_CODES:
                raise unsupported(self.settings, "ExportTableToPointInTime") from exc
            raise aws.translate(exc, f"export {physical} to s3://{bucket}/{prefix}") from exc
        description = response["ExportDescription"]
        return BackupRecord(table=physical, kind=EXPORT, arn=description["ExportArn"], created_at=created_at,
                            status=description.get("ExportStatus", "IN_PROGRESS"), s3_uri=f"s3://{bucket}/{prefix}",
                            source=logical, name=prefix, failure=_failure(description))

    def _require_table(self, name: str, what: str, create_hint: str | None) -> dict[str, Any]:
        try:
            return self.dynamodb.describe_table(TableName=name)["Table"]
        except Exception as exc:
            if aws.error_code(exc) == "ResourceNotFoundException":
                hint = f": run `{create_hint}`" if create_hint else " (check table_names in the settings)"
                raise StoreError(f"{what} {name} not found{hint}") from exc
            if aws.error_code(exc) in UNSUPPORTED_CODES:
                raise unsupported(self.settings, "DescribeTable") from exc
            raise aws.translate(exc, f"describe {what} {name}") from exc

    def _pitr_enabled(self, physical: str) -> bool:
        response = self._call("DescribeContinuousBackups", f"read point-in-time recovery of {physical}",
                              self.dynamodb.describe_continuous_backups, TableName=physical)
        pitr = response["ContinuousBackupsDescription"].get("PointInTimeRecoveryDescription", {})
        return pitr.get("PointInTimeRecoveryStatus") == "ENABLED"

    def _enable_pitr(self, physical: str, *, timeout_s: float = 300.0) -> None:
        self._call("UpdateContinuousBackups", f"enable point-in-time recovery of {physical}",
                   self.dynamodb.update_continuous_backups, TableName=physical,
                   PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
        deadline = self.clock() + timeout_s
        delay = 1.0
        while not self._pitr_enabled(physical):  # ENABLING for a moment on AWS
            if self.clock() > deadline:
                raise TransientError(f"point-in-time recovery of {physical} is still not ENABLED after {timeout_s:.0f} s")
            self.sleep(delay)
            delay = min(delay * 2, 15.0)

    def _require_bucket(self, bucket: str) -> None:
        try:
            self.s3.head_bucket(Bucket=bucket)
        except Exception as exc:
            code = aws.error_code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise ConfigError(f"backup_bucket {bucket!r} does not exist (create it, or set another)") from exc
            if code in ("403", "AccessDenied", "Forbidden"):
                raise ConfigError(f"backup_bucket {bucket!r}: access denied to these credentials") from exc
            raise aws.translate(exc, f"check backup_bucket {bucket!r}") from exc

    # ------------------------------------------------------------------ progress
    def refresh(self, record: BackupRecord) -> BackupRecord:
        """The record with its status as AWS reports it now (stored when it changed)."""
        if record.kind == ON_DEMAND:
            operation, what = "DescribeBackup", f"describe backup {record.arn}"
            call, kwargs = self.dynamodb.describe_backup, {"BackupArn": record.arn}
        else:
            operation, what = "DescribeExport", f"describe export {record.arn}"
            call, kwargs = self.dynamodb.describe_export, {"ExportArn": record.arn}
        try:
            response = call(**kwargs)
        except Exception as exc:
            if aws.error_code(exc) in NOT_FOUND_CODES:
                fresh = replace(record, status="DELETED")
            elif aws.error_code(exc) in UNSUPPORTED_CODES:
                raise unsupported(self.settings, operation) from exc
            else:
                raise aws.translate(exc, what) from exc
        else:
            if record.kind == ON_DEMAND:
                status = response["BackupDescription"]["BackupDetails"].get("BackupStatus", record.status)
                fresh = replace(record, status=status)
            else:
                description = response["ExportDescription"]
                fresh = replace(record, status=description.get("ExportStatus", record.status),
                                failure=_failure(description) or record.failure)
        if fresh != record:
            self._update_status(fresh)
        return fresh

    def wait(self, records: list[BackupRecord], *, on_update: Callable[[BackupRecord], None] | None = None,
             first_delay: float = 1.0, max_delay: float = 30.0) -> list[BackupRecord]:
        """Poll until every record is in a final state (backoff from `first_delay` to `max_delay`)."""
        latest = {r.sk: r for r in records}
        pending = [r.sk for r in records if not r.terminal]
        delay = first_delay
        while pending:
            for sk in list(pending):
                try:
                    latest[sk] = self.refresh(latest[sk])
                except TransientError:
                    continue  # throttled or a network hiccup: ask again next round
                if on_update:
                    on_update(latest[sk])
                if latest[sk].terminal:
                    pending.remove(sk)
            if pending:
                self.sleep(delay)
                delay = min(delay * 1.5, max_delay)
        return [latest[r.sk] for r in records]

    # --------------------------------------------------------------------- list
    def records(self, *, refresh: bool = False) -> list[BackupRecord]:
        """Every backup of ours, newest first: AWS's listings, merged with the control table's
        records when it exists; with `refresh`, unfinished recorded ones are re-read from AWS."""
        recorded = self._recorded() if self.control_table_exists else []
        listed = self._listed()
        if listed is None:  # no listings here (DynamoDB Local): the records are all there is
            found = recorded
        else:
            by_arn = {r.arn: r for r in listed}
            found = []
            for record in recorded:
                aws_view = by_arn.pop(record.arn, None)
                if aws_view is not None and (aws_view.status, aws_view.failure) != (record.status, record.failure):
                    record = replace(record, status=aws_view.status, failure=aws_view.failure or record.failure)
                    self._update_status(record)
                found.append(record)
            found += [r for r in by_arn.values() if r.status != "DELETED"]  # pruned exports stay listed by AWS
        if refresh:
            found = [self._refresh_quietly(r) if not r.terminal else r for r in found]
        return sorted(found, key=lambda r: r.created_at, reverse=True)

    def _recorded(self) -> list[BackupRecord]:
        kwargs: dict[str, Any] = {
            "TableName": self.settings.control_table,
            "KeyConditionExpression": "PK = :pk",
            "ExpressionAttributeValues": {":pk": {"S": keys.BACKUP_PK}},
            "ConsistentRead": True,
            "ScanIndexForward": False,
        }
        found = []
        while True:
            try:
                page = self.dynamodb.query(**kwargs)
            except Exception as exc:
                raise aws.translate(exc, "read backup records") from exc
            found.extend(BackupRecord.from_item(raw) for raw in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _listed(self) -> list[BackupRecord] | None:
        """Our backups and exports as AWS lists them, per legacy table; None where AWS has no listings."""
        found: list[BackupRecord] = []
        for logical, physical in self.legacy_tables():
            try:
                table_arn = self.dynamodb.describe_table(TableName=physical)["Table"]["TableArn"]
            except Exception as exc:
                if aws.error_code(exc) == "ResourceNotFoundException":
                    continue  # no table, so nothing to list by it
                raise aws.translate(exc, f"describe legacy table {physical}") from exc
            try:
                found += self._listed_backups(logical, physical)
                found += self._listed_exports(logical, physical, table_arn)
            except Exception as exc:
                if aws.error_code(exc) in UNSUPPORTED_CODES:
                    return None
                raise
        return found

    def _pages(self, call: Callable[..., dict[str, Any]], what: str, token_out: str, token_in: str,
               **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Every page of a listing that pages by a token (`token_out` in the answer, `token_in` in the request)."""
        while True:
            try:
                page = call(**kwargs)
            except Exception as exc:
                if aws.error_code(exc) in UNSUPPORTED_CODES:
                    raise
                raise aws.translate(exc, what) from exc
            yield page
            if not page.get(token_out):
                return
            kwargs[token_in] = page[token_out]

    def _listed_backups(self, logical: str, physical: str) -> list[BackupRecord]:
        prefix = f"dynashift-{physical[:200]}-"
        found = []
        for page in self._pages(self.dynamodb.list_backups, f"list the backups of {physical}",
                                "LastEvaluatedBackupArn", "ExclusiveStartBackupArn",
                                TableName=physical, BackupType="USER"):
            for summary in page.get("BackupSummaries", []):
                if not summary.get("BackupName", "").startswith(prefix):
                    continue  # not ours
                created = summary.get("BackupCreationDateTime")
                found.append(BackupRecord(
                    table=physical, kind=ON_DEMAND, arn=summary["BackupArn"],
                    # no date from AWS: count it as new, so the retention never takes it for old
                    created_at=created.timestamp() if isinstance(created, datetime) else self.clock(),
                    status=summary.get("BackupStatus", "AVAILABLE"), source=logical, name=summary["BackupName"]))
        return found

    def _listed_exports(self, logical: str, physical: str, table_arn: str) -> list[BackupRecord]:
        ours = f"{self.settings.backup_prefix}/{physical}/"
        found = []
        for page in self._pages(self.dynamodb.list_exports, f"list the exports of {physical}",
                                "NextToken", "NextToken", TableArn=table_arn):
            for summary in page.get("ExportSummaries", []):
                description = self._call("DescribeExport", f"describe export {summary['ExportArn']}",
                                         self.dynamodb.describe_export,
                                         ExportArn=summary["ExportArn"])["ExportDescription"]
                prefix = (description.get("S3Prefix") or "").strip("/")
                if not (prefix + "/").startswith(ours) or len(prefix) < len(ours):
                    continue  # not one of ours
                bucket = description.get("S3Bucket", "")
                started = description.get("StartTime")
                status = description.get("ExportStatus", "IN_PROGRESS")
                if status == "COMPLETED" and not self._has_objects(bucket, prefix):
                    status = "DELETED"  # pruned: AWS keeps listing the export, its data is gone
                found.append(BackupRecord(
                    table=physical, kind=EXPORT, arn=summary["ExportArn"],
                    created_at=started.timestamp() if isinstance(started, datetime) else self.clock(), status=status,
                    s3_uri=f"s3://{bucket}/{prefix}", source=logical, name=prefix, failure=_failure(description)))
        return found

    def _has_objects(self, bucket: str, prefix: str) -> bool:
        try:
            page = self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/", MaxKeys=1)
        except Exception as exc:
            if aws.error_code(exc) == "NoSuchBucket":
                return False
            raise aws.translate(exc, f"list s3://{bucket}/{prefix}") from exc
        return bool(page.get("Contents"))

    def _refresh_quietly(self, record: BackupRecord) -> BackupRecord:
        try:
            return self.refresh(record)
        except (NotSupportedHere, TransientError):
            return record  # shown as last recorded; the next look refreshes it

    def latest(self, *, completed_only: bool = True, refresh: bool = True) -> dict[str, dict[str, BackupRecord]]:
        result: dict[str, dict[str, BackupRecord]] = {}
        for record in self.records(refresh=refresh):  # newest first: the first one seen wins
            if completed_only and not record.completed:
                continue
            result.setdefault(record.table, {}).setdefault(record.kind, record)
        return result

    # -------------------------------------------------------------------- prune
    def prune_candidates(self, retention_days: float) -> tuple[float, list[BackupRecord]]:
        """The cutoff (epoch) and the records created before it, oldest first."""
        if retention_days < 1:
            raise UsageError(f"--retention-days must be at least 1, not {retention_days}")
        cutoff = self.clock() - retention_days * DAY_S
        return cutoff, sorted((r for r in self.records() if r.created_at < cutoff), key=lambda r: r.created_at)

    def prune(self, candidates: list[BackupRecord], cutoff: float,
              on_record: Callable[[BackupRecord, str], None] | None = None) -> PruneReport:
        """Delete the backups and export objects of `candidates` (all older than `cutoff`) and their records."""
        report = PruneReport(cutoff=cutoff)
        for record in candidates:
            if record.created_at >= cutoff:  # the caller's list is re-checked, never trusted
                report.kept.append((record, "newer than the retention"))
                continue
            if not record.terminal:
                record = self._refresh_quietly(record)
                if not record.terminal:
                    report.kept.append((record, f"still {record.status}"))
                    continue
            why_kept = self._prune_backup(record, cutoff, report) if record.kind == ON_DEMAND else (
                self._prune_export(record, cutoff, report))
            if why_kept:
                report.kept.append((record, why_kept))
            else:
                self._delete_record(record)
                report.records_removed += 1
            if on_record:
                on_record(record, why_kept or "removed")
        return report

    def _prune_backup(self, record: BackupRecord, cutoff: float, report: PruneReport) -> str | None:
        try:
            details = self.dynamodb.describe_backup(BackupArn=record.arn)["BackupDescription"]["BackupDetails"]
        except Exception as exc:
            if aws.error_code(exc) in NOT_FOUND_CODES:
                return None  # already gone: only the record is left
            if aws.error_code(exc) in UNSUPPORTED_CODES:
                raise unsupported(self.settings, "DescribeBackup") from exc
            raise aws.translate(exc, f"describe backup {record.arn}") from exc
        if details.get("BackupType", "USER") != "USER":
            return f"backup type {details['BackupType']} is not ours to delete"
        created = details.get("BackupCreationDateTime")
        if isinstance(created, datetime) and created.timestamp() >= cutoff:
            return f"AWS dates the backup {iso_ms(created.timestamp())}, within the retention"
        if details.get("BackupStatus") == "DELETED":
            return None
        try:
            self.dynamodb.delete_backup(BackupArn=record.arn)
        except Exception as exc:
            if aws.error_code(exc) in NOT_FOUND_CODES:
                return None
            if aws.error_code(exc) in UNSUPPORTED_CODES:
                raise unsupported(self.settings, "DeleteBackup") from exc
            raise aws.translate(exc, f"delete backup {record.arn}") from exc
        report.backups_deleted.append(record.arn)
        return None

    def _prune_export(self, record: BackupRecord, cutoff: float, report: PruneReport) -> str | None:
        if not record.s3_uri:
            return "the record names no S3 location"
        bucket, prefix = split_s3_uri(record.s3_uri)
        base = self.settings.backup_prefix + "/"
        if not prefix.startswith(base) or len(prefix) <= len(base):
            return f"{record.s3_uri} is not below backup_prefix {self.settings.backup_prefix!r}; delete it by hand"
        old: list[str] = []
        newer = 0
        paginator = self.s3.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/"):
                for obj in page.get("Contents", []):
                    if obj["LastModified"].timestamp() < cutoff:
                        old.append(obj["Key"])
                    else:
                        newer += 1
            for start in range(0, len(old), 1000):
                batch = old[start : start + 1000]
                response = self.s3.delete_objects(
                    Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
                errors = response.get("Errors", [])
                report.objects_deleted += len(batch) - len(errors)
                if errors:
                    first = errors[0]
                    return f"{len(errors)} objects not deleted ({first.get('Code')}: {first.get('Key')})"
        except Exception as exc:
            if aws.error_code(exc) == "NoSuchBucket":
                return None  # the bucket is gone, and the objects with it
            raise aws.translate(exc, f"prune {record.s3_uri}") from exc
        if newer:
            return f"{newer} objects under {record.s3_uri} are newer than the retention"
        return None

    # ----------------------------------------------------------------- records
    def _put(self, record: BackupRecord) -> None:
        item = record.to_item()
        item["updated_at"] = {"N": repr(round(self.clock(), 3))}
        try:
            self.dynamodb.put_item(TableName=self.settings.control_table, Item=item)
        except Exception as exc:
            raise aws.translate(exc, f"record backup {record.arn}") from exc

    def _update_status(self, record: BackupRecord) -> None:
        if not self.control_table_exists:
            return  # AWS's listing is the record
        names = {"#s": "status", "#u": "updated_at"}
        values: dict[str, Any] = {":s": {"S": record.status}, ":u": {"N": repr(round(self.clock(), 3))}}
        update = "SET #s = :s, #u = :u"
        if record.failure:
            names["#f"] = "failure"
            values[":f"] = {"S": record.failure[:2000]}
            update += ", #f = :f"
        try:
            self.dynamodb.update_item(
                TableName=self.settings.control_table,
                Key=keys.backup(record.sk),
                UpdateExpression=update,
                ConditionExpression="attribute_exists(PK)",  # never resurrect a pruned record
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except Exception as exc:
            if aws.error_code(exc) == "ConditionalCheckFailedException":
                return
            raise aws.translate(exc, f"update backup record {record.sk}") from exc

    def _delete_record(self, record: BackupRecord) -> None:
        if not self.control_table_exists:
            return
        try:
            self.dynamodb.delete_item(TableName=self.settings.control_table,
                                      Key=keys.backup(record.sk))
        except Exception as exc:
            raise aws.translate(exc, f"remove backup record {record.sk}") from exc


# ------------------------------------------------------------------ module API
def latest_backups(settings: Settings, *, completed_only: bool = True,
                   refresh: bool = True) -> dict[str, dict[str, BackupRecord]]:
    """Newest backup per legacy table (physical name) and kind: ``{table: {kind: record}}``.

    By default only completed ones (status AVAILABLE or COMPLETED), after
    refreshing unfinished records from AWS: that is what the cutover gate asks.
    """
    return BackupManager(settings).latest(completed_only=completed_only, refresh=refresh)


def backup_gate_problems(settings: Settings, *, now: float | None = None,
                         max_age_s: float | None = None) -> list[str]:
    """One line per legacy table that has no completed backup (of either kind) younger than
    `max_age_s` (default: the setting `backup_max_age_s`); empty when the gate may pass."""
    manager = BackupManager(settings)
    now = time.time() if now is None else now
    max_age_s = settings.backup_max_age_s if max_age_s is None else max_age_s
    latest = manager.latest()
    if not latest and settings.is_local:
        return ["DynamoDB Local has no backups, so none can be recent: skip the check with --skip-backup-check"]
    problems = []
    for logical, physical in manager.legacy_tables():
        newest = max(latest.get(physical, {}).values(), key=lambda r: r.created_at, default=None)
        if newest is None:
            problems.append(f"{logical} ({physical}) has no completed backup: run `dynashift backup create`")
        elif now - newest.created_at > max_age_s:
            problems.append(
                f"{logical} ({physical}): newest completed backup is from {iso_ms(newest.created_at)}, older than "
                f"backup_max_age_s={max_age_s:g}: run `dynashift backup create`"
            )
    return problems


def unsupported(settings: Settings, operation: str) -> NotSupportedHere:
    where = "DynamoDB Local" if settings.is_local else f"the endpoint {settings.effective_endpoint or 'in use'}"
    return NotSupportedHere(
        f"{where} has no backups ({operation}): run against AWS, or skip the cutover's backup check with "
        "`dynashift cutover --skip-backup-check`"
    )


def pitr_off_message(tables: list[str]) -> str:
    commands = " && ".join(
        f"aws dynamodb update-continuous-backups --table-name {t} "
        "--point-in-time-recovery-specification PointInTimeRecoveryEnabled=true"
        for t in tables
    )
    return (f"point-in-time recovery is off for {', '.join(tables)}, and an export needs it: run `{commands}`, "
            "or add --enable-pitr")


def _failure(description: dict[str, Any]) -> str | None:
    code, message = description.get("FailureCode"), description.get("FailureMessage")
    if not code and not message:
        return None
    return f"{code or 'failed'}: {message or ''}".strip().rstrip(":")


__all__ = [
    "EXPORT", "KINDS", "ON_DEMAND", "BackupManager", "BackupRecord", "PruneReport",
    "backup_gate_problems", "latest_backups",
]
