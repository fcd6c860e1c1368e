"""Verification: source and target compared both ways, with repair.

`verifier` runs it (the design, the options, the rounds); the steps are a
module each, lowest first:

* `differences`: the canonical form items are compared in, and a difference;
* `spill`: the run's rows in SQLite on disk, and the nominating joins;
* `scan`: parallel, eventually consistent scans into the spill store;
* `judge`: strongly consistent re-reads deciding one key or one entry;
* `repair`: re-syncing a confirmed difference through the write protocol;
* `report`: the JSON report and the stored result `status` and the cutover gate read.

`convergence` is the whole-table check the tests and the demo use;
`progress` renders a run's progress.
"""
