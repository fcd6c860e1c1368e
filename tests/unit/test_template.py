"""template.yaml: it lints, it transforms offline, and the mirror's role is least privilege.

Nothing here calls AWS. The SAM transform runs with aws-sam-translator and a
managed-policy loader that must never be asked (our role is our own, so SAM
has no managed policy to attach).
"""

from __future__ import annotations

import copy
import importlib
import json
import re
from functools import cache
from typing import Any

import boto3
import pytest
from cfn_flip import load_yaml
from cfnlint.api import lint
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

from shared.core.definition import get_definition
from shared.core.settings import PROJECT_ROOT, load_settings
from shared.ops.tables import TEMPLATE_PATH

LEGACY_TABLE_PARAMS = ("AccountsTableName", "RepositoriesTableName")
LEGACY_STREAM_PARAMS = ("AccountsStreamArn", "RepositoriesStreamArn")

# The only statements allowed a Resource of "*", and why AWS requires it.
STAR_RESOURCE_ALLOWED = {
    "XRayTracing": "xray:PutTraceSegments and xray:PutTelemetryRecords have no resource types",
    "StateMachineLogDelivery": "CloudWatch Logs' vended-log delivery actions have no resource types",
    "ReadMirrorMappings": "lambda:ListEventSourceMappings has no resource type",
}
# The exact actions of StateMachineLogDelivery (the Step Functions guide's list for logging to CloudWatch Logs).
LOG_DELIVERY_ACTIONS = {
    "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies", "logs:DescribeLogGroups",
}

# The mirror's exact grants, per resource (the key is how the template names it).
# Changing what the mirror calls must change this map and the template together.
EXPECTED_GRANTS = {
    "stream:AccountsStreamArn": {"dynamodb:DescribeStream", "dynamodb:GetShardIterator", "dynamodb:GetRecords"},
    "stream:RepositoriesStreamArn": {"dynamodb:DescribeStream", "dynamodb:GetShardIterator", "dynamodb:GetRecords"},
    # the event source mapping lists the table's streams (AWSLambdaDynamoDBExecutionRole's fourth action)
    "streams:AccountsTableName": {"dynamodb:ListStreams"},
    "streams:RepositoriesTableName": {"dynamodb:ListStreams"},
    # conditional Put/Delete (also as TransactWriteItems actions), GetItem after a collision
    "TargetTable": {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem"},
    # quarantine (UpdateItem), key waiters, stale-writer registry, the mode flag (GetItem, once per batch)
    "ControlTable": {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                     "dynamodb:Query", "dynamodb:BatchGetItem"},
    # strong read + ConditionCheck of the validated write: read-only
    "table:AccountsTableName": {"dynamodb:GetItem", "dynamodb:ConditionCheckItem"},
    "table:RepositoriesTableName": {"dynamodb:GetItem", "dynamodb:ConditionCheckItem"},
    "MirrorFailureQueue": {"sqs:SendMessage"},
    "MirrorFunctionLogGroup": {"logs:CreateLogStream", "logs:PutLogEvents"},
    "*": {"xray:PutTraceSegments", "xray:PutTelemetryRecords"},
}

# Reverse replication's exact grants (ReverseMirrorFunctionRole).
REVERSE_EXPECTED_GRANTS = {
    "stream:TargetTable": {"dynamodb:DescribeStream", "dynamodb:GetShardIterator", "dynamodb:GetRecords"},
    "streams:TargetTable": {"dynamodb:ListStreams"},
    # strongly consistent reads of an owner's target items; GSI1 to find memberships / a moved repository
    "TargetTable": {"dynamodb:BatchGetItem"},
    "index:TargetTable/GSI1": {"dynamodb:Query"},
    # the rebuilt legacy item (Put/Delete inside TransactWriteItems) and its strong read
    "table:AccountsTableName": {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem"},
    "table:RepositoriesTableName": {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem"},
    # mode flag, per-owner version (Update in the transaction), quarantine, the batch's receipt (PutItem)
    "ControlTable": {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                     "dynamodb:BatchGetItem"},
    "MirrorFailureQueue": {"sqs:SendMessage"},
    "ReverseMirrorFunctionLogGroup": {"logs:CreateLogStream", "logs:PutLogEvents"},
    "*": {"xray:PutTraceSegments", "xray:PutTelemetryRecords"},
}

LEGACY_READ_ACTIONS = {"dynamodb:GetItem", "dynamodb:ConditionCheckItem"}
STREAM_READ_ACTIONS = {"dynamodb:DescribeStream", "dynamodb:GetShardIterator", "dynamodb:GetRecords"}
# What a Lambda event source mapping on a DynamoDB stream calls with the function's role
# (the actions of the managed policy AWSLambdaDynamoDBExecutionRole, minus its log writes).
EVENT_SOURCE_MAPPING_ACTIONS = STREAM_READ_ACTIONS | {"dynamodb:ListStreams"}


@cache
def _template_text() -> str:
    return TEMPLATE_PATH.read_text()


def template() -> dict[str, Any]:
    return copy.deepcopy(load_yaml(_template_text()))


@cache
def _translated() -> dict[str, Any]:
    """The SAM transform, offline: packaged code location, fixed region, no IAM lookups."""
    source = template()
    for resource in source["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://dynashift-artifacts/mirror.zip"  # what `sam package` does
        if resource["Type"] == "AWS::Serverless::StateMachine":
            resource["Properties"]["DefinitionUri"] = "s3://dynashift-artifacts/backfill.asl.json"  # likewise

    def no_managed_policies() -> dict[str, str]:
        raise AssertionError("SAM asked for managed policies: a function uses a SAM-generated role")

    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name="us-east-1"))
    return translator.translate(source, parameter_values={}, get_managed_policy_map=no_managed_policies)


def translated() -> dict[str, Any]:
    return copy.deepcopy(_translated())


def resources_of(doc: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in doc["Resources"].items() if r["Type"] == type_}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def policy_statements(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(owner, statement) for every IAM statement: functions' Policies and AWS::IAM::* resources."""
    found = []
    for name, resource in doc["Resources"].items():
        props = resource.get("Properties", {})
        documents = []
        if resource["Type"] == "AWS::Serverless::Function":
            documents = [p for p in as_list(props.get("Policies", [])) if isinstance(p, dict) and "Statement" in p]
        elif resource["Type"] in ("AWS::IAM::Role", "AWS::IAM::User", "AWS::IAM::Group"):
            documents = [p["PolicyDocument"] for p in props.get("Policies", [])]
        elif resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy"):
            documents = [props["PolicyDocument"]]
        for document in documents:
            found.extend((name, s) for s in as_list(document["Statement"]) for s in _branches(s))
    return found


def _branches(statement: Any) -> list[dict[str, Any]]:
    """A conditional statement (`!If [cond, statement, !Ref AWS::NoValue]`) counts with every
    branch it may take: least privilege is judged on the widest deployment."""
    if isinstance(statement, dict) and set(statement) == {"Fn::If"}:
        _, when_true, when_false = statement["Fn::If"]
        return [b for branch in (when_true, when_false) if branch != {"Ref": "AWS::NoValue"} for b in _branches(branch)]
    return [statement]


def resource_label(resource: Any) -> str:
    """A readable name for a statement Resource, as EXPECTED_GRANTS spells it."""
    if resource == "*":
        return "*"
    if isinstance(resource, dict) and "Ref" in resource and resource["Ref"] in LEGACY_STREAM_PARAMS:
        return "stream:" + resource["Ref"]
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        target = resource["Fn::GetAtt"]
        name, attribute = target if isinstance(target, list) else target.split(".", 1)
        return f"stream:{name}" if attribute == "StreamArn" else name
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        index = re.fullmatch(r"\$\{(\w+)\.Arn\}/index/(\w+)", resource["Fn::Sub"])
        if index:
            return f"index:{index.group(1)}/{index.group(2)}"
        streams = re.fullmatch(r"\$\{(\w+)\.Arn\}/stream/\*", resource["Fn::Sub"])
        if streams:
            return f"streams:{streams.group(1)}"
        for param in LEGACY_TABLE_PARAMS:
            if resource["Fn::Sub"].endswith(":table/${" + param + "}"):
                return "table:" + param
            if resource["Fn::Sub"].endswith(":table/${" + param + "}/stream/*"):
                return "streams:" + param
        s3 = re.fullmatch(r"arn:\$\{AWS::Partition\}:s3:::\$\{(\w+)\}(/\$\{\w+\})?(/\*)?", resource["Fn::Sub"])
        if s3:
            return f"s3:{s3.group(1)}{s3.group(2) or ''}{s3.group(3) or ''}"
        states = re.fullmatch(
            r"arn:\$\{AWS::Partition\}:states:\$\{AWS::Region\}:\$\{AWS::AccountId\}:(\w+):(\S+)", resource["Fn::Sub"]
        )
        if states:
            return f"states:{states.group(1)}:{states.group(2)}"
    raise AssertionError(f"unrecognised policy resource {resource!r}")


def grants(doc: dict[str, Any], role: str | None = None) -> dict[str, set[str]]:
    """Actions per resource label, of one role (or of every policy in the template)."""
    result: dict[str, set[str]] = {}
    for owner, statement in policy_statements(doc):
        if role is not None and owner != role:
            continue
        assert statement["Effect"] == "Allow"
        for resource in as_list(statement["Resource"]):
            result.setdefault(resource_label(resource), set()).update(as_list(statement["Action"]))
    return result


def star_violations(doc: dict[str, Any]) -> list[str]:
    problems = []
    for name, resource in doc["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function" and any(
            isinstance(p, str) or (isinstance(p, dict) and "Statement" not in p)
            for p in as_list(resource.get("Properties", {}).get("Policies", []))
        ):
            problems.append(f"{name}: managed policy or SAM policy template (statements not reviewable here)")
        if resource["Type"].startswith("AWS::IAM::") and resource.get("Properties", {}).get("ManagedPolicyArns"):
            problems.append(f"{name}: managed policies {resource['Properties']['ManagedPolicyArns']}")
    for owner, statement in policy_statements(doc):
        sid = statement.get("Sid", "<no Sid>")
        for key in ("NotAction", "NotResource"):
            if key in statement:
                problems.append(f"{owner}/{sid}: {key} grants everything it does not name")
        for action in as_list(statement.get("Action", [])):
            if "*" in action:
                problems.append(f"{owner}/{sid}: wildcard action {action}")
        if "*" in as_list(statement.get("Resource", [])):
            if sid not in STAR_RESOURCE_ALLOWED:
                problems.append(f"{owner}/{sid}: Resource '*'")
            elif sid == "StateMachineLogDelivery" and set(as_list(statement["Action"])) != LOG_DELIVERY_ACTIONS:
                problems.append(f"{owner}/{sid}: Resource '*' for more than log delivery")
            elif sid == "XRayTracing" and not all(a.startswith("xray:") for a in as_list(statement["Action"])):
                problems.append(f"{owner}/{sid}: Resource '*' for more than X-Ray")
            elif sid == "ReadMirrorMappings" and as_list(statement["Action"]) != ["lambda:ListEventSourceMappings"]:
                problems.append(f"{owner}/{sid}: Resource '*' for more than listing event source mappings")
    return problems


# ------------------------------------------------------------------ cfn-lint
def test_cfn_lint_reports_nothing():
    # GIVEN template.yaml / WHEN cfn-lint checks it (errors and warnings)
    matches = lint(_template_text())
    # THEN there is nothing to report
    assert [str(m) for m in matches] == []


def test_cfn_lint_is_really_checking():
    # GIVEN the template with a log retention CloudWatch does not offer
    broken = _template_text().replace("RetentionInDays: !Ref LogRetentionDays", "RetentionInDays: 2")
    assert broken != _template_text()
    # WHEN cfn-lint checks it / THEN it reports an error
    assert any(m.rule.id.startswith("E") for m in lint(broken))


def test_translated_template_lints_clean():
    # GIVEN the CloudFormation that SAM produces / WHEN cfn-lint checks it / THEN nothing to report
    assert [str(m) for m in lint(json.dumps(translated()))] == []


# ------------------------------------------------------------- SAM transform
def test_sam_transform_builds_two_partial_failure_mappings_to_the_queue():
    # GIVEN the SAM transform of template.yaml
    doc = translated()
    # WHEN we look at the event source mappings
    mappings = {name: m for name, m in resources_of(doc, "AWS::Lambda::EventSourceMapping").items()
                if m["Properties"]["FunctionName"] == {"Ref": "MirrorFunction"}}
    # THEN there is one per legacy stream, each with the poison-record settings
    assert sorted(m["Properties"]["EventSourceArn"]["Ref"] for m in mappings.values()) == sorted(LEGACY_STREAM_PARAMS)
    for mapping in mappings.values():
        props = mapping["Properties"]
        assert props["FunctionName"] == {"Ref": "MirrorFunction"}
        assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert props["BisectBatchOnFunctionError"] is True
        assert props["StartingPosition"] == "TRIM_HORIZON"  # LATEST could miss records while the mapping starts
        assert props["ParallelizationFactor"] == 1
        assert 0 < props["MaximumRetryAttempts"] <= 10
        assert 0 < props["MaximumRecordAgeInSeconds"] <= 86400  # streams keep records 24 h
        assert props["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["MirrorFailureQueue", "Arn"]}


def test_sam_transform_uses_our_role_and_adds_no_managed_policy():
    # GIVEN the SAM transform (whose managed-policy loader fails the test if asked)
    doc = translated()
    # WHEN we look at the function and every IAM role
    function = resources_of(doc, "AWS::Lambda::Function")["MirrorFunction"]["Properties"]
    roles = resources_of(doc, "AWS::IAM::Role")
    # THEN the function runs as MirrorFunctionRole, and SAM attached nothing to it
    assert function["Role"] == {"Fn::GetAtt": ["MirrorFunctionRole", "Arn"]}
    assert set(roles) == set(resources_of(template(), "AWS::IAM::Role")), "SAM generated a role"
    assert not any(role["Properties"].get("ManagedPolicyArns") for role in roles.values())
    declared = set(resources_of(template(), "AWS::IAM::Role"))
    for name, other in resources_of(doc, "AWS::Lambda::Function").items():
        assert other["Properties"]["Role"]["Fn::GetAtt"][0] in declared, name
    # X-Ray is opt-in (EnableXRayTracing): it costs ~120 ms of every cold start
    assert function["TracingConfig"] == {"Mode": {"Fn::If": ["XRayTracingEnabled", "Active", "PassThrough"]}}
    assert function["LoggingConfig"] == {"LogGroup": {"Ref": "MirrorFunctionLogGroup"}}


def test_failure_queue_is_encrypted_and_keeps_messages_14_days():
    # GIVEN the failure queue / THEN it is KMS-encrypted and keeps messages the SQS maximum
    props = template()["Resources"]["MirrorFailureQueue"]["Properties"]
    assert props["KmsMasterKeyId"] == "alias/aws/sqs"
    assert props["MessageRetentionPeriod"] == 14 * 24 * 3600


# ----------------------------------------------------------- least privilege
@pytest.mark.parametrize("stage", ["source", "translated"])
def test_no_wildcard_actions_or_unjustified_star_resources(stage):
    # GIVEN every IAM statement, in the template and in what SAM makes of it
    doc = template() if stage == "source" else translated()
    statements = policy_statements(doc)
    assert statements, "no IAM statements found: the walk is broken"
    # WHEN each is checked / THEN no wildcard action, and Resource "*" only where AWS requires it
    assert star_violations(doc) == []


def test_star_check_catches_broad_grants():
    # GIVEN the role with one more statement granting dynamodb:* on "*"
    doc = template()
    statements = doc["Resources"]["MirrorFunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    statements.append({"Sid": "Broad", "Effect": "Allow", "Action": "dynamodb:*", "Resource": "*"})
    # AND a SAM policy template on the function, a managed policy on the role
    doc["Resources"]["MirrorFunction"]["Properties"]["Policies"] = [{"DynamoDBCrudPolicy": {"TableName": "x"}}]
    doc["Resources"]["MirrorFunctionRole"]["Properties"]["ManagedPolicyArns"] = ["arn:aws:iam::aws:policy/Admin"]
    # WHEN checked / THEN each of them is reported
    problems = star_violations(doc)
    assert any("wildcard action dynamodb:*" in p for p in problems)
    assert any("Broad: Resource '*'" in p for p in problems)
    assert any(p.startswith("MirrorFunction: managed policy or SAM policy template") for p in problems)
    assert any(p.startswith("MirrorFunctionRole: managed policies") for p in problems)


def test_mirror_grants_are_exactly_what_it_calls():
    # GIVEN the mirror role's statements / WHEN grouped by resource
    # THEN they are exactly the calls listed (with reasons) in EXPECTED_GRANTS
    assert grants(template(), "MirrorFunctionRole") == EXPECTED_GRANTS


def test_legacy_tables_and_streams_are_read_only():
    # GIVEN every statement that names a legacy table or stream
    legacy = {label: actions for label, actions in grants(template(), "MirrorFunctionRole").items()
              if label.startswith(("table:", "stream:"))}
    assert set(legacy) == {"table:" + p for p in LEGACY_TABLE_PARAMS} | {"stream:" + p for p in LEGACY_STREAM_PARAMS}
    # THEN tables get only the strong read and the ConditionCheck, streams only stream reads
    for label, actions in legacy.items():
        allowed = LEGACY_READ_ACTIONS if label.startswith("table:") else STREAM_READ_ACTIONS
        assert actions <= allowed, f"{label} gets {sorted(actions - allowed)}"
        assert not any(re.search(r"Put|Delete|Update|BatchWrite|Transact|PartiQL", a) for a in actions)


# ------------------------------------------------------- reverse replication
def test_reverse_mirror_reads_sc_mains_stream_with_the_poison_record_settings():
    # GIVEN the SAM transform / WHEN we look at the reverse function's event source mapping
    doc = translated()
    (mapping,) = [m["Properties"] for m in resources_of(doc, "AWS::Lambda::EventSourceMapping").values()
                  if m["Properties"]["FunctionName"] == {"Ref": "ReverseMirrorFunction"}]
    # THEN it reads sc-main's stream from the start, with partial batch responses and the shared queue
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["TargetTable", "StreamArn"]}
    assert mapping["StartingPosition"] == "TRIM_HORIZON"  # it must drain (skip) what came before cutover
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["ParallelizationFactor"] == 1
    assert mapping["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["MirrorFailureQueue", "Arn"]}
    # AND sc-main's stream carries both images (the engine needs the old owner of a moved key)
    stream = template()["Resources"]["TargetTable"]["Properties"]["StreamSpecification"]
    assert stream["StreamViewType"] == "NEW_AND_OLD_IMAGES"


def test_reverse_mirror_grants_are_exactly_what_it_calls():
    # GIVEN the reverse role's statements / WHEN grouped by resource
    # THEN they are exactly the calls listed (with reasons) in REVERSE_EXPECTED_GRANTS
    assert grants(template(), "ReverseMirrorFunctionRole") == REVERSE_EXPECTED_GRANTS


def test_reverse_mirror_never_writes_sc_main_and_writes_legacy_only_item_by_item():
    reverse = grants(template(), "ReverseMirrorFunctionRole")
    writes = re.compile(r"Put|Delete|Update|BatchWrite|Transact|PartiQL")
    # THEN sc-main (table, index, stream) gets no write action
    for label in ("TargetTable", "index:TargetTable/GSI1", "stream:TargetTable"):
        assert not any(writes.search(a) for a in reverse[label]), label
    # AND the legacy tables get only GetItem/PutItem/DeleteItem (no batch, no update, no PartiQL)
    for param in LEGACY_TABLE_PARAMS:
        assert reverse["table:" + param] == {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem"}


def test_reverse_handler_path_resolves_to_the_lambda_handler():
    handler = template()["Resources"]["ReverseMirrorFunction"]["Properties"]["Handler"]
    module_path, _, function = handler.rpartition(".")
    module = importlib.import_module(module_path.replace("/", "."))
    assert callable(getattr(module, function))


# ------------------------------------------------------- function wiring
def test_handler_path_resolves_to_the_lambda_handler():
    # GIVEN the Handler of MirrorFunction (project root is the code root)
    handler = template()["Resources"]["MirrorFunction"]["Properties"]["Handler"]
    module_path, _, function = handler.rpartition(".")
    # WHEN imported the way the Lambda Python runtime does ("/" -> ".")
    module = importlib.import_module(module_path.replace("/", "."))
    # THEN the function exists
    assert callable(getattr(module, function))


def _resolve(value: Any, params: dict[str, str]) -> str:
    """Resolve the few intrinsics the environment uses: Ref to a parameter or table, Fn::Sub,
    and Fn::If on the tracing condition."""
    if isinstance(value, str):
        return value
    if "Fn::If" in value:
        condition, when_true, when_false = value["Fn::If"]
        assert condition == "XRayTracingEnabled", condition
        return _resolve(when_true if params["EnableXRayTracing"] == "true" else when_false, params)
    if "Ref" in value:
        ref = value["Ref"]
        table_param = {"TargetTable": "TargetTableName", "ControlTable": "ControlTableName"}
        return params[table_param.get(ref, ref)]
    if "Fn::Sub" in value:
        return re.sub(r"\$\{([^}]+)\}", lambda m: params[m.group(1)], value["Fn::Sub"])
    raise AssertionError(f"unexpected intrinsic {value!r}")


@pytest.mark.parametrize(
    "overrides",
    [{}, {"AccountsTableName": "prod-accounts", "RepositoriesTableName": "prod.repos", "TargetTableName": "main-v2"}],
)
def test_function_environment_builds_the_settings(monkeypatch, overrides):
    # GIVEN the Globals environment resolved with the parameters' defaults (or overrides)
    doc = template()
    params = {name: str(p.get("Default", "")) for name, p in doc["Parameters"].items()} | overrides
    variables = doc["Globals"]["Function"]["Environment"]["Variables"]
    for name, value in variables.items():
        monkeypatch.setenv(name, _resolve(value, params))
    # WHEN the handler's settings load from it
    settings = load_settings()
    # THEN every logical source of the migration maps to the configured physical table
    sources = {source.name for source in get_definition(settings.migration).sources}
    assert set(settings.table_names) == sources
    assert settings.physical_name("sc-accounts") == params["AccountsTableName"]
    assert settings.physical_name("sc-repositories") == params["RepositoriesTableName"]
    assert settings.target_table == params["TargetTableName"]
    assert settings.control_table == params["ControlTableName"]


@pytest.mark.parametrize(
    ("arn", "ok"),
    [
        ("arn:aws:dynamodb:eu-west-1:123456789012:table/sc-accounts/stream/2024-01-31T12:34:56.789", True),
        ("arn:aws-cn:dynamodb:cn-north-1:123456789012:table/a.b_c-d/stream/2024-01-31T12:34:56.789", True),
        ("arn:aws:dynamodb:eu-west-1:123456789012:table/sc-accounts", False),  # a table, not its stream
        ("arn:aws:kinesis:eu-west-1:123456789012:stream/sc-accounts", False),
        ("", False),
    ],
)
def test_stream_arn_parameters_accept_only_dynamodb_stream_arns(arn, ok):
    # GIVEN the AllowedPattern of each stream parameter (CloudFormation matches it in full)
    for name in LEGACY_STREAM_PARAMS:
        pattern = template()["Parameters"][name]["AllowedPattern"]
        # WHEN / THEN a DynamoDB stream ARN passes and anything else is refused
        assert bool(re.fullmatch(pattern, arn)) is ok, (name, arn)


# ------------------------------------------------- deployability (issue 7)
RESOURCE_POLICY_TYPES = {
    "AWS::SNS::TopicPolicy": "PolicyDocument",
    "AWS::SQS::QueuePolicy": "PolicyDocument",
    "AWS::S3::BucketPolicy": "PolicyDocument",
    "AWS::KMS::Key": "KeyPolicy",
}
# Lambda functions are started by an event source mapping (alarm on lag) or
# by Step Functions (alarm on errors only).
STREAM_EVENT_TYPES = {"DynamoDB", "Kinesis"}


def functions() -> dict[str, dict[str, Any]]:
    return resources_of(template(), "AWS::Serverless::Function")


def alarms_on(metric: str, dimension_value: Any) -> list[str]:
    """Names of the alarms on `metric` whose dimensions (or metric-math inputs) include `dimension_value`."""
    found = []
    for name, alarm in resources_of(template(), "AWS::CloudWatch::Alarm").items():
        props = alarm["Properties"]
        stats = [props] + [m["MetricStat"]["Metric"] for m in props.get("Metrics", []) if "MetricStat" in m]
        for stat in stats:
            if stat.get("MetricName") == metric and any(d["Value"] == dimension_value for d in stat.get("Dimensions", [])):
                found.append(name)
    return found


def test_every_function_is_built_by_the_makefile_and_logs_to_a_retained_group():
    # GIVEN every function of the template
    doc = template()
    assert functions(), "no functions found"
    for name, function in functions().items():
        # THEN `sam build` builds it with the Makefile's build-<Function> target (not the whole repo)
        assert function.get("Metadata", {}).get("BuildMethod") == "makefile", name
        # AND it logs to a log group of this stack, with the retention parameter
        group = function["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        assert doc["Resources"][group]["Type"] == "AWS::Logs::LogGroup", name
        assert doc["Resources"][group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name


def test_every_function_has_an_errors_alarm_and_stream_functions_a_lag_alarm():
    # GIVEN every function / WHEN we look for alarms on its metrics
    for name, function in functions().items():
        # THEN its invocation errors alarm
        assert alarms_on("Errors", {"Ref": name}), f"{name}: no Errors alarm"
        # AND a function reading a stream alarms when it falls behind
        events = function["Properties"].get("Events", {}).values()
        if any(event["Type"] in STREAM_EVENT_TYPES for event in events):
            assert alarms_on("IteratorAge", {"Ref": name}), f"{name}: no IteratorAge alarm"


def test_alarms_cover_the_failure_queue_quarantine_and_target_throttles():
    # GIVEN the alarms / THEN the list is covered
    assert alarms_on("ApproximateNumberOfMessagesVisible", {"Fn::GetAtt": ["MirrorFailureQueue", "QueueName"]})
    assert alarms_on("RecordsQuarantined", "mirror")  # EMF: namespace dynashift, dimension service=mirror
    assert alarms_on("WriteThrottleEvents", {"Ref": "TargetTable"})
    assert alarms_on("ReadThrottleEvents", {"Ref": "TargetTable"})
    # AND every alarm notifies the alarm topic (created, or given as a parameter)
    topic = {"Fn::If": ["CreateAlarmTopic", {"Ref": "AlarmTopic"}, {"Ref": "AlarmTopicArn"}]}
    for name, alarm in resources_of(template(), "AWS::CloudWatch::Alarm").items():
        assert alarm["Properties"]["AlarmActions"] == [topic], name


def test_quarantine_alarm_watches_what_the_handler_emits():
    # GIVEN the EMF names the mirror handler publishes (namespace, service, metric)
    import handlers.mirror as handler

    alarm = template()["Resources"]["QuarantineAlarm"]["Properties"]
    # THEN the alarm reads the same namespace and service dimension
    assert handler.metrics.namespace == alarm["Namespace"]
    assert handler.metrics.service == alarm["Dimensions"][0]["Value"]
    # AND the metric it alarms on is one the handler adds for every batch
    from shared.streams.mirror import BatchStats

    assert alarm["MetricName"] in {name for name, _, _ in BatchStats(quarantined=1).metrics()}


def _resolve_sub(text: str, doc: dict[str, Any]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("AWS::"):
            return {"AWS::Region": "eu-west-1", "AWS::StackName": "dynashift"}[name]
        base = name.split(".")[0]
        assert base in doc["Resources"] or base in doc["Parameters"], f"dashboard names unknown {name}"
        if doc["Parameters"].get(base, {}).get("Type") == "Number":
            return str(doc["Parameters"][base]["Default"])
        return f"resolved-{name}"
    return re.sub(r"\$\{([^}]+)\}", value, text)


def test_dashboard_is_valid_json_and_shows_every_alarm():
    # GIVEN the dashboard body with its ${...} resolved
    doc = template()
    body = json.loads(_resolve_sub(doc["Resources"]["MigrationDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"], doc))
    # THEN its alarm widget lists every alarm of the stack
    shown = {a for w in body["widgets"] if w["type"] == "alarm" for a in w["properties"]["alarms"]}
    assert shown == {f"resolved-{name}.Arn" for name in resources_of(doc, "AWS::CloudWatch::Alarm")}
    # AND every function appears in it
    text = json.dumps(body)
    for name in functions():
        assert f"resolved-{name}" in text, name


def test_no_wildcards_in_resource_policies():
    # GIVEN every resource policy of the template (topic, queue, bucket and key policies)
    for name, resource in template()["Resources"].items():
        key = RESOURCE_POLICY_TYPES.get(resource["Type"])
        if key is None:
            continue
        for statement in as_list(resource["Properties"][key]["Statement"]):
            # THEN no wildcard action; "*" as Resource is how a resource policy names its own resource
            assert not any("*" in action for action in as_list(statement.get("Action", []))), name
            assert statement.get("Principal") != "*", f"{name}: policy open to everyone"


def _pins(path: str) -> dict[str, str]:
    pins = {}
    for line in (PROJECT_ROOT / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_lambda_requirements_are_pinned_as_in_the_lock_and_leave_out_the_cli():
    # GIVEN the Lambda runtime requirements and the project lock
    lambda_pins, lock = _pins("requirements-lambda.txt"), _pins("requirements.lock")
    # THEN each is pinned exactly as in the lock
    assert lambda_pins and all(version for version in lambda_pins.values())
    assert {n: v for n, v in lambda_pins.items() if lock.get(n) != v} == {}
    # AND nothing only the CLI, the tests or the tools use ships to Lambda
    assert not set(lambda_pins) & {"rich", "click", "cfn-flip", "moto", "pytest", "hypothesis", "cfn-lint"}


def test_makefile_builds_for_the_templates_runtime_and_architecture():
    # GIVEN the Makefile's Lambda platform and the template's Globals
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    function = template()["Globals"]["Function"]
    platform = re.search(r"^LAMBDA_PLATFORM\s*:=\s*(\S+)", makefile, re.M).group(1)
    python = re.search(r"^LAMBDA_PYTHON\s*:=\s*(\S+)", makefile, re.M).group(1)
    # THEN pip fetches wheels for the runtime and architecture Lambda runs
    assert function["Runtime"] == "python" + python
    assert platform.endswith({"x86_64": "x86_64", "arm64": "aarch64"}[function["Architectures"][0]])


# ------------------------------------------- backfill in AWS (Step Functions)
BACKFILL_ASL = PROJECT_ROOT / "backfill" / "statemachine.asl.json"
BACKFILL_FUNCTIONS = ("BackfillPlanFunction", "BackfillUnitFunction", "BackfillFinishFunction")
LOG_WRITES = {"logs:CreateLogStream", "logs:PutLogEvents"}
XRAY_WRITES = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
STATE_MACHINE_NAME = "${AWS::StackName}-backfill"

# Each backfill role's exact grants. Changing what a step calls must change this map and the template together.
BACKFILL_EXPECTED_GRANTS = {
    "BackfillPlanFunctionRole": {
        # approximate ItemCount per table
        "table:AccountsTableName": {"dynamodb:DescribeTable"},
        "table:RepositoriesTableName": {"dynamodb:DescribeTable"},
        # mode flag and mirror marker, the run and its units, the run's stale-writer registration
        "ControlTable": {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:PutItem", "dynamodb:UpdateItem",
                         "dynamodb:DeleteItem"},
        # an export source's manifests, found below a prefix: only below BackupPrefix
        "s3:BackupBucketName/${BackupPrefix}/*": {"s3:GetObject"},
        "s3:BackupBucketName": {"s3:ListBucket"},  # with an s3:prefix condition (test below)
        "BackfillPlanFunctionLogGroup": LOG_WRITES,
        # the mirror's event source mappings: the coverage of a table nobody writes (no resource type)
        "*": XRAY_WRITES | {"lambda:ListEventSourceMappings"},
    },
    "BackfillUnitFunctionRole": {
        # scan pages, re-read of exported keys, the validated write's read and ConditionCheck
        "table:AccountsTableName": {"dynamodb:Scan", "dynamodb:BatchGetItem", "dynamodb:GetItem",
                                    "dynamodb:ConditionCheckItem"},
        "table:RepositoriesTableName": {"dynamodb:Scan", "dynamodb:BatchGetItem", "dynamodb:GetItem",
                                        "dynamodb:ConditionCheckItem"},
        # create-only puts and INSERTs (BatchExecuteStatement), validated transactions (Put/Delete
        # actions), GetItem after a collision
        "TargetTable": {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:PartiQLInsert"},
        # units, registration, quarantine, key waiters
        "ControlTable": {"dynamodb:Query", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                         "dynamodb:BatchGetItem"},
        "s3:BackupBucketName/${BackupPrefix}/*": {"s3:GetObject"},
        "BackfillUnitFunctionLogGroup": LOG_WRITES,
        "*": XRAY_WRITES,
    },
    "BackfillFinishFunctionRole": {
        "ControlTable": {"dynamodb:Query", "dynamodb:DeleteItem", "dynamodb:UpdateItem"},
        # the tombstone sweep
        "TargetTable": {"dynamodb:DeleteItem"},
        "index:TargetTable/GSI1": {"dynamodb:Query"},
        "BackfillFinishFunctionLogGroup": LOG_WRITES,
        "*": XRAY_WRITES,
    },
    "BackfillStateMachineRole": {
        **{name: {"lambda:InvokeFunction"} for name in BACKFILL_FUNCTIONS},
        # the Distributed Map's child executions
        f"states:stateMachine:{STATE_MACHINE_NAME}": {"states:StartExecution"},
        f"states:execution:{STATE_MACHINE_NAME}/*": {"states:DescribeExecution", "states:StopExecution"},
        # log delivery to its log group, and X-Ray with EnableXRayTracing (both only on "*")
        "*": LOG_DELIVERY_ACTIONS | XRAY_WRITES | {"xray:GetSamplingRules", "xray:GetSamplingTargets"},
    },
}


def backfill_definition() -> dict[str, Any]:
    return json.loads(BACKFILL_ASL.read_text())


@pytest.mark.parametrize("role", sorted(BACKFILL_EXPECTED_GRANTS))
def test_backfill_roles_grant_exactly_what_each_step_calls(role):
    # GIVEN one backfill role's statements / WHEN grouped by resource
    # THEN they are exactly the calls listed (with reasons) in BACKFILL_EXPECTED_GRANTS
    assert grants(template(), role) == BACKFILL_EXPECTED_GRANTS[role]


def test_backfill_never_writes_the_legacy_tables():
    # GIVEN every backfill role / WHEN we look at what it may do to a legacy table
    writes = re.compile(r"Put|Delete|Update|BatchWrite|Transact|PartiQL|Import|Restore")
    for role in BACKFILL_EXPECTED_GRANTS:
        for label, actions in grants(template(), role).items():
            if label.startswith("table:"):
                # THEN nothing that writes
                assert not any(writes.search(a) for a in actions), f"{role} may write {label}: {sorted(actions)}"


def test_backfill_functions_run_as_their_own_roles_and_resolve():
    doc = template()
    for name in BACKFILL_FUNCTIONS:
        props = doc["Resources"][name]["Properties"]
        # GIVEN each backfill function / THEN it runs as its own role and logs to its own group
        assert props["Role"] == {"Fn::GetAtt": [f"{name}Role", "Arn"]}
        assert props["LoggingConfig"] == {"LogGroup": {"Ref": f"{name}LogGroup"}}
        # AND its handler imports the way the Lambda runtime does
        module_path, _, function = props["Handler"].rpartition(".")
        assert callable(getattr(importlib.import_module(module_path.replace("/", ".")), function)), name
    # AND a unit invocation has room for many pages before its deadline margin
    timeout = doc["Resources"]["BackfillUnitFunction"]["Properties"]["Timeout"]
    assert timeout == 900
    assert load_settings().backfill_deadline_margin_s * 4 < timeout


def test_state_machine_definition_is_a_distributed_map_with_every_substitution_defined():
    # GIVEN the ASL file and the state machine resource
    text = BACKFILL_ASL.read_text()
    definition = json.loads(text)  # valid JSON
    props = template()["Resources"]["BackfillStateMachine"]["Properties"]
    # THEN the resource points at the file, and every ${...} in it is substituted (and nothing more)
    assert props["DefinitionUri"] == "backfill/statemachine.asl.json"
    assert set(re.findall(r"\$\{(\w+)\}", text)) == set(props["DefinitionSubstitutions"])
    assert props["DefinitionSubstitutions"] == {f"{n}Arn": {"Fn::GetAtt": [n, "Arn"]} for n in BACKFILL_FUNCTIONS}
    # AND Plan -> a Distributed Map over the plan's units -> Finish
    states = definition["States"]
    assert definition["StartAt"] == "Plan" and states["Plan"]["Next"] == "Units"
    units = states["Units"]
    assert units["Type"] == "Map" and units["ItemsPath"] == "$.units"
    assert units["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    assert 0 < units["MaxConcurrency"] <= 1000
    assert units["ResultPath"] is None  # results of thousands of items must not reach the 256 KiB payload limit
    assert units["Next"] == "Finish" and states["Finish"]["End"] is True
    # AND each unit loops ProcessUnit -> Choice on $.done, back to ProcessUnit until done
    inner = units["ItemProcessor"]["States"]
    choice = inner[inner["ProcessUnit"]["Next"]]
    assert choice["Type"] == "Choice" and choice["Default"] == "ProcessUnit"
    done_rule = next(r for r in choice["Choices"] if r["Variable"] == "$.done")
    assert done_rule["BooleanEquals"] is True and inner[done_rule["Next"]]["Type"] == "Succeed"
    # AND every Lambda task retries Lambda's transient service errors
    tasks = [states["Plan"], inner["ProcessUnit"], states["Finish"]]
    for task in tasks:
        retried = {e for rule in task["Retry"] for e in rule["ErrorEquals"]}
        assert {"Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
                "Lambda.TooManyRequestsException"} <= retried, task["Parameters"]["FunctionName"]


def _lint_definition(definition: dict[str, Any]) -> list[str]:
    """cfn-lint's Step Functions schema (E3601) on the definition, inlined with made-up ARNs."""
    text = re.sub(r"\$\{(\w+)\}", r"arn:aws:lambda:us-east-1:123456789012:function:\1", json.dumps(definition))
    doc = {"Resources": {"Machine": {"Type": "AWS::StepFunctions::StateMachine", "Properties": {
        "RoleArn": "arn:aws:iam::123456789012:role/backfill", "Definition": json.loads(text)}}}}
    return [str(m) for m in lint(json.dumps(doc))]


def test_state_machine_definition_passes_the_states_language_schema():
    # GIVEN the definition / WHEN cfn-lint validates it against the States Language schema / THEN it is clean
    assert _lint_definition(backfill_definition()) == []
    # AND the check is real: a Choice rule comparing with a string is reported
    broken = backfill_definition()
    broken["States"]["Units"]["ItemProcessor"]["States"]["UnitDone?"]["Choices"][0]["BooleanEquals"] = "yes"
    assert any("E3601" in m for m in _lint_definition(broken))


def test_sam_transform_builds_the_state_machine_with_our_role():
    # GIVEN the SAM transform / WHEN we look at the state machine
    doc = translated()
    machine = resources_of(doc, "AWS::StepFunctions::StateMachine")["BackfillStateMachine"]["Properties"]
    # THEN it runs as BackfillStateMachineRole (no SAM-generated role) with the substitutions
    assert machine["RoleArn"] == {"Fn::GetAtt": ["BackfillStateMachineRole", "Arn"]}
    assert set(machine["DefinitionSubstitutions"]) == {f"{n}Arn" for n in BACKFILL_FUNCTIONS}
    assert machine["StateMachineName"] == {"Fn::Sub": STATE_MACHINE_NAME}
    assert machine["StateMachineType"] == "STANDARD"


# ------------------------------------------------------------ issue 13 (template)
STREAM_READERS = {"MirrorFunctionRole": LEGACY_TABLE_PARAMS, "ReverseMirrorFunctionRole": ("TargetTable",)}


@pytest.mark.parametrize("role", sorted(STREAM_READERS))
def test_stream_readers_have_every_action_of_an_event_source_mapping(role):
    # GIVEN a role whose function an event source mapping polls a DynamoDB stream with
    granted = grants(template(), role)
    stream_labels = [label for label in granted if label.startswith("stream:")]
    assert stream_labels, role
    # THEN each stream gets the three stream reads, and ListStreams is granted, scoped to
    # the streams of exactly the tables it reads (never "*")
    for label in stream_labels:
        assert granted[label] == STREAM_READ_ACTIONS, label
    listed = {label for label, actions in granted.items() if "dynamodb:ListStreams" in actions}
    assert listed == {f"streams:{table}" for table in STREAM_READERS[role]}
    assert "dynamodb:ListStreams" not in granted.get("*", set())
    every = set().union(*granted.values())
    assert EVENT_SOURCE_MAPPING_ACTIONS <= every


def test_list_streams_resources_name_the_tables_streams():
    # GIVEN the ListStreams statements / THEN their ARNs are <table ARN>/stream/* (the stream resource type)
    resources = [r for _, s in policy_statements(template()) if "dynamodb:ListStreams" in as_list(s["Action"])
                 for r in as_list(s["Resource"])]
    assert len(resources) == 3
    for resource in resources:
        assert resource["Fn::Sub"].endswith("/stream/*"), resource


def _s3_statements(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(owner, s) for owner, s in policy_statements(doc)
            if any(a.startswith("s3:") for a in as_list(s["Action"]))]


def test_s3_grants_stay_below_the_backup_prefix():
    # GIVEN every statement with an S3 action
    statements = _s3_statements(template())
    assert statements, "no S3 statements found: the walk is broken"
    for owner, statement in statements:
        for action in as_list(statement["Action"]):
            resources = [r["Fn::Sub"] for r in as_list(statement["Resource"])]
            if action == "s3:ListBucket":
                # THEN a listing names the bucket, and only keys below the prefix
                assert resources == ["arn:${AWS::Partition}:s3:::${BackupBucketName}"], owner
                assert statement["Condition"] == {"StringLike": {"s3:prefix": [{"Fn::Sub": "${BackupPrefix}/*"}]}}
            else:
                # AND every object-level grant is below the prefix
                assert action == "s3:GetObject", (owner, action)
                assert resources == ["arn:${AWS::Partition}:s3:::${BackupBucketName}/${BackupPrefix}/*"], owner


def test_backup_prefix_parameter_matches_the_setting_and_reaches_the_functions(monkeypatch):
    doc = template()
    parameter = doc["Parameters"]["BackupPrefix"]
    # GIVEN the parameter / THEN its default is the setting's, and it is passed to every function
    assert parameter["Default"] == load_settings().backup_prefix == "dynashift-backups"
    assert doc["Globals"]["Function"]["Environment"]["Variables"]["DYNASHIFT_BACKUP_PREFIX"] == {"Ref": "BackupPrefix"}
    # AND the pattern accepts what the setting accepts, and refuses what would widen the grant
    pattern = parameter["AllowedPattern"]
    for ok in ("dynashift-backups", "team/dynashift", "a.b_c"):
        assert re.fullmatch(pattern, ok), ok
    for bad in ("", "/lead", "trail/", "a//b", "*", "a/*", "x y"):
        assert not re.fullmatch(pattern, bad), bad
    monkeypatch.setenv("DYNASHIFT_BACKUP_PREFIX", "team/dynashift")
    assert load_settings().backup_prefix == "team/dynashift"


def _evaluate_rule(value: Any, params: dict[str, str]) -> Any:
    """The few rule functions the template uses, evaluated like CloudFormation does."""
    if not isinstance(value, dict):
        return value
    ((name, arg),) = value.items()
    if name == "Ref":
        return params[arg]
    if name == "Fn::Equals":
        return _evaluate_rule(arg[0], params) == _evaluate_rule(arg[1], params)
    if name == "Fn::Not":
        return not _evaluate_rule(arg[0], params)
    if name == "Fn::Or":
        return any(_evaluate_rule(a, params) for a in arg)
    if name == "Fn::And":
        return all(_evaluate_rule(a, params) for a in arg)
    raise AssertionError(f"unexpected rule function {name}")


@pytest.mark.parametrize(
    ("email", "topic", "accepted"),
    [("", "", False), ("ops@example.com", "", True), ("", "arn:aws:sns:eu-west-1:123456789012:ops", True),
     ("ops@example.com", "arn:aws:sns:eu-west-1:123456789012:ops", True)],
)
def test_a_deploy_without_an_alarm_subscriber_is_refused(email, topic, accepted):
    # GIVEN the template's Rules / WHEN evaluated with AlarmEmail and AlarmTopicArn
    rules = template()["Rules"]
    params = {"AlarmEmail": email, "AlarmTopicArn": topic}
    results = [_evaluate_rule(a["Assert"], params) for rule in rules.values() for a in rule["Assertions"]]
    # THEN the deploy is refused exactly when nobody would get the alarms
    assert all(results) is accepted
    assert all(a.get("AssertDescription") for rule in rules.values() for a in rule["Assertions"])


def test_rules_survive_the_sam_transform_and_lint():
    # GIVEN the SAM transform / THEN the Rules reach CloudFormation (and lint clean, above)
    assert translated()["Rules"] == template()["Rules"]
    # AND cfn-lint really reads Rules: an unknown rule function is reported
    broken = _template_text().replace("- Assert: !Or", "- Assert: !Sub")
    assert broken != _template_text()
    assert lint(broken)


def test_state_machine_logs_errors_without_execution_data_to_a_retained_group():
    doc = template()
    props = doc["Resources"]["BackfillStateMachine"]["Properties"]
    # GIVEN the state machine / THEN it logs (errors or all), never the execution data (item keys)
    logging = props["Logging"]
    assert logging["Level"] in ("ERROR", "ALL")
    assert logging["IncludeExecutionData"] is False
    (destination,) = logging["Destinations"]
    group = destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
    # AND to a log group of this stack with the retention parameter
    assert doc["Resources"][group]["Type"] == "AWS::Logs::LogGroup"
    assert doc["Resources"][group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    # AND its role may deliver logs (the actions AWS requires on "*", and nothing more there)
    role = grants(template(), "BackfillStateMachineRole")
    assert LOG_DELIVERY_ACTIONS <= role["*"]
    # AND tracing follows EnableXRayTracing
    assert props["Tracing"] == {"Enabled": {"Fn::If": ["XRayTracingEnabled", True, False]}}
    machine = resources_of(translated(), "AWS::StepFunctions::StateMachine")["BackfillStateMachine"]["Properties"]
    assert machine["LoggingConfiguration"]["IncludeExecutionData"] is False


def test_star_check_refuses_extra_actions_in_the_log_delivery_statement():
    # GIVEN the log delivery statement with one more action on "*"
    doc = template()
    statements = doc["Resources"]["BackfillStateMachineRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    delivery = next(s for s in statements if isinstance(s, dict) and s.get("Sid") == "StateMachineLogDelivery")
    delivery["Action"].append("logs:PutLogEvents")
    # WHEN checked / THEN it is reported
    assert any("StateMachineLogDelivery" in p for p in star_violations(doc))


def test_failed_units_lead_to_record_failure_and_a_failed_execution():
    # GIVEN the definition
    states = backfill_definition()["States"]
    units, finish = states["Units"], states["Finish"]
    # THEN a failed Map run (any failed unit: no tolerated failures) is caught, keeping $.run
    assert units["ToleratedFailurePercentage"] == 0
    (catch,) = units["Catch"]
    assert catch["ErrorEquals"] == ["States.ALL"] and catch["ResultPath"] == "$.failure"
    # AND so is Finish finding units not done
    (finish_catch,) = finish["Catch"]
    assert finish_catch["ErrorEquals"] == ["BackfillIncomplete"] and finish_catch["ResultPath"] == "$.failure"
    # AND both go to RecordFailure: the Finish function with the run and the failure, retried like it
    record = states[catch["Next"]]
    assert finish_catch["Next"] == catch["Next"] == "RecordFailure"
    assert record["Parameters"] == {"FunctionName": "${BackfillFinishFunctionArn}",
                                    "Payload": {"run.$": "$.run", "failure.$": "$.failure"}}
    assert record["Retry"] == finish["Retry"]
    # AND then the execution ends Failed, which the console and ExecutionsFailed (the alarm) show
    end = states[record["Next"]]
    assert end["Type"] == "Fail" and end["Error"] == "BackfillIncomplete" and "backfill status" in end["Cause"]


def test_the_plan_step_knows_the_mirror_function_and_waits_within_its_timeout():
    # GIVEN the Plan function / THEN it names the mirror function (its mappings are the coverage fact on a
    # table nobody writes, shared/streams/coverage.py) and waits for the mirror less long than its own time limit
    plan = template()["Resources"]["BackfillPlanFunction"]["Properties"]
    variables = plan["Environment"]["Variables"]
    assert variables["DYNASHIFT_MIRROR_FUNCTION"] == {"Ref": "MirrorFunction"}
    assert float(variables["DYNASHIFT_MIRROR_WAIT_S"]) < plan["Timeout"] / 1.5
