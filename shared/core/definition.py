"""What a migration *is*, as far as the engine knows.

The engine (mirror, backfill, verifier, cutover) is generic. Everything that
is specific to one migration lives in a `MigrationDefinition`: the source
tables and their key attributes, the target key attributes, and five pure
functions. A migration is a plug-in: settings' `migration` names it, either
as "package.module:DEFINITION" or by a built-in short name ("sc" is the sc
migration, `shared.sc`), and nothing in the engine imports one by name. A toy
definition in the tests, plugged in from outside the package, proves the
engine does not depend on the sc one (docs/writing-a-migration.md).

Items crossing this boundary are *native* items: what boto3's
`TypeDeserializer` produces (str, Decimal, bool, None, bytes/Binary, set,
list, dict). Keys of target items are tuples of the target key attribute
values, e.g. ``("ACCOUNT#a1", "PROFILE")``.

Contract of the functions (all pure and deterministic):

- ``transform(source_table, item) -> list[item]``: the target items of one
  source item, or raises a `shared.core.errors.QuarantineError`.
- ``candidate_keys(source_table, item) -> set[key]``: best-effort target keys
  an image *may* have produced, never raising; used to remove the items of an
  old image that itself failed to transform. Superset is fine: removals are
  guarded by ownership.
- ``owner(target_item) -> SourceRef | None``: which source item owns a target
  item (None for items no source can own).
- ``owner_condition(ref) -> boto3 ConditionBase``: a condition that is true
  exactly for target items owned by ``ref``, evaluated by DynamoDB.
- ``reverse(source_table, target_items) -> item``: rebuild the legacy item
  from all the target items its source owns (used after cutover).
- ``shared_key(key) -> bool`` (optional; default: always True): may two
  source items claim this target key? Only such keys can collide, so only
  their removals look for collision waiters (one strongly consistent Query
  each). It must be True for every key two source items can produce.
- ``reverse_items(source_table, owned) -> list[item]`` (optional; default:
  all of them): of the live target items a source item owns, the ones
  ``reverse`` rebuilds it from; ``[]`` when they cannot make a legacy item
  (then the reverse mirror deletes it), e.g. mid-move two copies of one item.
- ``index_lookup(ref) -> (index, hash attr, hash value, range attr, range
  prefix) | None`` (optional; default: None): a target index that lists the
  items ``ref`` owns. The reverse mirror reads it as a hint (GSIs are
  eventually consistent) beside the keys it already knows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.core.errors import ConfigError

Item = dict[str, Any]
TargetKey = tuple[str, ...]


@dataclass(frozen=True, order=True)
class SourceRef:
    """A source item's identity: its (logical) table and its key values."""

    table: str
    key: tuple[str, ...]

    def as_text(self) -> str:
        return self.table + "|" + "|".join(self.key)

    @classmethod
    def from_text(cls, text: str) -> SourceRef:
        table, *key = text.split("|")
        return cls(table, tuple(key))


@dataclass(frozen=True)
class SourceTable:
    """A legacy table, by logical name, with its key attribute names."""

    name: str
    key_attrs: tuple[str, ...]
    # template.yaml's parameters for this table: (its physical name, its stream ARN). Only a
    # migration the stack's template was written for has them; `enable-streams` needs them to
    # print the `sam deploy` line.
    stack_parameters: tuple[str, str] | None = None

    def ref(self, item: Mapping[str, Any]) -> SourceRef:
        return SourceRef(self.name, tuple(str(item[a]) for a in self.key_attrs))

    def key_of(self, ref: SourceRef) -> Item:
        return dict(zip(self.key_attrs, ref.key, strict=True))


# (index name, hash attribute, hash value, range attribute, range prefix): see index_lookup.
IndexLookup = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class MigrationDefinition:
    name: str
    sources: tuple[SourceTable, ...]
    target_key_attrs: tuple[str, ...]
    transform: Callable[[str, Item], list[Item]]
    candidate_keys: Callable[[str, Item], set[TargetKey]]
    owner: Callable[[Item], SourceRef | None]
    owner_condition: Callable[[SourceRef], Any]
    reverse: Callable[[str, list[Item]], Item]
    shared_key: Callable[[TargetKey], bool] = lambda key: True
    reverse_items: Callable[[str, list[Item]], list[Item]] = lambda source_table, items: items
    index_lookup: Callable[[SourceRef], IndexLookup | None] = lambda ref: None

    def source(self, name: str) -> SourceTable:
        for table in self.sources:
            if table.name == name:
                return table
        names = ", ".join(t.name for t in self.sources)
        raise ConfigError(f"unknown source table {name!r} (this migration has: {names})")

    def target_key(self, item: Mapping[str, Any]) -> TargetKey:
        return tuple(str(item[a]) for a in self.target_key_attrs)


_REGISTRY: dict[str, MigrationDefinition] = {}
# Names that stand for a plug-in spec. A spec is a string, not an import: the
# engine never imports a migration by name, it loads the one settings name.
BUILT_IN: dict[str, str] = {"sc": "shared.sc:DEFINITION"}


def register(definition: MigrationDefinition) -> MigrationDefinition:
    _REGISTRY[definition.name] = definition
    return definition


def get_definition(name: str) -> MigrationDefinition:
    """The migration `name` names: a registered name, a built-in one ("sc"), or a
    plug-in spec "package.module:ATTRIBUTE" (the module is imported; the attribute
    is a MigrationDefinition, or a function of no arguments returning one)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    spec = BUILT_IN.get(name, name)
    if ":" not in spec:
        raise ConfigError(
            f"unknown migration {name!r} (registered: {', '.join(sorted({*_REGISTRY, *BUILT_IN}))}; "
            "or name a plug-in as 'package.module:DEFINITION')"
        )
    definition = _load(spec)
    _REGISTRY[name] = definition
    _REGISTRY.setdefault(definition.name, definition)
    return definition


def _load(spec: str) -> MigrationDefinition:
    import importlib

    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"migration {spec!r}: cannot import {module_name!r} ({error})") from None
    found = getattr(module, attribute, None)
    if callable(found) and not isinstance(found, MigrationDefinition):
        found = found()
    if not isinstance(found, MigrationDefinition):
        raise ConfigError(f"migration {spec!r}: {attribute!r} in {module_name} is not a MigrationDefinition")
    return found
