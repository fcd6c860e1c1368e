"""The backfill in AWS, on DynamoDB Local: the Lambda handlers driven by the real state machine.

`AslDriver` runs `backfill/statemachine.asl.json` in Python: it follows the
definition's own states (Task, Map, Choice, Wait, Succeed, Fail), its paths,
ItemSelector, OutputPath, ResultPath and Catch, and calls the handler that each
`${...FunctionArn}` substitution stands for, with a fake Lambda context. A
construct it does not know fails the test, so a change to the definition is
either understood here or noticed.

The fake context gives each invocation a budget of pages: `run_unit` asks for
the remaining time exactly once before each page, and after `pages` asks the
time left falls below the margin, as a Lambda nearing its limit would see.

Knobs for speed: a short fence (registry refresh and margin of 0.2 s), unit
leases of 5 s, pages of 25 items.
"""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from backfill.lambda_unit import BackfillInput, RunSpec
from backfill.run import status
from backfill.units import UnitStore
from handlers.backfill import finish_handler, plan_handler, unit_handler
from shared.core import aws
from shared.core.errors import UsageError
from shared.core.settings import PROJECT_ROOT, Settings, get_settings
from shared.sc.seed import seed
from shared.sc.workload import Workload
from shared.sim.live import MirrorThread, WorkloadThread
from shared.verify.convergence import check_tables
from tests.integration.helpers import make_tables

pytestmark = pytest.mark.integration

ASL_PATH = PROJECT_ROOT / "backfill" / "statemachine.asl.json"
FUNCTIONS: dict[str, Callable[[dict[str, Any], Any], dict[str, Any]]] = {
    "${BackfillPlanFunctionArn}": plan_handler,
    "${BackfillUnitFunctionArn}": unit_handler,
    "${BackfillFinishFunctionArn}": finish_handler,
}
PAGE_ITEMS = 25
PAGES_PER_INVOCATION = 2
MARGIN_S = 30.0


class ExecutionFailed(Exception):
    """The execution ended in a Fail state (or with an uncaught error), as Step Functions reports it."""

    def __init__(self, error: str, cause: str) -> None:
        super().__init__(f"{error}: {cause}")
        self.error, self.cause = error, cause


class Killed(BaseException):
    """The Lambda runtime stopping an invocation dead (not an exception the code may catch)."""


class FakeContext:
    """A Lambda context whose remaining time falls below the margin after `pages` asks."""

    function_name = "dynashift-backfill-test"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:dynashift-backfill-test"

    def __init__(self, pages: int = PAGES_PER_INVOCATION, on_ask: Callable[[int], None] | None = None) -> None:
        self.pages = pages
        self.asks = 0
        self.on_ask = on_ask
        self.aws_request_id = f"req-{id(self):x}"

    def get_remaining_time_in_millis(self) -> int:
        self.asks += 1
        if self.on_ask:
            self.on_ask(self.asks)
        return 900_000 if self.asks <= self.pages else int(MARGIN_S * 1000) - 1


# ------------------------------------------------------------------ ASL driver
class AslDriver:
    """Runs the state machine definition the way Step Functions would, for the subset it uses."""

    def __init__(self, definition: dict[str, Any], execution_name: str, map_threads: int = 4) -> None:
        self.definition = definition
        self.execution = {"Name": execution_name}
        self.map_threads = map_threads
        self.invocations: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.waits: list[int] = []
        self.lock = threading.Lock()

    def run(self, execution_input: dict[str, Any]) -> Any:
        return self._states(self.definition, execution_input, {"Execution": self.execution})

    def _states(self, machine: dict[str, Any], data: Any, context: dict[str, Any]) -> Any:
        name = machine["StartAt"]
        while True:
            state = machine["States"][name]
            kind = state["Type"]
            if kind == "Choice":
                name = self._choose(state, data)
                continue
            if kind == "Succeed":
                return data
            if kind == "Fail":
                raise ExecutionFailed(state["Error"], state["Cause"])
            if kind in ("Task", "Map"):
                try:
                    data = self._task(state, data, context) if kind == "Task" else self._map(state, data, context)
                except ExecutionFailed as failed:
                    catcher = next((c for c in state.get("Catch", []) if "States.ALL" in c["ErrorEquals"]
                                    or failed.error in c["ErrorEquals"]), None)
                    if catcher is None:
                        raise
                    assert catcher["ResultPath"].startswith("$.") and "." not in catcher["ResultPath"][2:]
                    data = {**data, catcher["ResultPath"][2:]: {"Error": failed.error, "Cause": failed.cause}}
                    name = catcher["Next"]
                    continue
            elif kind == "Wait":
                seconds = _path(data, state["SecondsPath"], context)
                assert isinstance(seconds, int) and seconds >= 0, f"Wait.SecondsPath gave {seconds!r}"
                with self.lock:
                    self.waits.append(seconds)
                time.sleep(seconds)
            else:
                raise AssertionError(f"the driver does not know state type {kind} ({name})")
            if state.get("End"):
                return data
            name = state["Next"]

    def _task(self, state: dict[str, Any], data: Any, context: dict[str, Any]) -> Any:
        assert state["Resource"] == "arn:aws:states:::lambda:invoke"
        known = {"Type", "Resource", "Parameters", "OutputPath", "Retry", "Catch", "Next", "End", "Comment"}
        assert set(state) <= known, f"unsupported Task fields {set(state) - known}"
        params = _resolve(state["Parameters"], data, context)
        handler = FUNCTIONS[params["FunctionName"]]
        payload = json.loads(json.dumps(params["Payload"]))  # what crosses the wire is JSON
        try:
            result = handler(payload, FakeContext())
        except Exception as exc:  # the function error, named by its class (no Retry here: retries exhausted)
            raise ExecutionFailed(type(exc).__name__, str(exc)) from exc
        json.dumps(result)  # must be JSON-able
        with self.lock:
            self.invocations.append((params["FunctionName"], payload, result))
        return _path({"Payload": result, "StatusCode": 200}, state.get("OutputPath", "$"), context)

    def _map(self, state: dict[str, Any], data: Any, context: dict[str, Any]) -> Any:
        processor = state["ItemProcessor"]
        assert processor["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
        items = _path(data, state["ItemsPath"], context)

        def child(index: int, item: Any) -> Any:
            item_context = {**context, "Map": {"Item": {"Index": index, "Value": item}}}
            selected = _resolve(state["ItemSelector"], data, item_context)
            return self._states(processor, selected, {"Execution": {"Name": f"{self.execution['Name']}/{index}"}})

        def settled(index: int, item: Any) -> Any:
            try:
                return child(index, item)
            except ExecutionFailed as failed:
                return failed

        workers = min(self.map_threads, state["MaxConcurrency"])
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(settled, range(len(items)), items))
        failed = [r for r in results if isinstance(r, ExecutionFailed)]
        if failed and len(failed) * 100 > state.get("ToleratedFailurePercentage", 0) * len(items):
            raise ExecutionFailed("States.ExceedToleratedFailureThreshold",
                                  f"{len(failed)} of {len(items)} items failed; first: {failed[0]}")
        assert "ResultPath" in state and state["ResultPath"] is None, "the Map must not carry its results on"
        del results
        return data

    @staticmethod
    def _choose(state: dict[str, Any], data: Any) -> str:
        for rule in state["Choices"]:
            value = _path(data, rule["Variable"], {})  # a missing variable is a runtime error, as in AWS
            if "BooleanEquals" in rule:
                matched = value is rule["BooleanEquals"]
            elif "NumericGreaterThan" in rule:
                matched = isinstance(value, int | float) and value > rule["NumericGreaterThan"]
            else:
                raise AssertionError(f"the driver does not know the Choice rule {rule}")
            if matched:
                return rule["Next"]
        return state["Default"]


def _path(data: Any, path: str, context: dict[str, Any]) -> Any:
    if path.startswith("$$"):
        data, path = context, path[1:]
    assert path == "$" or path.startswith("$."), f"unsupported path {path}"
    for part in path[2:].split(".") if path != "$" else []:
        assert isinstance(data, dict) and part in data, f"path {path}: no {part!r} (States.Runtime in AWS)"
        data = data[part]
    return data


def _resolve(template: Any, data: Any, context: dict[str, Any]) -> Any:
    if isinstance(template, dict):
        out = {}
        for key, value in template.items():
            if key.endswith(".$"):
                out[key[:-2]] = copy.deepcopy(_path(data, value, context))
            else:
                out[key] = _resolve(value, data, context)
        return out
    return template


# -------------------------------------------------------------------- fixtures
@pytest.fixture
def lambda_env(sc_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The handlers read settings from the environment, as in Lambda (Globals in template.yaml)."""
    env = {
        "DYNASHIFT_ENDPOINT_URL": sc_settings.effective_endpoint or "",
        "DYNASHIFT_TABLE_NAMES": json.dumps(sc_settings.table_names),
        "DYNASHIFT_TARGET_TABLE": sc_settings.target_table,
        "DYNASHIFT_CONTROL_TABLE": sc_settings.control_table,
        "DYNASHIFT_STALE_WRITER_REFRESH_S": "0.2",
        "DYNASHIFT_CONSISTENCY_MARGIN_S": "0.2",
        "DYNASHIFT_BACKFILL_LEASE_S": "5",
        "DYNASHIFT_BACKFILL_DEADLINE_MARGIN_S": str(MARGIN_S),
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    settings = get_settings()
    make_tables(settings)
    yield settings
    get_settings.cache_clear()


def _seed(settings: Settings, accounts: int, repos: int) -> int:
    asyncio.run(seed(settings, accounts, repos, 0.03, 5))
    client = aws.dynamodb(settings)
    return sum(
        client.describe_table(TableName=settings.physical_name(t))["Table"]["ItemCount"]
        for t in ("sc-accounts", "sc-repositories")
    )


def _unit(settings: Settings, table: str, number: int) -> Any:
    async def load() -> Any:
        async with aws.aio_dynamodb(settings) as client:
            run = await UnitStore(client, settings.control_table).load(table)
        return next(u for u in run.units if u.number == number)

    return asyncio.run(load())


def _registry(settings: Settings) -> list[dict[str, Any]]:
    return aws.dynamodb(settings).query(
        TableName=settings.control_table, KeyConditionExpression="PK = :pk",
        ExpressionAttributeValues={":pk": {"S": "STALE_WRITERS"}}, ConsistentRead=True,
    )["Items"]


def _plan(settings: Settings, **request: Any) -> dict[str, Any]:
    body = {"segments": 2, "page_items": PAGE_ITEMS, "allow_no_mirror": True, **request}
    return plan_handler({"request": body, "execution": "exec-1"}, FakeContext())


# ------------------------------------------------------------------------ tests
def test_state_machine_backfills_while_the_application_writes(lambda_env):
    # GIVEN seeded legacy tables, the mirror running and a live workload
    settings = lambda_env
    _seed(settings, 30, 120)
    mirror = MirrorThread(settings, start_from="latest").start()
    workload = WorkloadThread(settings, Workload(seed=3), rate_per_s=10).start()
    try:
        # WHEN the state machine runs, each unit invocation getting time for two pages
        driver = AslDriver(json.loads(ASL_PATH.read_text()), "exec-live")
        result = driver.run({"table": "all", "segments": 2, "page_items": PAGE_ITEMS})
    finally:
        workload.stop()
        mirror.stop()
    # THEN the Finish step reports both tables, and the run's stale-writer registration is gone
    assert result["run_id"] == "exec-live" and set(result["tables"]) == {"sc-accounts", "sc-repositories"}
    assert _registry(settings) == []
    # AND units were worked over several invocations, each stopping at its page budget
    unit_calls = [(p, r) for f, p, r in driver.invocations if f == "${BackfillUnitFunctionArn}"]
    per_unit = Counter((r["table"], r["unit"]) for _, r in unit_calls)
    assert len(per_unit) == 4 and max(per_unit.values()) >= 2
    assert all(r["pages"] == PAGES_PER_INVOCATION for _, r in unit_calls if not r["done"] and r["wait_s"] == 0)
    # AND every unit was completed exactly once, and sc-main equals the transform of the legacy tables
    rows = status(settings)
    assert all(r["units_done"] == r["units_total"] == 2 and r["max_completions_per_unit"] == 1 for r in rows)
    assert all(r["finished"] for r in rows)
    assert len(workload.acknowledged) > 5
    convergence = check_tables(settings)
    assert convergence.ok, convergence.summary()


def test_unit_invocations_resume_and_a_racing_invocation_does_nothing(lambda_env, monkeypatch):
    # GIVEN a planned run over a quiet, seeded table, with leases long enough to outlast the racer
    # (it runs while the first invocation's event loop is blocked, heartbeats included)
    monkeypatch.setenv("DYNASHIFT_BACKFILL_LEASE_S", "10")
    get_settings.cache_clear()
    settings = get_settings()
    total = _seed(settings, 40, 160)
    plan = _plan(settings)
    run = plan["run"]
    assert {"table": "sc-repositories", "unit": 1} in plan["units"]
    item = {"run": run, "table": "sc-repositories", "unit": 1}

    # WHEN a second "Lambda" is invoked on the unit while the first holds it (at the first page)
    raced: dict[str, Any] = {}

    def race(ask: int) -> None:
        if ask == 1:
            thread = threading.Thread(target=lambda: raced.update(unit_handler(dict(item), FakeContext())))
            thread.start()
            thread.join()

    first = unit_handler(dict(item), FakeContext(on_ask=race))
    # THEN the racer did no work and was told to wait for the lease
    assert raced["done"] is False and raced["pages"] == 0 and raced["wait_s"] >= 1 and raced["read"] == 0
    # AND the first stopped after its two pages with a checkpoint, and gave the unit back
    assert first["done"] is False and first["pages"] == PAGES_PER_INVOCATION and first["wait_s"] == 0
    assert first["read"] == PAGES_PER_INVOCATION * PAGE_ITEMS
    unit = _unit(settings, "sc-repositories", 1)
    assert unit.status == "pending" and unit.cursor is not None and unit.owner is None

    # WHEN invoked again (as the Choice loop does) until done
    outputs = [first]
    while not outputs[-1]["done"]:
        outputs.append(unit_handler(outputs[-1], FakeContext()))
        assert len(outputs) < 20
    # THEN each invocation continued where the last one stopped, and the unit completed once
    reads = [o["read"] for o in outputs]
    assert reads == sorted(reads) and reads[0] < reads[-1] and len(outputs) >= 2
    assert outputs[-1]["completions"] == 1
    # AND an invocation on a done unit returns done at once
    again = unit_handler(dict(item), FakeContext())
    assert again["done"] is True and again["pages"] == 0 and again["completions"] == 1

    # WHEN the other units run and the run is finished
    for other in plan["units"]:
        out = {"run": run, **other}
        while not out.get("done"):
            out = unit_handler(out, FakeContext(pages=1000))
    finished = finish_handler({"run": run}, FakeContext())
    # THEN every source item was read exactly once over all the invocations, and sc-main converged
    assert sum(v["read"] for v in finished["totals"].values()) == total
    convergence = check_tables(settings)
    assert convergence.ok, convergence.summary()


def test_a_killed_invocation_is_resumed_from_its_checkpoint(lambda_env):
    # GIVEN a planned run
    settings = lambda_env
    _seed(settings, 40, 200)
    plan = _plan(settings)
    item = {"run": plan["run"], "table": "sc-repositories", "unit": 0}

    # WHEN an invocation is killed dead before its third page (after two checkpoints)
    def kill(ask: int) -> None:
        if ask == 3:
            raise Killed

    with pytest.raises(Killed):
        unit_handler(dict(item), FakeContext(pages=1000, on_ask=kill))
    # THEN the unit stays leased to the dead invocation, with the checkpoint of its two pages
    unit = _unit(settings, "sc-repositories", 0)
    assert unit.status == "running" and unit.read == 2 * PAGE_ITEMS and unit.cursor is not None

    # WHEN the next invocation comes while that lease still runs
    early = unit_handler(dict(item), FakeContext())
    # THEN it does nothing and says how long to wait
    assert early["done"] is False and early["pages"] == 0 and 1 <= early["wait_s"] <= 6
    assert early["read"] == 2 * PAGE_ITEMS

    # WHEN it comes again after the wait (the state machine's WaitForLease)
    time.sleep(early["wait_s"])
    resumed = unit_handler(dict(item), FakeContext(pages=1000))
    # THEN it resumes from the checkpoint and finishes: nothing read twice, completed once
    assert resumed["done"] is True and resumed["completions"] == 1
    segment_items = _count_segment(settings, "sc-repositories", 0, 2)
    assert resumed["read"] == segment_items
    # AND once the other units are done too, finishing converges
    for other in plan["units"]:
        out = {"run": plan["run"], **other}
        while not out.get("done"):
            out = unit_handler(out, FakeContext(pages=1000))
    finish_handler({"run": plan["run"]}, FakeContext())
    convergence = check_tables(settings)
    assert convergence.ok, convergence.summary()


def test_finish_refuses_while_units_are_not_done(lambda_env):
    # GIVEN a planned run whose units never ran
    plan = _plan(lambda_env, table="sc-accounts")
    # WHEN Finish is invoked / THEN it fails with one line naming the run, and keeps the registration
    from shared.core.errors import BackfillIncomplete

    with pytest.raises(BackfillIncomplete, match="exec-1 is not finished"):
        finish_handler({"run": plan["run"]}, FakeContext())
    assert len(_registry(lambda_env)) == 1


def test_failed_units_are_recorded_and_a_new_execution_resumes(lambda_env, monkeypatch):
    # GIVEN seeded legacy tables, and a unit function that fails on its first invocation of unit 1
    settings = lambda_env
    _seed(settings, 10, 30)
    failing = {"left": 1}

    def flaky_unit(event: dict[str, Any], context: Any) -> dict[str, Any]:
        if event["unit"] == 1 and failing["left"]:
            failing["left"] -= 1
            from shared.core.errors import StoreError

            raise StoreError("control table refused the checkpoint of unit 1")
        return unit_handler(event, context)

    monkeypatch.setitem(FUNCTIONS, "${BackfillUnitFunctionArn}", flaky_unit)
    definition = json.loads(ASL_PATH.read_text())
    execution_input = {"table": "sc-accounts", "segments": 2, "page_items": PAGE_ITEMS, "allow_no_mirror": True}
    # WHEN the execution runs
    with pytest.raises(ExecutionFailed) as failed:
        AslDriver(definition, "exec-fail").run(execution_input)
    # THEN it ends Failed (the console shows it), after RecordFailure ran instead of Finish
    assert failed.value.error == "BackfillIncomplete"
    # AND `backfill status` shows the run failed, with the reason, not done
    (row,) = [r for r in status(settings) if r["table"] == "sc-accounts"]
    assert row["failed"] is True and row["finished"] is False
    assert "exec-fail" in row["failure"] and "States.ExceedToleratedFailureThreshold" in row["failure"]
    assert "units not done" in row["failure"]
    # WHEN the execution is started again / THEN it resumes and finishes, and the failure mark is gone
    result = AslDriver(definition, "exec-again").run(execution_input)
    assert result["tables"] == ["sc-accounts"]
    (row,) = [r for r in status(settings) if r["table"] == "sc-accounts"]
    assert row["finished"] is True and row["failed"] is False and row["failure"] is None
    assert row["units_done"] == row["units_total"] == 2


def test_record_failure_marks_the_run_failed_and_the_cli_shows_it(lambda_env):
    # GIVEN a planned run whose units never ran
    plan = _plan(lambda_env, table="sc-accounts")
    # WHEN the Finish function gets RecordFailure's input (what the Catch caught)
    failure = {"Error": "States.ExceedToleratedFailureThreshold", "Cause": "1 of 2 items failed"}
    result = finish_handler({"run": plan["run"], "failure": failure}, FakeContext())
    # THEN it records the run as failed with the reason
    assert result["failed"] is True and result["units_not_done"] == {"sc-accounts": 2}
    (row,) = [r for r in status(lambda_env) if r["table"] == "sc-accounts"]
    assert row["failed"] is True and "ExceedToleratedFailureThreshold" in row["failure"]
    # AND `dynashift backfill status` prints FAILED and the reason, not "done"
    from click.testing import CliRunner

    from shared.cli.main import cli

    output = CliRunner().invoke(cli, ["backfill", "status"], catch_exceptions=False).output
    assert "FAILED" in output and "1 of 2 items failed" in output
    # AND a new Plan (the next execution) clears the mark
    _plan(lambda_env, table="sc-accounts")
    (row,) = [r for r in status(lambda_env) if r["table"] == "sc-accounts"]
    assert row["failed"] is False and row["failure"] is None


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"segments": 0}, "segments"),
        ({"write_mode": "batch"}, "write_mode"),
        ({"tabel": "all"}, "tabel"),
        ({"page_items": "many"}, "page_items"),
    ],
)
def test_bad_execution_input_is_one_clear_usage_error(raw, problem):
    # GIVEN a malformed execution input / WHEN parsed / THEN a UsageError names the field
    with pytest.raises(UsageError, match=problem):
        BackfillInput.parse(raw)


def test_unit_event_without_a_run_is_refused():
    # GIVEN a unit event that lost its run / WHEN handled / THEN a UsageError says so
    with pytest.raises(UsageError, match="malformed run"):
        RunSpec.from_json({"run_id": "x"})


def _count_segment(settings: Settings, table: str, segment: int, total: int) -> int:
    client = aws.dynamodb(settings)
    count, kwargs = 0, {"TableName": settings.physical_name(table), "Segment": segment, "TotalSegments": total,
                        "Select": "COUNT"}
    while True:
        page = client.scan(**kwargs)
        count += page["Count"]
        if "LastEvaluatedKey" not in page:
            return count
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]



def test_the_lambda_code_imports_without_the_cli_dependencies():
    # GIVEN an interpreter where rich, click, cfn-flip and moto cannot be imported (they are not shipped to Lambda)
    code = (
        "import sys\n"
        "for name in ('rich', 'click', 'cfn_flip', 'moto'):\n"
        "    sys.modules[name] = None\n"
        "import handlers.backfill, backfill.lambda_unit, backfill.run, backfill.export, backfill.worker\n"
    )
    # WHEN the backfill handlers and everything they import lazily are imported / THEN that works
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
