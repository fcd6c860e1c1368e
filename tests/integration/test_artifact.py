"""The deployable artifact: `sam build` output, imported and invoked on its own.

`make sam-build` (the Makefile's build-<Function> targets) builds every
function of template.yaml into .aws-sam/build/<Function>/. Each test below
runs a handler in a fresh interpreter started with ``-I -S -B``: no site
packages, no user site, no PYTHONPATH, no bytecode writes (Lambda's /var/task
is read-only), so the only place it can import dynashift and its dependencies
from is the build directory. It asserts that every non-stdlib module loaded
came from there, then invokes the handler with a recorded stream event against
DynamoDB Local. A dependency missing from requirements-lambda.txt, a package
the build forgot, or a handler that imports the CLI fails here, not in AWS.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfn_flip import load_yaml

from shared.core import aws
from shared.core.settings import PROJECT_ROOT, Settings
from tests.conftest import FIXTURES
from tests.integration.helpers import make_tables

pytestmark = pytest.mark.integration

BUILD_DIR = PROJECT_ROOT / ".aws-sam" / "build"
RESULT_MARK = "ARTIFACT-RESULT "

# Runs inside the clean interpreter. argv: build dir, handler ("pkg/module.function"), event file or "".
RUNNER = r"""
import json, sys, sysconfig, time
build, handler, event_file = sys.argv[1], sys.argv[2], sys.argv[3]
assert not any("site-packages" in p for p in sys.path), sys.path
sys.path.insert(0, build)
module_path, _, function_name = handler.rpartition(".")
started = time.perf_counter()
module = __import__(module_path.replace("/", "."), fromlist=[function_name])
import_ms = (time.perf_counter() - started) * 1000
stdlib = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
foreign = sorted(
    f"{name}: {mod.__file__}" for name, mod in list(sys.modules.items())
    if getattr(mod, "__file__", None) and not mod.__file__.startswith(build)
    and not any(mod.__file__.startswith(p) for p in stdlib)
)
result = None
if event_file:
    class Context:
        function_name = "artifact-test"
        function_version = "$LATEST"
        memory_limit_in_mb = 1024
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:artifact-test"
        aws_request_id = "artifact-test-request"
        def get_remaining_time_in_millis(self):
            return 300000
    with open(event_file) as f:
        event = json.load(f)
    result = getattr(module, function_name)(event, Context())
print("ARTIFACT-RESULT " + json.dumps({
    "module_file": module.__file__, "foreign": foreign, "import_ms": import_ms, "result": result,
    "loaded": sorted({n.split(".")[0] for n in sys.modules}),
}, default=str))
"""


def template_functions() -> dict[str, str]:
    """Function name -> Handler, for every function of template.yaml."""
    template = load_yaml((PROJECT_ROOT / "template.yaml").read_text())
    return {name: r["Properties"]["Handler"] for name, r in template["Resources"].items()
            if r["Type"] == "AWS::Serverless::Function"}


@pytest.fixture(scope="session")
def built() -> Path:
    """Build every function once per session, as CI and a deployment do."""
    result = subprocess.run(["make", "-s", "sam-build"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=1200, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return BUILD_DIR


def run_from_artifact(function: str, handler: str, env: dict[str, str], event: Path | None = None) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", RUNNER, str(BUILD_DIR / function), handler, str(event or "")],
        cwd="/", env=base | env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith(RESULT_MARK))
    return json.loads(line[len(RESULT_MARK):])


def lambda_env(settings: Settings) -> dict[str, str]:
    """What template.yaml's Globals give every function, pointed at DynamoDB Local."""
    return {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "DYNASHIFT_ENDPOINT_URL": settings.endpoint_url or "",
        "DYNASHIFT_TARGET_TABLE": settings.target_table,
        "DYNASHIFT_CONTROL_TABLE": settings.control_table,
        "DYNASHIFT_TABLE_NAMES": json.dumps(settings.table_names),
        "POWERTOOLS_SERVICE_NAME": "dynashift",
        "POWERTOOLS_METRICS_NAMESPACE": "dynashift",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }


@pytest.mark.parametrize("function", sorted(template_functions()))
def test_each_handler_imports_from_the_build_output_alone(built, function):
    # GIVEN the function's build directory and a clean interpreter
    handler = template_functions()[function]
    assert (built / function / handler.rpartition(".")[0]).with_suffix(".py").is_file()
    # WHEN its handler module is imported
    report = run_from_artifact(function, handler, {"AWS_DEFAULT_REGION": "us-east-1"})
    # THEN it and everything it loaded came from the build output
    assert report["module_file"].startswith(str(built / function))
    assert report["foreign"] == []
    # AND the handlers never pull in the CLI, the tests or the tools
    assert not set(report["loaded"]) & {"rich", "click", "moto", "cfn_flip", "pytest", "tests"}


def test_mirror_artifact_applies_a_recorded_stream_event(built, sc_settings, tmp_path):
    # GIVEN the tables on DynamoDB Local, and the recorded sc-accounts event
    # aimed at this test's physical accounts table
    make_tables(sc_settings)
    event = json.loads((FIXTURES / "stream_event_accounts.json").read_text())
    accounts = sc_settings.physical_name("sc-accounts")
    for record in event["Records"]:
        record["eventSourceARN"] = record["eventSourceARN"].replace("table/sc-accounts/", f"table/{accounts}/")
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(event))
    # WHEN the built MirrorFunction handles it, with nothing but its artifact
    report = run_from_artifact("MirrorFunction", template_functions()["MirrorFunction"],
                               lambda_env(sc_settings), event_file)
    # THEN no record failed, and sc-main holds the account's profile item
    assert report["foreign"] == []
    assert report["result"] == {"batchItemFailures": []}
    client = aws.dynamodb(sc_settings)
    profile = client.get_item(TableName=sc_settings.target_table,
                              Key={"PK": {"S": "ACCOUNT#acc-1001"}, "SK": {"S": "PROFILE"}}, ConsistentRead=True)
    assert profile.get("Item", {}).get("entity") == {"S": "account"}


# ------------------------------------------- deploying only the build (issue 13)
SAM = PROJECT_ROOT / ".venv-sam" / "bin" / "sam"


def test_sam_deploy_without_a_build_stops_at_once(tmp_path):
    # GIVEN the project's template and samconfig.toml, and no `make sam-build` output
    shutil.copy(PROJECT_ROOT / "template.yaml", tmp_path)
    shutil.copy(PROJECT_ROOT / "samconfig.toml", tmp_path)
    (tmp_path / "backfill").mkdir()
    shutil.copy(PROJECT_ROOT / "backfill" / "statemachine.asl.json", tmp_path / "backfill")
    (tmp_path / ".venv").mkdir()  # what a plain deploy of template.yaml would zip with CodeUri "."
    # WHEN a plain `sam deploy` runs (no credentials: nothing may reach AWS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {
        "SAM_CLI_TELEMETRY": "0", "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    result = subprocess.run([str(SAM), "deploy"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            check=False, env=env)
    # THEN it refuses before packaging anything, naming the build template it wants
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Template file not found" in output and ".aws-sam/build/template.yaml" in output, output
    assert not (tmp_path / ".aws-sam").exists()


def test_built_template_ships_only_the_build_folders(built):
    # GIVEN the template `make sam-build` wrote (the one samconfig.toml deploys)
    template = load_yaml((built / "template.yaml").read_text())
    # THEN every function's code is its own build folder, never the project directory
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            assert resource["Properties"]["CodeUri"] == name, (name, resource["Properties"]["CodeUri"])
            assert not (built / name / ".venv").exists() and not (built / name / ".cache").exists()


def test_the_artifact_ships_no_cli_demo_or_simulator(built):
    # GIVEN every function's build folder
    for function in template_functions():
        shipped = {p.relative_to(built / function).as_posix() for p in (built / function / "shared").rglob("*.py")}
        # THEN the library is there, but not its CLI or its local stand-ins (demo, simulator, engine)
        assert "shared/protocol/apply.py" in shipped and "shared/streams/mirror.py" in shipped, sorted(shipped)
        assert not {p for p in shipped if p.startswith(("shared/cli/", "shared/sim/"))}, function
        # nor the sc migration's test data and workload (its definition ships)
        assert "shared/sc/transform.py" in shipped, function
        assert not shipped & {"shared/sc/seed.py", "shared/sc/workload.py"}, function
