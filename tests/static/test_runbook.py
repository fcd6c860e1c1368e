"""docs/runbook.md names only things that exist.

Conventions (stated at the top of the runbook): `stack/Name` is a resource of
template.yaml, `stack-output/Name` one of its outputs, and `dynashift a b`
in backticks names a command path of the CLI.
"""

from __future__ import annotations

import re

import click
from cfn_flip import load_yaml

from shared.cli.main import cli
from shared.core.settings import PROJECT_ROOT

RUNBOOK = (PROJECT_ROOT / "docs" / "runbook.md").read_text()
TEMPLATE = load_yaml((PROJECT_ROOT / "template.yaml").read_text())


def test_every_stack_resource_named_in_the_runbook_exists():
    # GIVEN the resources and outputs the runbook names
    resources = set(re.findall(r"`stack/([A-Za-z0-9]+)`", RUNBOOK))
    outputs = set(re.findall(r"stack-output/([A-Za-z0-9]+)", RUNBOOK))
    assert len(resources) >= 10 and outputs, "the runbook's convention is not being followed"
    # THEN each is in template.yaml
    assert resources - set(TEMPLATE["Resources"]) == set()
    assert outputs - set(TEMPLATE["Outputs"]) == set()


def test_every_dynashift_command_in_the_runbook_exists():
    # GIVEN every `dynashift ...` in the runbook / WHEN its words are walked down the CLI's groups
    named = set(re.findall(r"`dynashift((?: [a-z][a-z-]*)+)", RUNBOOK))
    assert len(named) >= 15, "the runbook's convention is not being followed"
    missing = []
    for line in named:
        command: click.Command = cli
        for word in line.split():
            if not isinstance(command, click.Group) or word not in command.commands:
                break
            command = command.commands[word]
        if command is cli:
            missing.append(line.strip())
    # THEN each names a real command
    assert missing == []


def test_runbook_covers_every_phase_of_the_plan():
    # GIVEN the plan's phases and sections / THEN the runbook has each
    for heading in ("Phase 1", "1.1", "1.2", "Phase 2", "2.1", "2.2", "Phase 3", "3.1", "3.2",
                    "Rollback", "Phase 4", "4.1", "4.2"):
        assert re.search(rf"^#+ .*{re.escape(heading)}", RUNBOOK, re.M), heading
