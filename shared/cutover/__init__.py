"""The cutover: old -> freeze -> new and back, with its gate.

`protocol` runs a switch (gate checks, freeze, drain, verify, flip) and
finalize; `router` is the application-side router that follows the mode
flag.
"""
