"""One shallow hierarchy for every error dynashift raises on purpose.

- `DynashiftError` is the root; the CLI turns any of them into one readable
  line and a non-zero exit code.
- `ConfigError` / `UsageError`: bad settings or arguments (exit 2).
- `QuarantineError` and its subclasses: a *source item* that can never be
  transformed. It is data, not a failure: the engine stores it in quarantine
  and moves on. `reason` is a stable machine code (used by
  `quarantine list --reason`), `message` is what a person reads.
- `TransientError`: throttling, timeouts, 5xx. The only reason to retry.
  Exit code 1 (try again later), except `EndpointUnreachable` (exit 2): an
  endpoint that refuses connections is almost always a configuration
  problem (no AWS_ENDPOINT_URL, engine not started), not a passing fault.
- `StoreError`: a DynamoDB call failed for a non-transient reason; the
  botocore error is kept as `__cause__`.
"""

from __future__ import annotations


class DynashiftError(Exception):
    """Root of all deliberate dynashift errors."""

    exit_code = 1


class ConfigError(DynashiftError):
    """A setting is invalid; the message names the setting."""

    exit_code = 2


class UsageError(DynashiftError):
    """A CLI argument or request is invalid; the message names it."""

    exit_code = 2


class EngineError(DynashiftError):
    """The local DynamoDB engine could not be fetched, started or stopped."""

    exit_code = 2


class StoreError(DynashiftError):
    """A non-transient DynamoDB error (missing table, access denied, ...)."""

    exit_code = 2


class TransientError(DynashiftError):
    """Throttling, a timeout or a 5xx: retrying later is the right answer."""


class EndpointUnreachable(TransientError):
    """Nobody answers at the endpoint (connection refused, DNS, connect timeout).

    Still transient for the retry loops (an engine may be restarting), but the
    CLI exits 2 for it: from an operator's shell it is nearly always a wrong
    or missing endpoint setting."""

    exit_code = 2


class QuarantineError(DynashiftError):
    """A source item that cannot be migrated as it is.

    Subclasses fix `reason`, a stable code operators can filter on.
    """

    reason = "invalid_item"

    def __init__(self, message: str, *, attribute: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.attribute = attribute

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class MissingAttribute(QuarantineError):
    reason = "missing_attribute"


class WrongType(QuarantineError):
    reason = "wrong_type"


class InvalidTimestamp(QuarantineError):
    reason = "invalid_timestamp"


class KeyCollision(QuarantineError):
    """Raised by the engine: the target key is owned by another source item."""

    reason = "key_collision"


class ItemTooLarge(QuarantineError):
    """Raised by the engine: a target item would exceed DynamoDB's 400 KB."""

    reason = "item_too_large"


class WriteRejected(QuarantineError):
    """Raised by the engine: DynamoDB rejected the item for a permanent reason."""

    reason = "write_rejected"


class TransformFailed(QuarantineError):
    """The transform itself raised something unexpected on this item (a bug
    or an input nobody foresaw); quarantined so the shard is not blocked."""

    reason = "transform_failed"


class NotSupportedHere(DynashiftError):
    """The endpoint does not implement an operation (DynamoDB Local has no
    backups, PITR or exports); the message says where to run it instead."""

    exit_code = 2


class BackfillIncomplete(DynashiftError):
    """A backfill step found units that are not done yet (the run cannot be finished)."""


class ModeConflict(DynashiftError):
    """The cutover flag changed since it was read (another writer won the race):
    read it again and decide again."""


class InvalidModeTransition(UsageError):
    """A mode change the cutover protocol does not allow (e.g. old -> new without freeze)."""


class WritesFrozen(TransientError):
    """The application tried to write while the mode is `freeze` (a cutover or
    rollback is switching tables). Retry after a short backoff."""

    retryable = True


class DrainTimeout(TransientError):
    """A stream consumer did not reach the end of its shards in time."""


class DemoFailed(DynashiftError):
    """A step of `dynashift demo` failed its check (verify not clean, a lost write, ...); the message says which."""
