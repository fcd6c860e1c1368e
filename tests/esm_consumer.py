"""A stand-in for Lambda's event source mapping, for tests on DynamoDB Local.

`EsmConsumer` behaves like the mapping where the cutover and the backfill
depend on it:

* it runs the same handler Lambda runs (`handlers.mirror` or
  `handlers.reverse_mirror`), with Lambda-shaped events, in batches, from
  TRIM_HORIZON, redelivering from the lowest failed record (the local
  runner's delivery rules, `shared.streams.runner`);
* it **keeps its checkpoints to itself**: nothing of its position reaches
  the control table (no ``CHECKPOINT#`` items), and it records no
  ``MIRROR`` start of its own. Whatever dynashift learns of it, it learns
  as on AWS: from the handler's receipts and the mapping's state;
* it answers Lambda's ``ListEventSourceMappings`` for its function
  (`FakeLambda`): ``Creating`` before it starts, ``Enabled`` from
  TRIM_HORIZON once it polls, ``Disabled`` after it stops.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from shared.core.settings import Settings
from shared.streams.runner import ShardState, StreamRunner


class PrivateRunner(StreamRunner):
    """The local runner, with its checkpoints in memory only (as the mapping keeps them)."""

    def _load_checkpoints(self, stream_arn: str) -> dict[str, dict[str, Any]]:
        return {}

    def _save_checkpoint(self, shard: ShardState) -> None:
        return None

    def _record_start(self) -> bool:
        return True


class EsmConsumer:
    def __init__(self, settings: Settings, direction: str, function_name: str) -> None:
        self.settings = settings
        self.direction = direction
        self.function_name = function_name
        self.uuid = str(uuid.uuid4())
        self.state = "Creating"
        self.last_modified = datetime.now(UTC)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.runner: PrivateRunner | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"esm-{direction}")

    def _build(self) -> tuple[PrivateRunner, Any, Any]:
        import os

        os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
        os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
        os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
        if self.direction == "forward":
            from handlers import mirror as module
            from shared.streams.mirror import MirrorEngine as Engine

            tables = None
        else:
            from handlers import reverse_mirror as module
            from shared.streams.reverse_mirror import ReverseEngine as Engine

            tables = [self.settings.target_table]
        engine = Engine(self.settings)
        module.use_engine(engine)
        runner = PrivateRunner(self.settings, module.lambda_handler, follow=True, definition=engine.definition,
                               source_tables=tables, record_mirror_start=False)
        runner.stop_requested = self.stop_event
        return runner, engine, module

    def _run(self) -> None:
        runner, engine, module = self._build()
        self.runner = runner
        self.state, self.last_modified = "Enabled", datetime.now(UTC)
        try:
            runner.run()
        except BaseException as exc:  # noqa: BLE001  (surfaced by stop())
            self.error = exc
        finally:
            engine.close()
            module.use_engine(None)

    def start(self) -> EsmConsumer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join(60)
        self.state, self.last_modified = "Disabled", datetime.now(UTC)
        if self.error:
            raise self.error

    def stream_arns(self) -> list[str]:
        from shared.core import aws
        from shared.streams.drain import consumer_tables, stream_arn_of

        client = aws.dynamodb(self.settings)
        return [stream_arn_of(client, t) for t in consumer_tables(self.settings, self.direction)]

    def mapping(self, stream_arn: str) -> dict[str, Any]:
        return {"UUID": self.uuid, "State": self.state, "StartingPosition": "TRIM_HORIZON",
                "EventSourceArn": stream_arn, "LastModified": self.last_modified,
                "FunctionArn": f"arn:aws:lambda:{self.settings.effective_region}:000000000000:function:"
                               f"{self.function_name}", "LastProcessingResult": "OK",
                "BatchSize": self.settings.mirror_batch_size, "ParallelizationFactor": 1}


class FakeLambda:
    """Lambda's ListEventSourceMappings, answered from the consumers standing in for the mappings."""

    def __init__(self, *consumers: EsmConsumer) -> None:
        self.consumers = list(consumers)

    def list_event_source_mappings(self, EventSourceArn: str | None = None, FunctionName: str | None = None,  # noqa: N803
                                   **_: Any) -> dict[str, Any]:
        mappings = []
        for consumer in self.consumers:
            if FunctionName and FunctionName != consumer.function_name:
                continue
            for arn in consumer.stream_arns():
                if EventSourceArn in (None, arn):
                    mappings.append(consumer.mapping(arn))
        return {"EventSourceMappings": mappings}
