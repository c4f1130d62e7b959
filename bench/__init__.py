"""Benchmark suite of the workflow service: `python -m bench.run --help`."""
