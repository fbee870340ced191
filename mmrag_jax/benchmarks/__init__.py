"""Benchmarks, one module each: `python -m mmrag_jax.benchmarks.NAME [--quick]`.

Each prints a readable table, then as its last line `RESULT {json}` with the key figures; ratios
against a baseline are measured side by side in the same run.
"""

__all__: list[str] = []  # the benchmark modules are run, not imported
