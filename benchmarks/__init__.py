"""The benchmark scripts, one module each, run from the repository root as ``python -m benchmarks.<name>``.

Which script makes which table, what it writes and where the docs discuss it: ``benchmarks/README.md``.
What the scripts share lives in ``benchmarks/common/``; no script imports another script.
"""
