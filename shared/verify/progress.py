"""A verify run's progress, rendered on a rich `Progress` (the CLI's and the demo's).

The verifier reports through an observer (`scanned`, `phase`); this one adds a
line per scanned table and keeps the current phase on another. It takes the
Progress it draws on, so nothing here imports rich.
"""

from __future__ import annotations

from typing import Any


class RichObserver:
    """Renders a verify run's progress: one line per scanned table, and the current phase."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}
        self.phase_task = progress.add_task("starting", total=None)

    def scanned(self, table: str, items: int) -> None:
        if table not in self.tasks:
            self.tasks[table] = self.progress.add_task(f"scan {table}", total=None)
        self.progress.advance(self.tasks[table], items)

    def phase(self, text: str) -> None:
        self.progress.update(self.phase_task, description=text)
