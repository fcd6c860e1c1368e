"""The control table, owned here: every item family behind one module each.

`control` (quarantine entries, stale-writer registry, checkpoints' table),
`receipts` (what a consumer applied, per batch; usage counters) and `mode`
(the cutover flag: old, freeze, new). Above core only.
"""
