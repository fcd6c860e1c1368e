"""Stream consumers: DynamoDB Streams records in, protocol writes out.

`engine` is the frame every consumer shares (lifecycle, mode gate, faults,
Lambda's partial batch response, usage); `mirror` (legacy -> target) and
`reverse_mirror` (target -> legacy after cutover) are the engines the Lambda
handlers drive. `runner` plays Lambda's event source mapping on one machine,
with `checkpoints`, `lambda_event` (Lambda's record and context shapes) and
`sweeper` (tombstones swept from a thread of its own); `drain` and
`coverage` tell the cutover and the backfill how far every consumer has read.
"""
