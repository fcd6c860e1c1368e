"""Benchmarks (run as modules, e.g. ``python -m bench.mirror_bench``); results go to bench/out/."""
