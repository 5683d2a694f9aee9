"""Benchmark scripts (run them as files, e.g. `python -m bench.eval_throughput`); a package so tests can import them."""
