"""Scaling studies: one `mmrag_jax.main` run per point of a grid of config overrides, then one table.

  python -m mmrag_jax.sweep --config=configs/stage2.py:demo --root=/tmp/sweep \\
      --grid=stage2.k=3,5 --grid=rl.group_size=4,8 [--set=rl.beta=0.04 ...] [--dry_run]

runs the 4 points one after another, each as its own process

  python -m mmrag_jax.main --config=configs/stage2.py:demo --workdir=/tmp/sweep/stage2.k-3__rl.group_size-4 \\
      --config.stage2.k=3 --config.rl.group_size=4 --config.rl.beta=0.04

with its output streamed to `<run>/log.txt`. A run whose `summary.json` exists is skipped, so the same
command resumes an interrupted sweep; a failed run is recorded (status and exit code in `<run>/run.json`)
and the sweep goes on. At the end every run's summary is collected into `ROOT/sweep.csv` and
`ROOT/sweep.md` (one row per run: grid values, status, metrics, cost) and the table is printed.
`--collect_only --root=DIR` only rebuilds the tables.

Grid values are typed as written: `3` int, `0.5` / `1e-6` float, `true` / `False` bool, `(1,-1,1)` tuple,
anything else a string (`'3'` forces the string "3"). Commas inside parentheses or quotes do not split.
`--set` overrides are passed to every run verbatim.

From Python: `run_sweep(plan_sweep(config, root, grid_args, set_args))`, then
`write_tables(collect(root), root)`; `expand_grid(parse_grid(...))` and `run_name` name the points,
`parse_value` / `split_values` read a grid's values as above.

The sweep process itself never starts jax: an accelerator is held by one process at a time, the run.
"""

from mmrag_jax.sweep.grid import expand_grid, parse_grid, parse_value, run_name, split_values
from mmrag_jax.sweep.runner import plan_sweep, run_sweep
from mmrag_jax.sweep.tables import collect, write_tables

__all__ = [
    "collect", "expand_grid", "parse_grid", "parse_value", "plan_sweep", "run_name", "run_sweep", "split_values",
    "write_tables",
]
