"""Sweeping tombstones from any thread: `TombstoneSweeper`, on a `BackgroundLoop` of its own.

The local runner sweeps tombstones no stale writer can need any more
(`shared.protocol.apply.sweep_tombstones`) every `SWEEP_EVERY_S` and before
it exits. A periodic sweep runs in a thread of its own, never in the
polling loop: its GSI queries would otherwise hold every shard's next batch
back, a lag spike every few seconds. The sweeper keeps one event loop and
one client for its lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any

from shared.core import aws
from shared.core.definition import MigrationDefinition
from shared.core.settings import Settings


class BackgroundLoop:
    """An event loop running in a daemon thread of its own; `run` submits a coroutine from any thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class TombstoneSweeper:
    """`sweep_tombstones` callable from any thread: one loop and one client for its lifetime.

    The runner calls it from its sweeping thread while the handler's engine
    applies batches in the polling thread; neither waits for the other (the
    sweep's delete is conditional on the tombstone still being there).
    """

    def __init__(self, settings: Settings, definition: MigrationDefinition) -> None:
        self.settings = settings
        self.definition = definition
        self._background: BackgroundLoop | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._lock = threading.Lock()

    async def _sweep(self, older_than_s: float) -> int:
        from shared.protocol.apply import sweep_tombstones

        if self._client is None:
            self._stack = contextlib.AsyncExitStack()
            self._client = await self._stack.enter_async_context(aws.aio_dynamodb(self.settings))
        return await sweep_tombstones(self.settings, self.definition, self._client, older_than_s=older_than_s)

    def __call__(self, older_than_s: float) -> int:
        with self._lock:
            if self._background is None:
                self._background = BackgroundLoop("dynashift-sweeper")
            background = self._background
        return background.run(self._sweep(older_than_s))

    def close(self) -> None:
        with self._lock:
            background, self._background = self._background, None
        if background is None:
            return
        if self._stack is not None:
            with contextlib.suppress(Exception):
                background.run(self._stack.aclose())
            self._stack, self._client = None, None
        background.close()


__all__ = ["BackgroundLoop", "TombstoneSweeper"]
