"""Verification: source and target compared both ways, with repair.

`verifier` scans, spills, judges and repairs; `convergence` is the
whole-table check the tests and the demo use; `progress` renders a run's
progress.
"""
