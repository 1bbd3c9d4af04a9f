"""The tuning scripts behind the benchmarks' choices, run as ``python -m benchmarks.tuning.<name>`` (benchmarks/README.md)."""
