"""The README matches the code: every setting and every command is documented."""

from __future__ import annotations

import re

from shared.cli import cli
from shared.settings import PROJECT_ROOT, Settings

README = (PROJECT_ROOT / "README.md").read_text()


def test_every_setting_has_a_row_in_the_configuration_table():
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))
    assert set(Settings.model_fields) - rows == set()
    assert rows - set(Settings.model_fields) == set(), "the README documents settings that do not exist"


def test_every_command_is_in_the_cli_reference():
    block = README.split("## CLI", 1)[1].split("## ", 1)[0]
    documented = set(re.findall(r"^  ([a-z][a-z-]+)", block, flags=re.MULTILINE))
    assert set(cli.commands) - documented == set()
    assert documented - set(cli.commands) == set(), "the README documents commands that do not exist"


def test_the_docs_the_readme_links_exist():
    for link in re.findall(r"\]\(((?:docs|bench)/[^)]+)\)", README):
        assert (PROJECT_ROOT / link).exists(), link
