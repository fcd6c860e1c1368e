"""The write protocol: every conditional write to the target goes through here.

`apply` holds the Applier (fresh writes, tombstones, removals owned by a
source item, validated and stale writes, collision waiters) and `conditions`
the DynamoDB condition expressions it uses. Above store and core.
"""
