"""docs/runbook.md, followed as written: every `# step:` block, in order, with an application writing.

What stands in for AWS, and why:

* **DynamoDB Local** holds the legacy tables (as production has them: no
  streams, history already written, bad rows included), then sc-main and
  the control table once "deployed".
* **moto** (a server on its own port) holds what DynamoDB Local lacks: S3
  (`AWS_ENDPOINT_URL_S3`), on-demand backups and point-in-time exports. A
  backup reads the legacy tables as they are at that moment: right before
  each `backup create` the harness copies them into moto's DynamoDB. moto's
  export writes the data files but not the manifests AWS writes beside them
  (`manifest-summary.json`, `manifest-files.json`); the harness adds those,
  in AWS's format, from moto's own export description.
* **The stack.** `make sam-build` is the artifact test's business
  (tests/integration/test_artifact.py) and is skipped here; `sam deploy`
  creates sc-main and the control table from template.yaml (as
  `tables create` would) and starts one `tests.esm_consumer.EsmConsumer` per
  event source mapping of the template (forward on both legacy streams,
  reverse on sc-main's), which run the real handlers and keep their
  checkpoints to themselves. Lambda's ListEventSourceMappings is answered
  from them. Its outputs fill the `<stack-output/...>` placeholders.
* **The application** writes the legacy tables from the start (a plain
  workload: before the stack exists there is no mode flag to read); from
  the deploy on, a router-honouring application (`shared.sim.app_sim`) writes
  wherever the mode says, through every switch, until the end.

Every `dynashift` line runs through the CLI's entry point in this process
and must exit 0. `<...>` placeholders are filled from the harness's values
or from what an earlier command printed (the dry-run lines of `backup
create`); an unknown placeholder fails the test, so a runbook edit that the
harness cannot follow is caught here. A few timing knobs are set in the
environment for a 2-core machine (cache age, verify settle, lag bound),
never options the runbook does not name.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shlex
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from shared.cli.main import main
from shared.core import aws
from shared.core.definition import get_definition
from shared.core.errors import QuarantineError
from shared.core.settings import PROJECT_ROOT, Settings, load_settings
from shared.cutover.operations import read_mode
from shared.ops.backup import BackupManager
from shared.ops.tables import create_table, create_tables, source_specs
from shared.sc.seed import seed
from shared.sc.workload import Workload
from shared.sim.app_sim import AppSimulator, diff_authoritative
from shared.sim.live import WorkloadThread
from shared.sim.local_engine import free_port
from shared.store.mode import Mode
from shared.streams import coverage
from tests.esm_consumer import EsmConsumer, FakeLambda

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:No application metrics to publish")]

RUNBOOK = (PROJECT_ROOT / "docs" / "runbook.md").read_text()
STEP = re.compile(r"```bash\n\s*# step: ([a-z-]+)\n(.*?)```", re.S)
BUCKET = "sc-assets"  # the users' bucket: it holds their own files too
FUNCTIONS = {"forward": "dynashift-mirror", "reverse": "dynashift-reverse-mirror"}
STACK_OUTPUTS = {"TargetTableName": "sc-main", "ControlTableName": "dynashift-control",
                 "MirrorFunctionName": FUNCTIONS["forward"], "ReverseMirrorFunctionName": FUNCTIONS["reverse"]}
ORDER = ["shell", "backup", "dry-run", "deploy", "stack-outputs", "mirror-check", "final-backup", "backfill",
         "validate", "cutover", "rollback", "cutover-again", "finalize"]


def steps() -> list[tuple[str, list[str]]]:
    found = []
    for name, body in STEP.findall(RUNBOOK):
        lines = [line.strip() for line in body.splitlines()]
        found.append((name, [line for line in lines if line and not line.startswith("#")]))
    return found


def test_the_runbook_has_every_step_the_walkthrough_follows_in_order():
    assert [name for name, _ in steps()] == ORDER


class Moto:
    """moto's server for S3, backups and exports, and the copy of the legacy tables a backup reads."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.server = ThreadedMotoServer(port=self.port, verbose=False)
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        kwargs = {"endpoint_url": self.endpoint, "region_name": "eu-west-1", "aws_access_key_id": "moto",
                  "aws_secret_access_key": "moto"}  # nosec B106  (moto's dummy pair)
        self.dynamodb = boto3.client("dynamodb", **kwargs)
        self.s3 = boto3.client("s3", **kwargs)
        self.s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        self.s3.put_object(Bucket=BUCKET, Key="assets/logo.png", Body=b"the users' own file")

    def sync_from(self, settings: Settings) -> None:
        """moto's legacy tables become what DynamoDB Local's are now (what a backup would read)."""
        local = aws.dynamodb(settings)
        for logical in ("sc-accounts", "sc-repositories"):
            table = settings.physical_name(logical)
            description = local.describe_table(TableName=table)["Table"]
            with contextlib.suppress(self.dynamodb.exceptions.ResourceInUseException):
                self.dynamodb.create_table(TableName=table, KeySchema=description["KeySchema"],
                                           AttributeDefinitions=description["AttributeDefinitions"],
                                           BillingMode="PAY_PER_REQUEST")
            old = self.dynamodb.scan(TableName=table, ProjectionExpression=",".join(
                k["AttributeName"] for k in description["KeySchema"]))["Items"]
            for key in old:
                self.dynamodb.delete_item(TableName=table, Key=key)
            for page in local.get_paginator("scan").paginate(TableName=table):
                for item in page["Items"]:
                    self.dynamodb.put_item(TableName=table, Item=item)

    def complete_exports(self) -> None:
        """Write the manifests AWS writes beside an export's data files (moto writes only the data)."""
        exports: dict[str, list[dict[str, Any]]] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for obj in page.get("Contents", []):
                match = re.match(r"(.*/AWSDynamoDB/[^/]+)/(data/.+|manifest-files\.json)$", obj["Key"])
                if match:
                    exports.setdefault(match.group(1), []).append(obj)
        for prefix, objects in exports.items():
            if any(o["Key"].endswith("manifest-files.json") for o in objects):
                continue
            lines, total = [], 0
            for obj in objects:
                body = gzip.decompress(self.s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read())
                count = sum(1 for line in body.splitlines() if line.strip())
                total += count
                lines.append(json.dumps({"itemCount": count, "md5Checksum": hashlib.md5(body).hexdigest(),  # nosec B324
                                         "etag": obj["ETag"].strip('"'), "dataFileS3Key": obj["Key"]}))
            self.s3.put_object(Bucket=BUCKET, Key=f"{prefix}/manifest-files.json", Body="\n".join(lines) + "\n")
            summary = {"exportTime": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                       "itemCount": total, "outputFormat": "DYNAMODB_JSON", "exportType": "FULL_EXPORT",
                       "manifestFilesS3Key": f"{prefix}/manifest-files.json"}
            self.s3.put_object(Bucket=BUCKET, Key=f"{prefix}/manifest-summary.json", Body=json.dumps(summary))

    def stop(self) -> None:
        self.server.stop()


class Walkthrough:
    def __init__(self, endpoint: str, moto: Moto, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
        self.endpoint = endpoint
        self.moto = moto
        self.monkeypatch = monkeypatch
        self.tmp_path = tmp_path
        self.printed: list[str] = []
        self.mappings: list[EsmConsumer] = []
        self.app: AppSimulator | None = None
        self.workload: WorkloadThread | None = None
        self.placeholders = {"<your backup bucket>": BUCKET, "<your alarm e-mail>": "oncall@example.com",
                             **{f"<stack-output/{k}>": v for k, v in STACK_OUTPUTS.items()}}
        monkeypatch.chdir(tmp_path)
        # Where "AWS" is: DynamoDB Local for the tables, moto for S3; timing knobs for a 2-core machine.
        for name, value in {"AWS_ENDPOINT_URL_DYNAMODB": endpoint, "AWS_ENDPOINT_URL_S3": moto.endpoint,
                            "DYNASHIFT_MODE_CACHE_AGE_S": "1", "DYNASHIFT_CUTOVER_INFLIGHT_GRACE_S": "0.3",
                            "DYNASHIFT_VERIFY_SETTLE_S": "3", "DYNASHIFT_CUTOVER_MAX_LAG_S": "120",
                            "DYNASHIFT_CUTOVER_TIMEOUT_S": "240", "DYNASHIFT_MIRROR_WAIT_S": "60"}.items():
            monkeypatch.setenv(name, value)
        # Backups and exports are moto's; the mappings' state is the stand-ins'.
        monkeypatch.setattr(BackupManager, "dynamodb", property(lambda _self: moto.dynamodb))
        monkeypatch.setattr(coverage, "lambda_client", lambda _settings: FakeLambda(*self.mappings))

    # ------------------------------------------------------------------ the world
    def settings(self) -> Settings:
        return load_settings()

    def production_before_dynashift(self) -> None:
        """The legacy tables as production has them: no streams, years of history, some bad rows."""
        settings = load_settings(table_names={"sc-accounts": "sc-accounts", "sc-repositories": "sc-repositories"})
        client = aws.dynamodb(settings)
        for spec in source_specs(settings, get_definition(settings.migration)):  # sc-main: the stack's
            spec.create.pop("StreamSpecification", None)
            create_table(client, spec, local=True)
        import asyncio

        asyncio.run(seed(settings, 80, 240, 0.05, 7))
        self.workload = WorkloadThread(settings, Workload(seed=41), rate_per_s=10).start()

    def deploy(self) -> None:
        """`sam deploy`: sc-main and the control table, and the event source mappings of the template."""
        settings = load_settings(target_table=STACK_OUTPUTS["TargetTableName"],
                                 control_table=STACK_OUTPUTS["ControlTableName"])
        create_tables(settings, with_sources=False)
        self.mappings.extend([EsmConsumer(settings, "forward", FUNCTIONS["forward"]).start(),
                              EsmConsumer(settings, "reverse", FUNCTIONS["reverse"]).start()])
        # From now on the application reads the mode flag and writes where it says.
        assert self.workload is not None
        self.workload.stop()
        self.app = AppSimulator(settings, rate_per_s=15, seed=43, workers=2).start()

    # ------------------------------------------------------------------ commands
    def fill(self, line: str) -> str:
        for placeholder, value in self.placeholders.items():
            line = line.replace(placeholder, value)
        unknown = re.findall(r"<[^>]+>", line)
        assert not unknown, f"the runbook names {unknown} and the walkthrough cannot fill it in: {line}"
        return line

    def run_line(self, step: str, line: str, capsys: pytest.CaptureFixture[str]) -> None:
        line = self.fill(line)
        words = shlex.split(line)
        if words[0] == "export":
            name, _, value = words[1].partition("=")
            self.monkeypatch.setenv(name, value)
            return
        if words[:2] == ["make", "sam-build"]:
            return  # the artifact: tests/integration/test_artifact.py builds and checks it
        if words[0].endswith("sam") and words[1] == "deploy":
            self.deploy()
            return
        assert words[0] == "dynashift", f"step {step}: the walkthrough cannot run {line!r}"
        if words[1:3] == ["backup", "create"]:
            self.moto.sync_from(self.settings())
        started = time.monotonic()
        code = main(words[1:])
        out, err = capsys.readouterr()
        self.printed.append(f"$ {line}  ({time.monotonic() - started:.1f}s, exit {code})\n{out}{err}")
        assert code == 0, f"step {step}: `{line}` exited {code}:\n{out}\n{err}"
        assert "Traceback" not in out + err and "UserWarning" not in out + err, (line, out, err)
        if words[1:3] == ["backup", "create"]:
            self.learn_dry_run_lines(out)

    def learn_dry_run_lines(self, out: str) -> None:
        """The dry-run line `backup create` printed per table: its export fills `<export of TABLE>`."""
        self.moto.complete_exports()
        text = " ".join(out.split())
        for line in re.split(r"(?=dynashift backfill run --dry-run )", text)[1:]:
            table = re.search(r"--table (\S+)", line)
            location = re.search(r"--source export:s3://(\S+)", line)
            if table and location:
                self.placeholders[f"<export of {table.group(1)}>"] = location.group(1)

    def stop(self) -> None:
        if self.workload is not None:
            self.workload.stop()
        if self.app is not None:
            self.app.stop()
        for mapping in self.mappings:
            mapping.stop()


def app_target_keys(app: AppSimulator) -> set[Any]:
    """Every sc-main key any version the application wrote, in either mode, maps to."""
    keys = set(app.attempted_target)
    for (table, _), versions in app.attempted_legacy.items():
        for item in versions:
            with contextlib.suppress(QuarantineError):
                keys |= {app.definition.target_key(t) for t in app.definition.transform(table, item)} if item else set()
    return keys


@pytest.fixture
def walkthrough(fresh_sc_settings, monkeypatch, tmp_path) -> Iterator[Walkthrough]:
    moto = Moto()
    walk = Walkthrough(fresh_sc_settings.endpoint_url, moto, monkeypatch, tmp_path)
    try:
        yield walk
    finally:
        with contextlib.suppress(Exception):
            walk.stop()
        moto.stop()


@pytest.mark.timeout(1500)
def test_the_runbook_as_written_migrates_with_the_application_writing_and_loses_nothing(walkthrough, capsys):
    walk = walkthrough
    walk.production_before_dynashift()
    try:
        for step, lines in steps():
            for line in lines:
                walk.run_line(step, line, capsys)
    finally:
        print("\n".join(walk.printed))
    settings = walk.settings()
    # THEN the migration ended in mode new, finalized, and the dry runs wrote their reports
    state = read_mode(settings)
    assert state.mode == Mode.NEW and state.extra.get("finalized_at")
    for table in ("sc-accounts", "sc-repositories"):
        report = json.loads((walk.tmp_path / f"dry-run-{table}.json").read_text())
        assert report, table
    # AND every write the application acknowledged, in every mode, is in sc-main (authoritative now)
    assert walk.app is not None
    walk.app.pause()
    time.sleep(2)
    diff = diff_authoritative(settings, Mode.NEW, walk.app.expected_targets())
    stats = walk.app.stats
    assert diff.missing == [] and diff.mismatched == [] and diff.leftover == [], diff.summary()
    # (sc-main also holds the history and the first workload's items, which verify checked after each
    # switch; of the keys this application ever wrote, none may be left over from an older version)
    assert [key for key in diff.extra if key in app_target_keys(walk.app)] == [], diff.summary()
    assert stats.acknowledged_by_mode["old"] > 0 and stats.acknowledged_by_mode["new"] > 0 and stats.errors == 0
    # AND the switches ran on the Lambda stand-ins: no consumer checkpoint ever reached the control table
    items = aws.dynamodb(settings).scan(TableName=settings.control_table, ProjectionExpression="PK")["Items"]
    assert not [i for i in items if i["PK"]["S"].startswith("CHECKPOINT#")]
    # AND the users' own file in the backup bucket was left alone
    assert walk.moto.s3.get_object(Bucket=BUCKET, Key="assets/logo.png")["Body"].read() == b"the users' own file"
    assert os.environ["DYNASHIFT_BACKUP_BUCKET"] == BUCKET
