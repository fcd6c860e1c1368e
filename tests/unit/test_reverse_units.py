"""Reverse replication's pure parts: record grouping, directions, CLI surface (no AWS)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.cli import main
from shared.codec import to_wire
from shared.definition import SourceRef
from shared.drain import consumer_tables
from shared.errors import UsageError
from shared.reverse_mirror import ReverseEngine, ReverseStats, reverse_quarantine_ref, sc_index_lookup
from shared.settings import load_settings


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


# ------------------------------------------------------------------- drain
class FakeStreams:
    """Shards as lists of sequence numbers; closed shards end, open ones return empty pages."""

    def __init__(self, shards: dict[str, tuple[list[int], bool]], empty_before: int = 0) -> None:
        self.shards = shards  # shard id -> (sequence numbers, closed)
        self.empty_before = empty_before  # empty pages an open shard returns before its records (as AWS may)
        self.reads = 0

    def get_shard_iterator(self, StreamArn, ShardId, ShardIteratorType, SequenceNumber=None):  # noqa: N803
        sequences, _ = self.shards[ShardId]
        start = 0 if ShardIteratorType == "TRIM_HORIZON" else sum(1 for s in sequences if s <= int(SequenceNumber))
        return {"ShardIterator": f"{ShardId}|{start}|{self.empty_before}"}

    def get_records(self, ShardIterator, Limit):  # noqa: N803
        self.reads += 1
        shard, position, empties = ShardIterator.split("|")
        position, empties = int(position), int(empties)
        sequences, closed = self.shards[shard]
        if empties:
            return {"Records": [], "NextShardIterator": f"{shard}|{position}|{empties - 1}"}
        page = sequences[position : position + 2]
        records = [{"dynamodb": {"SequenceNumber": f"{s:021d}"}} for s in page]
        at_end = position + len(page) >= len(sequences)
        nxt = None if closed and at_end else f"{shard}|{position + len(page)}|0"
        return {"Records": records, "NextShardIterator": nxt}


def progress(checkpoint: int | None, finished: bool = False) -> dict:
    return {"checkpoint": None if checkpoint is None else f"{checkpoint:021d}", "stream_arn": "arn", "finished": finished,
            "table": "t"}


def test_shard_ends_read_from_the_checkpoint_across_lineage():
    from shared.drain import _reached, shard_ends

    # GIVEN a closed parent the consumer finished, a closed parent it is halfway through,
    # an open child nobody read, and an open shard with an empty page before its records
    streams = FakeStreams({
        "parent-done": ([1, 2, 3], True),
        "parent-half": ([4, 5, 6, 7, 8], True),
        "child-new": ([9, 10], False),
        "child-empty": ([], False),
    })
    state = {"parent-done": progress(3, finished=True), "parent-half": progress(5),
             "child-new": progress(None), "child-empty": progress(None)}
    # WHEN the ends are measured
    ends = shard_ends(load_settings(), "forward", progress=state, streams=streams)
    # THEN each shard's last record, read from the consumer's checkpoint on
    assert ends == {"parent-done": f"{3:021d}", "parent-half": f"{8:021d}", "child-new": f"{10:021d}",
                    "child-empty": None}
    # AND only the finished shard and the empty one count as drained
    assert {s: _reached(state[s], e) for s, e in ends.items()} == {
        "parent-done": True, "parent-half": False, "child-new": False, "child-empty": True}


def test_an_empty_page_before_records_does_not_end_an_open_shard():
    from shared.drain import EMPTY_PAGES_AT_END, _read_to_end

    # GIVEN an open shard that answers one empty page before its records (real DynamoDB may)
    streams = FakeStreams({"s": ([11, 12, 13], False)}, empty_before=EMPTY_PAGES_AT_END - 1)
    # WHEN read from no checkpoint / THEN the records behind the empty page are found
    assert _read_to_end(streams, "arn", "s", None) == f"{13:021d}"
    # AND from a checkpoint at the end, the end is the checkpoint itself
    assert _read_to_end(FakeStreams({"s": ([11, 12, 13], False)}), "arn", "s", f"{13:021d}") == f"{13:021d}"
