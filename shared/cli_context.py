"""What every `dynashift` command shares: the settings context and the consoles.

Kept apart from `shared.cli` so that each component can define its commands
in its own module (registered in `shared.cli`) without an import cycle.
"""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console

from shared.settings import Settings, load_settings

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
