"""The MigrationDefinition API is generic: a toy migration uses all of it.

Nothing here imports shared.sc; the toy definition registers itself the same
way sc does, and the engine-facing helpers work on it unchanged.
"""

from __future__ import annotations

import pytest

from shared.core.definition import SourceRef, get_definition
from shared.core.errors import ConfigError, MissingAttribute
from tests.toy_migration import DEFINITION


def test_a_registered_definition_is_found_by_name() -> None:
    # GIVEN the toy module (imported above, which registers it)
    # WHEN the engine asks for "toy"
    # THEN it gets that very definition
    assert get_definition("toy") is DEFINITION
    assert DEFINITION.name == "toy"


def test_unknown_migration_name_is_a_config_error_listing_what_exists() -> None:
    # GIVEN no migration called "nope"
    # WHEN it is asked for
    # THEN the error names it and lists the registered ones
    with pytest.raises(ConfigError, match="'nope'.*toy"):
        get_definition("nope")


def test_a_plug_in_is_loaded_from_its_module_by_settings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a migration named as a plug-in, "package.module:ATTRIBUTE", in the environment
    from shared.core.settings import load_settings

    monkeypatch.setenv("DYNASHIFT_MIGRATION", "tests.toy_migration:DEFINITION")
    monkeypatch.setenv("DYNASHIFT_TABLE_NAMES", '{"toy-users": "toy-users"}')
    settings = load_settings()
    # WHEN the engine asks for the migration the settings name
    # THEN it gets the module's definition, with no change to dynashift
    assert get_definition(settings.migration) is DEFINITION


@pytest.mark.parametrize(
    ("spec", "named"),
    [("tests.no_such_module:DEFINITION", "cannot import"), ("tests.toy_migration:NOPE", "not a MigrationDefinition")],
    ids=["missing-module", "missing-attribute"],
)
def test_a_bad_plug_in_spec_is_one_config_error_naming_it(spec: str, named: str) -> None:
    # GIVEN a spec whose module or attribute does not exist / WHEN it is loaded / THEN a ConfigError names both
    with pytest.raises(ConfigError, match=named) as error:
        get_definition(spec)
    assert spec in str(error.value)


def test_source_finds_a_table_by_name_and_rejects_others() -> None:
    # GIVEN the toy definition with its single source table
    # WHEN tables are looked up
    users = DEFINITION.source("toy-users")
    # THEN the known one carries its key attributes, an unknown one is a ConfigError
    assert users.key_attrs == ("userId",)
    with pytest.raises(ConfigError, match="toy-users"):
        DEFINITION.source("toy-groups")


def test_ref_and_key_of_are_inverse_on_a_source_item() -> None:
    # GIVEN a toy source item
    item = {"userId": "u1", "nick": "kim"}
    users = DEFINITION.source("toy-users")
    # WHEN its ref is taken and turned back into a key
    ref = users.ref(item)
    # THEN the ref names table and key, and key_of rebuilds the key attributes
    assert ref == SourceRef("toy-users", ("u1",))
    assert users.key_of(ref) == {"userId": "u1"}
    assert SourceRef.from_text(ref.as_text()) == ref


def test_target_key_reads_the_target_key_attributes_in_order() -> None:
    # GIVEN a toy target item
    (target,) = DEFINITION.transform("toy-users", {"userId": "u1"})
    # WHEN the engine takes its key
    # THEN it is (PK, SK), in the definition's order
    assert DEFINITION.target_key(target) == ("USER#u1", "META")


def test_toy_functions_agree_with_each_other_through_the_definition() -> None:
    # GIVEN a toy source item
    item = {"userId": "u1", "nick": "kim"}
    # WHEN it goes through every function of the definition
    targets = DEFINITION.transform("toy-users", item)
    # THEN ownership, candidate keys and reverse all line up
    ref = DEFINITION.source("toy-users").ref(item)
    assert [DEFINITION.owner(t) for t in targets] == [ref]
    assert {DEFINITION.target_key(t) for t in targets} <= DEFINITION.candidate_keys("toy-users", item)
    assert DEFINITION.reverse("toy-users", targets) == item
    assert DEFINITION.owner(targets[0] | {"SK": "OTHER"}) is None


def test_toy_quarantine_uses_the_shared_error_hierarchy() -> None:
    # GIVEN a toy source item without its key
    # WHEN transformed
    # THEN it raises a QuarantineError subclass, like sc does
    with pytest.raises(MissingAttribute):
        DEFINITION.transform("toy-users", {"nick": "kim"})


def test_both_definitions_coexist_in_the_registry() -> None:
    # GIVEN the toy definition registered
    # WHEN sc is asked for (imported on demand)
    sc = get_definition("sc")
    # THEN both are registered, and neither replaced the other
    assert get_definition("toy") is DEFINITION
    assert sc.name == "sc" and sc is not DEFINITION
