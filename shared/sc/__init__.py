"""The sc migration (sc-accounts + sc-repositories → sc-main).

Importing this package registers its `MigrationDefinition` under the name
``"sc"``; `shared.core.definition.get_definition("sc")` imports it on demand.
The functions live in `shared.sc.transform`, the models in `shared.sc.models`.
"""

from __future__ import annotations

from shared.core.definition import register
from shared.sc.models import Account, AccountProfile, Membership, Repository, RepositoryItem
from shared.sc.transform import (
    ACCOUNTS,
    DEFINITION,
    REPOSITORIES,
    candidate_keys,
    normalise,
    owner,
    owner_condition,
    reverse,
    transform,
)

register(DEFINITION)

__all__ = [
    "ACCOUNTS",
    "DEFINITION",
    "REPOSITORIES",
    "Account",
    "AccountProfile",
    "Membership",
    "Repository",
    "RepositoryItem",
    "candidate_keys",
    "normalise",
    "owner",
    "owner_condition",
    "reverse",
    "transform",
]
