"""The cutover: old -> freeze -> new and back, with its gate.

`protocol` is the persisted state machine of a switch (freeze, cache wait,
exact drains, flip, automatic abort), unit-tested through its `Ports`;
`gate` holds the checks before any downtime; `aws_ports` the real ports;
`operations` what operators run (`run_switch` for cutover and rollback,
`finalize`, the by-hand `force_mode`). `router` is the application-side
router that follows the mode flag.
"""
