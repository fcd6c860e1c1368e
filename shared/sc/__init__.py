"""The sc migration (sc-accounts + sc-repositories → sc-main).

Importing this package registers its `MigrationDefinition` under the name
``"sc"``; `shared.core.definition.get_definition("sc")` imports it on demand.
The functions live in `shared.sc.transform`, the models in `shared.sc.models`.
What the demo, the tests and the benchmarks run it on is the sc migration's
too: reproducible legacy data (`shared.sc.seed`) and a live application
workload (`shared.sc.workload`). Neither is imported here, and neither
ships to Lambda (the Makefile leaves them out of the artifact).
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
