"""Benchmarks of issue 7, one module per figure (see docs/performance.md).

Each is ``python -m bench.NAME [options] [--json]`` from the repository root and prints one
JSON object with ``--json``. Every figure is set side by side with a baseline measured in the
same process (a reference library, the raw client under our driver, or a physical limit),
and reported as a ratio; nothing here asserts on a time.
"""
