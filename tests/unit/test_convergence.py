"""The in-memory convergence check (`shared.verify.convergence.check`): the reference the
verifier, the race tests and the chaos scenarios are judged by, so its own rules are tested."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from shared.core.definition import SourceRef, get_definition
from shared.verify.convergence import check

SC = get_definition("sc")
REPOS = "sc-repositories"


def repo(repo_id: str, name: str) -> dict[str, Any]:
    return {"repoId": repo_id, "accountId": "a1", "name": name, "createdAt": Decimal(1700000000)}


def item(repo_id: str, name: str) -> dict[str, Any]:
    (target,) = SC.transform(REPOS, repo(repo_id, name))
    return target


def ref(repo_id: str) -> SourceRef:
    return SourceRef(REPOS, (repo_id,))


def test_a_chain_of_collisions_is_converged_when_each_loser_keeps_its_last_clean_item():
    # r1 renamed from "tools" onto r3's "lib"; r2 renamed from "core" onto "TOOLS", which r1 still holds
    sources = {REPOS: [repo("r1", "LIB"), repo("r2", "TOOLS"), repo("r3", "lib")]}
    target = [item("r1", "tools"), item("r2", "core"), item("r3", "lib")]
    result = check(SC, sources, target, {ref("r1"): "key_collision", ref("r2"): "key_collision"})
    assert result.ok, result.summary()
    assert sorted(result.held_by_quarantined) == [("ACCOUNT#a1", "REPO#core"), ("ACCOUNT#a1", "REPO#tools")]
    # AND the second loser must be in quarantine
    result = check(SC, sources, target, {ref("r1"): "key_collision"})
    assert [(r, expected) for r, expected, _ in result.quarantine_missing] == [(ref("r2"), "key_collision")]


def test_a_key_kept_by_an_item_that_is_free_to_move_is_not_converged():
    # r1 left "tools" for a free name, yet still holds it: the mirror failed to remove it
    sources = {REPOS: [repo("r1", "free"), repo("r2", "TOOLS")]}
    target = [item("r1", "tools"), item("r1", "free"), item("r2", "core")]
    result = check(SC, sources, target, {ref("r2"): "key_collision"})
    assert not result.ok
    assert [key for key, _ in result.mismatched] == [("ACCOUNT#a1", "REPO#tools")]
    assert result.quarantine_stale == [ref("r2")]


def test_items_renamed_onto_each_others_names_are_both_collisions():
    sources = {REPOS: [repo("r1", "B"), repo("r2", "A")]}
    target = [item("r1", "a"), item("r2", "b")]
    assert check(SC, sources, target, {ref("r1"): "key_collision", ref("r2"): "key_collision"}).ok
    assert not check(SC, sources, target, {}).ok


def test_two_claimants_of_a_free_key_one_holds_it_the_other_is_a_collision():
    sources = {REPOS: [repo("r1", "Tools"), repo("r2", "tools")]}
    assert check(SC, sources, [item("r2", "tools")], {ref("r1"): "key_collision"}).ok
    result = check(SC, sources, [], {})
    assert [key for key in result.missing] == [("ACCOUNT#a1", "REPO#tools")]
