"""Reverse replication's pure parts: record grouping, directions, CLI surface (no AWS)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.cli.main import main
from shared.core.codec import to_wire
from shared.core.definition import SourceRef
from shared.core.errors import UsageError
from shared.core.settings import load_settings
from shared.sc.transform import index_lookup as sc_index_lookup
from shared.streams.drain import consumer_tables
from shared.streams.reverse_mirror import ReverseEngine, ReverseStats, reverse_quarantine_ref


def record(seq: int, old: dict | None = None, new: dict | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"SequenceNumber": f"{seq:021d}", "Keys": to_wire({k: (new or old)[k] for k in ("PK", "SK")})}
    if old:
        body["OldImage"] = to_wire(old)
    if new:
        body["NewImage"] = to_wire(new)
    return {"dynamodb": body, "eventSourceARN": "arn:aws:dynamodb:r:1:table/sc-main/stream/x"}


@pytest.fixture
def engine():
    e = ReverseEngine(load_settings())
    yield e
    e.close()


def test_records_group_by_owner_of_old_and_new_image(engine):
    repo_r1 = {"PK": "ACCOUNT#a1", "SK": "REPO#tools", "entity": "repository", "repo_id": "r1"}
    repo_r2 = {**repo_r1, "repo_id": "r2"}
    member = {"PK": "TEAM#t1", "SK": "MEMBER#a1", "entity": "membership", "account_id": "a1", "team_id": "t1"}
    profile = {"PK": "ACCOUNT#a1", "SK": "PROFILE", "entity": "account", "account_id": "a1"}
    tomb = {"PK": "ACCOUNT#a9", "SK": "PROFILE", "entity": "_dynashift_tombstone"}
    stats = ReverseStats()
    # GIVEN a key handed from r1 to r2, a membership and a profile of a1, and a tombstone sweep
    groups = engine._groups([record(1, repo_r1, repo_r2), record(2, new=member), record(3, profile, profile),
                             record(4, old=tomb)], stats)
    # THEN both repositories are rebuilt, a1 once for both of its records, the tombstone never
    acc, repo = "sc-accounts", "sc-repositories"
    assert list(groups) == [SourceRef(repo, ("r1",)), SourceRef(repo, ("r2",)), SourceRef(acc, ("a1",))]
    assert groups[SourceRef(acc, ("a1",))].sequences == [f"{2:021d}", f"{3:021d}"]
    assert groups[SourceRef(acc, ("a1",))].hints == {("TEAM#t1", "MEMBER#a1"), ("ACCOUNT#a1", "PROFILE")}
    assert stats.artifacts == 1


def test_sc_index_lookup_and_quarantine_ref():
    assert sc_index_lookup(SourceRef("sc-accounts", ("a1",))) == ("GSI1", "GSI1PK", "ACCOUNT#a1", "GSI1SK", "TEAM#")
    assert sc_index_lookup(SourceRef("sc-repositories", ("r1",)))[2] == "REPO#r1"
    assert reverse_quarantine_ref(SourceRef("sc-accounts", ("a1",))).as_text() == "reverse:sc-accounts|a1"


def test_consumer_tables_per_direction():
    settings = load_settings(table_names={"sc-accounts": "acc-x"}, target_table="main-x")
    assert consumer_tables(settings, "forward") == ["acc-x", "sc-repositories"]
    assert consumer_tables(settings, "reverse") == ["main-x"]
    with pytest.raises(UsageError, match="direction"):
        consumer_tables(settings, "sideways")


def test_mirror_run_direction_is_validated_in_one_line(capsys):
    assert main(["mirror", "run", "--direction", "sideways"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--direction" in err[0]
    assert main(["mirror", "run", "--help"]) == 0
    assert "reverse" in capsys.readouterr().out
