"""Benchmark scripts (run them as files, e.g. `python bench/eval_throughput.py`); a package so tests can import them."""
