"""The docs match the code: every setting and every command is in docs/reference.md, and the links resolve."""

from __future__ import annotations

import re

from shared.cli.main import cli
from shared.core.settings import PROJECT_ROOT, Settings

README = (PROJECT_ROOT / "README.md").read_text()
REFERENCE = (PROJECT_ROOT / "docs" / "reference.md").read_text()


def test_every_setting_has_a_row_in_the_configuration_table():
    section = REFERENCE.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))
    assert set(Settings.model_fields) - rows == set()
    assert rows - set(Settings.model_fields) == set(), "docs/reference.md documents settings that do not exist"


def test_every_command_is_in_the_cli_reference():
    block = REFERENCE.split("## CLI", 1)[1].split("## ", 1)[0]
    documented = set(re.findall(r"^  ([a-z][a-z-]+)", block, flags=re.MULTILINE))
    assert set(cli.commands) - documented == set()
    assert documented - set(cli.commands) == set(), "docs/reference.md documents commands that do not exist"


def test_the_docs_the_readme_links_exist():
    for link in re.findall(r"\]\(((?:docs|bench)/[^)#]+)", README):
        assert (PROJECT_ROOT / link).exists(), link


def test_every_relative_link_of_the_docs_resolves():
    for doc in [PROJECT_ROOT / "README.md", *(PROJECT_ROOT / "docs").glob("*.md")]:
        for link in re.findall(r"\]\((?!https?:|#|mailto:)([^)#\s]+)", doc.read_text()):
            assert (doc.parent / link).exists(), f"{doc.name}: {link}"


def test_the_readme_is_a_five_minute_read():
    # about 200 words a minute for prose with commands: the detail lives in docs/
    assert len(README.split()) <= 1200, len(README.split())
