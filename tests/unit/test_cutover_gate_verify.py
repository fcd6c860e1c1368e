"""The cutover gate wants a clean, recent verify of every table at full sample."""

from __future__ import annotations

import pytest

import shared.verify.report
from shared.core.settings import load_settings
from shared.cutover.gate import check_verify

NOW = 1_800_000_000.0
FULL = {"ok": True, "finished_at": NOW - 60, "tables": ["sc-accounts", "sc-repositories"], "sample": 1.0}


@pytest.mark.parametrize(
    ("last", "passes", "says"),
    [
        (FULL, True, "clean"),
        (None, False, "no verify result"),
        ({**FULL, "ok": False}, False, "found differences"),
        ({**FULL, "finished_at": NOW - 7200}, False, "old"),
        ({**FULL, "tables": ["sc-accounts"]}, False, "full `dynashift verify`"),
        ({**FULL, "sample": 0.1}, False, "sample 0.1"),
    ],
)
def test_verify_gate(monkeypatch: pytest.MonkeyPatch, last, passes: bool, says: str) -> None:
    monkeypatch.setattr(shared.verify.report, "last_verify", lambda settings: last)
    check = check_verify(load_settings(verify_max_age_s=3600), NOW)
    assert check.ok is passes
    assert says in check.detail
