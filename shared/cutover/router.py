"""The application side of the cutover: which table to write, right now.

The application asks the router before each write. The router reads the mode
flag (`shared.store.mode`) through powertools Parameters' DynamoDB provider, which
caches it for `mode_cache_age_s`: each application instance reads the flag
at most once per cache period, and is never more than that period behind.
The cutover relies on exactly that bound: after setting ``freeze`` it waits
at least the cache age (plus the longest write the application may still
have in flight) before it drains, so no instance still writes the table
being left.

The control table has a composite key (PK, SK), so the provider is used with
``get_multiple("MODE")``: a Query on ``PK = "MODE"`` that returns
``{SK: mode}``, i.e. ``{"MODE": "old"}`` (``{}`` while the item is absent,
which means ``old``). The query is strongly consistent, so the cache age is
the whole staleness bound.

`write(legacy_fn, new_fn)` calls the write for the current mode and raises
`WritesFrozen` (retryable) during ``freeze``: the application retries it
after a short backoff, and the write lands on the new table once the switch
is done (or on the old one again if it was aborted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import boto3
from aws_lambda_powertools.utilities.parameters import DynamoDBProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

from shared.core.aws import client_kwargs, translate
from shared.core.errors import DynashiftError, StoreError, WritesFrozen
from shared.core.settings import Settings, get_settings
from shared.store.mode import Mode

T = TypeVar("T")
MODE_NAME = "MODE"


class Router:
    """Routes the application's writes by the (cached) mode flag."""

    def __init__(self, settings: Settings | None = None, *, provider: DynamoDBProvider | None = None) -> None:
        self.settings = settings or get_settings()
        self.provider = provider or _provider(self.settings)

    def current_mode(self) -> Mode:
        try:
            values = self.provider.get_multiple(
                MODE_NAME, max_age=self.settings.mode_cache_age_s, ConsistentRead=True  # type: ignore[arg-type]
            )
        except GetParameterError as exc:
            what = f"read the mode flag from {self.settings.control_table}"
            error = translate(exc.__context__ or exc, what)
            if not isinstance(error, DynashiftError):
                error = StoreError(f"{what}: {exc}")
            raise error from exc
        value = (values or {}).get(MODE_NAME, Mode.OLD)
        try:
            return Mode(value)
        except ValueError:
            raise StoreError(
                f"the mode flag in {self.settings.control_table} holds {value!r}, not old|freeze|new"
            ) from None

    def write(self, legacy_fn: Callable[..., T], new_fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call `legacy_fn` in mode old, `new_fn` in mode new; raise WritesFrozen during freeze."""
        mode = self.current_mode()
        if mode is Mode.FREEZE:
            raise WritesFrozen("writes are frozen while the tables are switched; retry in a moment")
        return (legacy_fn if mode is Mode.OLD else new_fn)(*args, **kwargs)


def _provider(settings: Settings) -> DynamoDBProvider:
    # Created lazily (first use), never at import time; same endpoint, region
    # and credentials as every other dynashift client.
    resource = boto3.session.Session().resource("dynamodb", **client_kwargs(settings))
    return DynamoDBProvider(
        table_name=settings.control_table, key_attr="PK", sort_attr="SK", value_attr="mode", boto3_client=resource
    )


_default: Router | None = None


def default_router() -> Router:
    global _default
    if _default is None:
        _default = Router()
    return _default


def current_mode() -> Mode:
    """The mode, at most `mode_cache_age_s` old (process-wide router)."""
    return default_router().current_mode()


def write(legacy_fn: Callable[..., T], new_fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Route one write by the mode (process-wide router); WritesFrozen during freeze."""
    return default_router().write(legacy_fn, new_fn, *args, **kwargs)


__all__ = ["Router", "WritesFrozen", "current_mode", "default_router", "write"]
