"""Static checks that CI runs with the tests: checkov, ruff, bandit, pip-audit.

Each tool runs as a subprocess on the project, exactly as a developer would
run it (the command is in each test), and the test fails on any finding.
cfn-lint runs in tests/unit/test_template.py (through its API, on the
template and on its SAM transform). checkov lives in its own virtualenv
(.venv-checkov, from requirements-checkov.lock: its pins conflict with ours),
which `make test` sets up; the fixture below sets it up too when pytest is
run by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfn_flip import load_yaml

from shared.core.settings import PROJECT_ROOT

BIN = Path(sys.executable).parent
CHECKOV = PROJECT_ROOT / ".venv-checkov" / "bin" / "checkov"
CODE_DIRS = ["handlers", "shared", "backfill", "bench"]


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False, **kwargs)


@pytest.fixture(scope="module")
def checkov() -> Path:
    result = run(["make", "-s", ".venv-checkov/.installed"])
    assert result.returncode == 0, result.stderr[-2000:]
    return CHECKOV


def checkov_report(checkov: Path, template: Path) -> dict[str, Any]:
    # --skip-download: no call to Prisma Cloud for guidelines (no network needed).
    result = run([str(checkov), "-f", str(template), "--framework", "cloudformation",
                  "--skip-download", "--quiet", "-o", "json"])
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


def test_checkov_finds_nothing_unsuppressed(checkov):
    # GIVEN template.yaml / WHEN checkov scans it
    report = checkov_report(checkov, PROJECT_ROOT / "template.yaml")
    # THEN no check fails, and it really ran checks
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] > 0


def test_every_checkov_suppression_gives_a_reason():
    # GIVEN every checkov skip in the template's Metadata
    template = load_yaml((PROJECT_ROOT / "template.yaml").read_text())
    skips = [(name, skip) for name, resource in template["Resources"].items()
             for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])]
    assert skips, "no suppressions found: the walk is broken"
    # THEN each names a check and says why, in a sentence
    for name, skip in skips:
        assert skip["id"].startswith("CKV_"), name
        assert len(skip.get("comment", "").split()) >= 6, f"{name}/{skip['id']}: no reason given"


def test_checkov_is_really_checking(checkov, tmp_path):
    # GIVEN the template with every suppression removed
    text = (PROJECT_ROOT / "template.yaml").read_text().replace("checkov:", "checkov_disabled:")
    broken = tmp_path / "template.yaml"
    broken.write_text(text)
    # WHEN checkov scans it / THEN the suppressed findings come back
    failed = {c["check_id"] for c in checkov_report(checkov, broken)["results"]["failed_checks"]}
    assert "CKV_AWS_117" in failed


def test_ruff_reports_nothing():
    # GIVEN the project's ruff configuration (pyproject.toml) / WHEN ruff checks the project
    result = run([str(BIN / "ruff"), "check", ".", "--output-format", "concise"])
    # THEN nothing to report
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-1000:]


def test_bandit_reports_nothing():
    # GIVEN bandit's configuration in pyproject.toml (skips with reasons; `# nosec` lines say why)
    result = run([str(BIN / "bandit"), "-c", "pyproject.toml", "-q", "-f", "json", "-r", *CODE_DIRS])
    report = json.loads(result.stdout)
    # THEN no finding, over every file of the code
    assert [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]] == []
    assert report["metrics"]["_totals"]["loc"] > 1000


def test_nosec_comments_say_why():
    # GIVEN every `# nosec` in the code / THEN each names the check it silences
    bare = []
    for directory in CODE_DIRS:
        for path in (PROJECT_ROOT / directory).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if "# nosec" in line and not any(f"nosec B{d}" in line for d in range(10)):
                    bare.append(f"{path.relative_to(PROJECT_ROOT)}:{number}")
    assert bare == []


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-lambda.txt"])
def test_pip_audit_finds_no_known_vulnerability(lock):
    # GIVEN the pinned dependencies / WHEN pip-audit checks them against PyPI's advisories
    result = run([str(BIN / "pip-audit"), "-r", lock, "--no-deps", "--disable-pip",
                  "--progress-spinner", "off", "-f", "json"])
    report = json.loads(result.stdout or "{}")
    dependencies = report.get("dependencies", [])
    unreachable = ("Max retries exceeded", "SSLError", "ConnectionError", "NameResolutionError")
    if not dependencies and any(marker in result.stderr for marker in unreachable):
        # PyPI not reachable from here at all (no route, or a proxy whose CA is not trusted): say so loudly
        reason = next(line for line in reversed(result.stderr.splitlines()) if line.strip())
        pytest.skip(f"pip-audit cannot reach PyPI: {reason.strip()[:300]}")
    assert dependencies, result.stderr[-2000:]
    # THEN none of them has a known vulnerability
    vulnerable = {d["name"]: [v["id"] for v in d.get("vulns", [])] for d in dependencies if d.get("vulns")}
    assert vulnerable == {}
    unaudited = [d["name"] for d in dependencies if d.get("skip_reason")]
    if len(unaudited) == len(dependencies):
        # PyPI's per-version JSON API (which pip-audit asks) is not reachable
        # from every network: say so loudly rather than pass in silence.
        pytest.skip(f"pip-audit could audit none of {len(dependencies)} pins: {dependencies[0]['skip_reason']}")
    assert unaudited == [], f"not audited: {unaudited}"
