"""`--json` on stdout for `verify` and `quarantine list`, images only on request, through the real CLI entry point.

(`mode`, `cutover`, `rollback` and `finalize` are in test_cutover_cli_local.py.)
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from shared.core import aws
from shared.core.settings import Settings
from shared.sc.seed import seed
from shared.sim.local_lambda import run_forward_mirror
from tests.integration.helpers import make_tables, one_line
from tests.integration.helpers import run_cli as run

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:No application metrics to publish")]

VALID_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


@pytest.fixture
def env(sc_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The test's tables, as the CLI sees them through DYNASHIFT_* variables (not created yet)."""
    monkeypatch.setenv("DYNASHIFT_ENDPOINT_URL", sc_settings.endpoint_url)
    monkeypatch.setenv("DYNASHIFT_TARGET_TABLE", sc_settings.target_table)
    monkeypatch.setenv("DYNASHIFT_CONTROL_TABLE", sc_settings.control_table)
    monkeypatch.setenv("DYNASHIFT_TABLE_NAMES", json.dumps(sc_settings.table_names))
    return sc_settings


@pytest.fixture
def migrated(env: Settings) -> Settings:
    """Seeded legacy tables with bad rows (every reason), mirrored into sc-main."""
    make_tables(env)
    asyncio.run(seed(env, 20, 40, 0.1, 9))
    run_forward_mirror(env)
    return env




def test_verify_json_goes_to_stdout_alone_and_json_file_to_the_file(migrated, capsys, tmp_path):
    capsys.readouterr()
    # WHEN verify runs with --json
    code, out, err = run(capsys, "verify", "--settle", "0", "--segments", "2", "--json")
    # THEN exit 0, and stdout is exactly one JSON report (no progress, no table)
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] is True and report["missing"] == report["extra"] == 0
    assert report["source_items"] > 0 and report["tables"] == ["sc-accounts", "sc-repositories"]
    assert sum(report["quarantined"].values()) > 0
    # WHEN a target item disappears and verify runs with --json and --json-file
    client = aws.dynamodb(migrated)
    page = client.scan(TableName=migrated.target_table, Limit=50)
    profile = next(i for i in page["Items"] if i["SK"]["S"] == "PROFILE")
    client.delete_item(TableName=migrated.target_table, Key={"PK": profile["PK"], "SK": profile["SK"]})
    path = tmp_path / "v.json"
    code, out, _ = run(capsys, "verify", "--settle", "0", "--segments", "2", "--json", "--json-file", str(path))
    # THEN exit 1, the JSON on stdout says why, and the file holds the same report
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False and report["missing"] == 1
    assert report["samples"]["missing"][0]["target_key"] == [profile["PK"]["S"], "PROFILE"]
    assert json.loads(path.read_text()) == report
    # AND without --json, --json-file still writes the file next to the table
    code, out, _ = run(capsys, "verify", "--settle", "0", "--segments", "2", "--json-file", str(path))
    assert code == 1 and "report written to" in out
    assert json.loads(path.read_text())["missing"] == 1


def test_the_quarantine_listing_shows_images_only_on_request(migrated, capsys):
    capsys.readouterr()
    # WHEN the quarantine is listed with its images
    code, out, err = run(capsys, "quarantine", "list", "--json", "--with-images")
    assert code == 0, err
    full = json.loads(out)
    emails = {e["image"]["email"] for e in full
              if isinstance(e["image"].get("email"), str) and VALID_EMAIL.match(e["image"]["email"])}
    # THEN each entry carries its legacy image (emails of real people among them)
    assert full and all(e["image"] for e in full) and emails
    # WHEN listed by default
    code, out, err = run(capsys, "quarantine", "list", "--json")
    assert code == 0, err
    plain = json.loads(out)
    # THEN the same entries, each with key, table, reason, message and time only: no image, no email
    assert [(e["table"], e["key"], e["reason"]) for e in plain] == [(e["table"], e["key"], e["reason"]) for e in full]
    assert all(set(e) == {"table", "key", "reason", "message", "detected_at"} for e in plain)
    assert not any(email in out for email in emails)
    # AND the human listing has no image column and no email either
    code, out, _ = run(capsys, "quarantine", "list")
    assert code == 0 and "quarantine (" in out and "image" not in out
    assert not any(email in out for email in emails)
    code, out, _ = run(capsys, "quarantine", "list", "--with-images")
    assert code == 0 and "image" in out
    # AND --reason narrows it to a known reason
    code, out, _ = run(capsys, "quarantine", "list", "--json", "--reason", "invalid_email")
    assert code == 0 and {e["reason"] for e in json.loads(out)} == {"invalid_email"}


def test_verify_and_quarantine_on_missing_tables_are_one_line_and_exit_2(env, capsys):
    # GIVEN no tables at all
    for argv in (["verify", "--settle", "0", "--json"], ["quarantine", "list", "--json"],
                 ["quarantine", "list", "--with-images"]):
        # WHEN the command runs / THEN exit 2, one line naming the missing table, nothing on stdout
        code, out, err = run(capsys, *argv)
        assert code == 2, (argv, err)
        assert "not found" in one_line(err) and out == ""


def test_a_quarantine_entry_put_by_hand_lists_without_its_image(env, capsys):
    # GIVEN an entry written the engine's way, whose image holds an email
    make_tables(env)

    async def put() -> None:
        from shared.core.definition import SourceRef
        from shared.store.control import ControlStore, QuarantineEntry

        async with aws.aio_dynamodb(env) as client:
            await ControlStore(client, env.control_table).quarantine_put(QuarantineEntry(
                ref=SourceRef("sc-accounts", ("acc-1",)), reason="invalid_plan", message="plan 'gold' is unknown",
                image={"accountId": "acc-1", "email": "carol@example.org", "plan": "gold"}))

    asyncio.run(put())
    capsys.readouterr()
    # WHEN listed / THEN the entry is there without the email; with --with-images, with it
    code, out, _ = run(capsys, "quarantine", "list", "--json")
    assert code == 0 and json.loads(out)[0]["key"] == ["acc-1"] and "carol@example.org" not in out
    code, out, _ = run(capsys, "quarantine", "list", "--json", "--with-images")
    assert code == 0 and json.loads(out)[0]["image"]["email"] == "carol@example.org"
