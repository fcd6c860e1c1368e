"""The Lambda handlers, run locally by the stream runner: `dynashift mirror run`.

On AWS, an event source mapping calls `handlers.mirror` and
`handlers.reverse_mirror`; on one machine, `shared.streams.runner.StreamRunner`
plays that part, and this module wires the two: it gives each handler its
engine, drives the runner to its end and releases the engine. It lives with
the other local stand-ins for AWS (sim) because it imports the handlers,
which the library below them must not.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from shared.core.errors import UsageError
from shared.core.settings import Settings
from shared.streams.runner import RunnerReport, StreamRunner, forward_runner


def _quiet_powertools() -> None:
    """Before a handler is imported (powertools reads these then): no EMF and no
    X-Ray on a local run, and only warnings in its log; an explicit setting wins."""
    for name, value in (("POWERTOOLS_METRICS_DISABLED", "true"), ("POWERTOOLS_TRACE_DISABLED", "true"),
                        ("POWERTOOLS_LOG_LEVEL", "WARNING")):
        os.environ.setdefault(name, value)


def run_forward_mirror(
    settings: Settings,
    *,
    follow: bool = False,
    start_from: str = "trim-horizon",
    max_seconds: float | None = None,
    install_signals: bool = False,
    on_batch: Callable[[RunnerReport], None] | None = None,
    stop_event: threading.Event | None = None,
    ready_event: threading.Event | None = None,
) -> RunnerReport:
    """Run the forward mirror locally through the Lambda handler itself.

    `stop_event` lets another thread stop it after the current batch.
    """
    _quiet_powertools()
    from handlers import mirror as mirror_handler
    from shared.streams.mirror import MirrorEngine

    engine = MirrorEngine(settings)
    mirror_handler.use_engine(engine)
    runner, sweeper = forward_runner(settings, engine, mirror_handler.lambda_handler, follow=follow,
                                     start_from=start_from, max_seconds=max_seconds, on_batch=on_batch)
    try:
        return _drive(runner, engine, mirror_handler, stop_event, ready_event, install_signals)
    finally:
        sweeper.close()


def run_reverse_mirror(
    settings: Settings,
    *,
    follow: bool = False,
    start_from: str = "trim-horizon",
    max_seconds: float | None = None,
    install_signals: bool = False,
    on_batch: Callable[[RunnerReport], None] | None = None,
    stop_event: threading.Event | None = None,
    ready_event: threading.Event | None = None,
) -> RunnerReport:
    """Run reverse replication locally: sc-main's stream through the reverse Lambda handler.

    Same runner, same checkpoints (`CHECKPOINT#<sc-main stream arn>` / shard id);
    the mode gate makes it write only after cutover, so it can run all the time.
    """
    _quiet_powertools()
    from handlers import reverse_mirror as reverse_handler
    from shared.streams.reverse_mirror import ReverseEngine

    engine = ReverseEngine(settings)
    reverse_handler.use_engine(engine)
    runner = StreamRunner(
        settings,
        reverse_handler.lambda_handler,
        follow=follow,
        start_from=start_from,
        definition=engine.definition,
        max_seconds=max_seconds,
        on_batch=on_batch,
        source_tables=[settings.target_table],
        record_mirror_start=False,
    )
    return _drive(runner, engine, reverse_handler, stop_event, ready_event, install_signals)


def _drive(
    runner: StreamRunner,
    engine: Any,
    handler_module: Any,
    stop_event: threading.Event | None,
    ready_event: threading.Event | None,
    install_signals: bool,
) -> RunnerReport:
    """Run a runner to its end, then release the engine its handler module was given."""
    if stop_event is not None:
        runner.stop_requested = stop_event
    if ready_event is not None:
        runner.ready = ready_event
    if install_signals:
        runner.install_signal_handlers()
    try:
        return runner.run()
    finally:
        engine.close()
        handler_module.use_engine(None)


def run_mirror(settings: Settings, direction: str = "forward", **kwargs: Any) -> RunnerReport:
    """`forward` (legacy -> sc-main) or `reverse` (sc-main -> legacy)."""
    runners = {"forward": run_forward_mirror, "reverse": run_reverse_mirror}
    if direction not in runners:
        raise UsageError(f"--direction must be forward or reverse, not {direction!r}")
    return runners[direction](settings, **kwargs)


__all__ = ["run_forward_mirror", "run_mirror", "run_reverse_mirror"]
