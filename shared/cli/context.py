"""What every `dynashift` command shares: the settings context and the consoles.

Kept apart from `shared.cli.main` so that each component can define its commands
in its own module (registered in `shared.cli.main`) without an import cycle.

`refuse_remote_endpoint` is the one guard against pointing a command that
writes synthetic data or creates tables at real AWS by mistake (an operator
shell without AWS_ENDPOINT_URL points at the real regional endpoint). Such a
command calls it before its first AWS call and offers `--allow-remote`.
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console

from shared.core.errors import UsageError
from shared.core.settings import Settings, load_settings

console = Console()
err_console = Console(stderr=True)


class Context:
    """What every command needs: the settings built from the global options."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        self.overrides = overrides
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(**self.overrides)
        return self._settings


pass_ctx = click.make_pass_decorator(Context)


def emit_json(data: Any) -> None:
    """A command's `--json` result: one JSON document on stdout, nothing else there."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def refuse_remote_endpoint(settings: Settings, what: str, allow_remote: bool) -> None:
    """Raise UsageError unless the endpoint is local (or `--allow-remote` confirmed it).

    `what` names the command (and, if useful, why it is dangerous there), e.g.
    "seed" or "tables create (on AWS the stack creates these tables)".
    """
    if allow_remote or settings.is_local:
        return
    endpoint = settings.effective_endpoint or f"the real AWS endpoint of {settings.effective_region}"
    raise UsageError(
        f"{what}: the endpoint is not local ({endpoint}); set AWS_ENDPOINT_URL to a local engine "
        "or pass --allow-remote"
    )
