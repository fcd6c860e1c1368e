"""Stream checkpoints: per shard, the last record a consumer fully applied, in the control table.

Item ``CHECKPOINT#<stream arn>`` / ``<shard id>`` (`shared.store.keys.checkpoint`):
``sequence_number`` (the last record fully applied; a restarted runner
resumes after it), ``finished`` (the shard is read to its end, so its
children may start), ``parent_shard_id`` and ``updated_at``. Only the local
runner keeps them (Lambda's event source mapping keeps its own); how often it
writes them is the runner's (`shared.streams.runner`). The cutover's drain
trusts the consumer's receipts, not these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.core import aws
from shared.core.aws import translate
from shared.store import keys


class CheckpointStore:
    """The checkpoints of the streams one runner reads (synchronous boto3 client)."""

    def __init__(self, client: Any, control_table: str, clock: Callable[[], float]) -> None:
        self.client = client
        self.control_table = control_table
        self.clock = clock

    def load(self, stream_arn: str) -> dict[str, dict[str, Any]]:
        """Every checkpoint of a stream, read strongly: ``{shard id: item}`` (DynamoDB JSON)."""
        items = aws.query_items(self.client, f"read checkpoints from {self.control_table}",
                                TableName=self.control_table, KeyConditionExpression="PK = :pk",
                                ExpressionAttributeValues={":pk": {"S": keys.checkpoint_pk(stream_arn)}},
                                ConsistentRead=True)
        return {item["SK"]["S"]: item for item in items}

    def save(self, stream_arn: str, shard_id: str, *, sequence: str | None, finished: bool,
             parent_id: str | None) -> None:
        item = {
            **keys.checkpoint(stream_arn, shard_id),
            "stream_arn": {"S": stream_arn},
            "finished": {"BOOL": finished},
            "updated_at": {"N": repr(round(self.clock(), 3))},
        }
        if sequence:
            item["sequence_number"] = {"S": sequence}
        if parent_id:
            item["parent_shard_id"] = {"S": parent_id}
        try:
            self.client.put_item(TableName=self.control_table, Item=item)
        except Exception as exc:
            raise translate(exc, "save stream checkpoint") from exc


__all__ = ["CheckpointStore"]
