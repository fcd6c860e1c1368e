"""Stream consumers: DynamoDB Streams records in, protocol writes out.

`mirror` (legacy -> target) and `reverse_mirror` (target -> legacy after
cutover) are the engines the Lambda handlers drive; `runner` plays Lambda's
event source mapping on one machine; `drain` and `coverage` tell the cutover
and the backfill how far every consumer has read.
"""
