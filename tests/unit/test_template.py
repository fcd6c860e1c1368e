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

from shared.definition import get_definition
from shared.settings import load_settings
from shared.tables import TEMPLATE_PATH

LEGACY_TABLE_PARAMS = ("AccountsTableName", "RepositoriesTableName")
LEGACY_STREAM_PARAMS = ("AccountsStreamArn", "RepositoriesStreamArn")

# The only statements allowed a Resource of "*", and why AWS requires it.
STAR_RESOURCE_ALLOWED = {
    "XRayTracing": "xray:PutTraceSegments and xray:PutTelemetryRecords have no resource types",
}

# The mirror's exact grants, per resource (the key is how the template names it).
# Changing what the mirror calls must change this map and the template together.
EXPECTED_GRANTS = {
    "stream:AccountsStreamArn": {"dynamodb:DescribeStream", "dynamodb:GetShardIterator", "dynamodb:GetRecords"},
    "stream:RepositoriesStreamArn": {"dynamodb:DescribeStream", "dynamodb:GetShardIterator", "dynamodb:GetRecords"},
    # conditional Put/Delete (also as TransactWriteItems actions), GetItem after a collision
    "TargetTable": {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem"},
    # quarantine, key waiters, stale-writer registry
    "ControlTable": {"dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Query", "dynamodb:BatchGetItem"},
    # strong read + ConditionCheck of the validated write: read-only
    "table:AccountsTableName": {"dynamodb:GetItem", "dynamodb:ConditionCheckItem"},
    "table:RepositoriesTableName": {"dynamodb:GetItem", "dynamodb:ConditionCheckItem"},
    "MirrorFailureQueue": {"sqs:SendMessage"},
    "MirrorFunctionLogGroup": {"logs:CreateLogStream", "logs:PutLogEvents"},
    "*": {"xray:PutTraceSegments", "xray:PutTelemetryRecords"},
}

LEGACY_READ_ACTIONS = {"dynamodb:GetItem", "dynamodb:ConditionCheckItem"}
STREAM_READ_ACTIONS = {"dynamodb:DescribeStream", "dynamodb:GetShardIterator", "dynamodb:GetRecords"}


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
            found.extend((name, s) for s in as_list(document["Statement"]))
    return found


def resource_label(resource: Any) -> str:
    """A readable name for a statement Resource, as EXPECTED_GRANTS spells it."""
    if resource == "*":
        return "*"
    if isinstance(resource, dict) and "Ref" in resource and resource["Ref"] in LEGACY_STREAM_PARAMS:
        return "stream:" + resource["Ref"]
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        target = resource["Fn::GetAtt"]
        return (target if isinstance(target, list) else target.split("."))[0]
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        for param in LEGACY_TABLE_PARAMS:
            if resource["Fn::Sub"].endswith(":table/${" + param + "}"):
                return "table:" + param
    raise AssertionError(f"unrecognised policy resource {resource!r}")


def grants(doc: dict[str, Any]) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for _, statement in policy_statements(doc):
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
        if "*" in as_list(statement.get("Resource", [])) and sid not in STAR_RESOURCE_ALLOWED:
            problems.append(f"{owner}/{sid}: Resource '*'")
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
    mappings = resources_of(doc, "AWS::Lambda::EventSourceMapping")
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
    assert list(roles) == ["MirrorFunctionRole"]
    assert not roles["MirrorFunctionRole"]["Properties"].get("ManagedPolicyArns")
    assert function["TracingConfig"] == {"Mode": "Active"}
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
    assert grants(template()) == EXPECTED_GRANTS


def test_legacy_tables_and_streams_are_read_only():
    # GIVEN every statement that names a legacy table or stream
    legacy = {label: actions for label, actions in grants(template()).items()
              if label.startswith(("table:", "stream:"))}
    assert set(legacy) == {"table:" + p for p in LEGACY_TABLE_PARAMS} | {"stream:" + p for p in LEGACY_STREAM_PARAMS}
    # THEN tables get only the strong read and the ConditionCheck, streams only stream reads
    for label, actions in legacy.items():
        allowed = LEGACY_READ_ACTIONS if label.startswith("table:") else STREAM_READ_ACTIONS
        assert actions <= allowed, f"{label} gets {sorted(actions - allowed)}"
        assert not any(re.search(r"Put|Delete|Update|BatchWrite|Transact|PartiQL", a) for a in actions)


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
    """Resolve the few intrinsics the environment uses: Ref to a parameter or table, and Fn::Sub."""
    if isinstance(value, str):
        return value
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
