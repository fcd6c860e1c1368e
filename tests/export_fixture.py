"""Build a realistic DynamoDB point-in-time export on disk, and mirror it into S3.

The layout is what DynamoDB writes (see `backfill.export`)::

    <folder>/AWSDynamoDB/<exportId>/_started
    <folder>/AWSDynamoDB/<exportId>/manifest-summary.json
    <folder>/AWSDynamoDB/<exportId>/manifest-files.json      JSON Lines
    <folder>/AWSDynamoDB/<exportId>/data/<name>.json.gz      {"Item": <DynamoDB JSON>} per line

`dataFileS3Key` and `manifestFilesS3Key` are full S3 keys under the
`s3_prefix` the export was requested with, as in a real export, so a reader
must cope with an export that has since been copied elsewhere.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.core.codec import to_dynamodb_json

_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _data_name() -> str:
    return "".join(secrets.choice(_BASE32) for _ in range(26)) + ".json.gz"


def write_export(
    folder: Path,
    items: list[dict[str, Any]],
    *,
    export_time: float,
    files: int = 2,
    table_arn: str = "arn:aws:dynamodb:us-east-1:000000000000:table/sc-accounts",
    s3_bucket: str = "sc-exports",
    s3_prefix: str = "exports",
    summary: bool = True,
) -> Path:
    """Write `items` (native) as an export below `folder`; returns the AWSDynamoDB/<exportId> folder.

    Items are dealt round-robin over `files` data files (a file may be empty,
    as a real export writes one for an empty partition).
    """
    export_id = f"{int(export_time * 1000):014d}-{secrets.token_hex(4)}"
    export_dir = folder / "AWSDynamoDB" / export_id
    (export_dir / "data").mkdir(parents=True)
    (export_dir / "_started").write_bytes(b"")
    key_root = f"{s3_prefix}/AWSDynamoDB/{export_id}" if s3_prefix else f"AWSDynamoDB/{export_id}"

    manifest_lines = []
    billed = 0
    for index in range(files):
        chunk = items[index::files]
        text = "".join(json.dumps({"Item": to_dynamodb_json(item)}, ensure_ascii=False) + "\n" for item in chunk)
        billed += len(text.encode())
        data = gzip.compress(text.encode(), mtime=0)
        name = _data_name()
        (export_dir / "data" / name).write_bytes(data)
        digest = hashlib.md5(data).digest()  # S3's checksum, not security
        manifest_lines.append(
            json.dumps(
                {
                    "itemCount": len(chunk),
                    "md5Checksum": base64.b64encode(digest).decode(),
                    "etag": digest.hex(),
                    "dataFileS3Key": f"{key_root}/data/{name}",
                }
            )
        )
    (export_dir / "manifest-files.json").write_text("\n".join(manifest_lines) + "\n")

    if summary:
        table_id = secrets.token_hex(16)
        document = {
            "version": "2020-06-30",
            "exportArn": f"{table_arn}/export/{export_id}",
            "startTime": _iso(export_time),
            "endTime": _iso(export_time + 300),
            "tableArn": table_arn,
            "tableId": f"{table_id[:8]}-{table_id[8:12]}-{table_id[12:16]}-{table_id[16:20]}-{table_id[20:]}",
            "exportTime": _iso(export_time),
            "s3Bucket": s3_bucket,
            "s3Prefix": s3_prefix or None,
            "s3SseAlgorithm": "AES256",
            "s3SseKmsKeyId": None,
            "manifestFilesS3Key": f"{key_root}/manifest-files.json",
            "billedSizeBytes": billed,
            "itemCount": len(items),
            "outputFormat": "DYNAMODB_JSON",
            "exportType": "FULL_EXPORT",
        }
        (export_dir / "manifest-summary.json").write_text(json.dumps(document, indent=2))
    return export_dir


def upload_export(s3_client: Any, bucket: str, prefix: str, folder: Path) -> list[str]:
    """Copy every file below `folder` to `s3://bucket/prefix/<relative path>` (boto3 client); returns the keys."""
    keys = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        key = f"{prefix.strip('/')}/{relative}" if prefix.strip("/") else relative
        s3_client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        keys.append(key)
    return keys
