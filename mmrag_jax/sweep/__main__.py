"""Scaling studies: one mmrag_jax.main run per grid point, then one table of metrics and cost.

  python -m mmrag_jax.sweep --config=configs/stage2.py:demo --root=/tmp/sweep \\
      --grid=stage2.k=3,5 --grid=rl.group_size=4,8 [--set=rl.beta=0.04 ...] [--dry_run]
  python -m mmrag_jax.sweep --collect_only --root=/tmp/sweep

Details: the docstring of mmrag_jax/sweep/__init__.py.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

from mmrag_jax.sweep.runner import host_process_index, plan_sweep, run_sweep
from mmrag_jax.sweep.tables import collect, write_tables

__all__ = ["main"]


def _define_flags() -> None:
  from absl import flags

  flags.DEFINE_string("config", None, "config file passed to every run, PATH[:PRESET]")
  flags.DEFINE_string("root", None, "sweep directory; each run works in ROOT/<run name>", required=True)
  flags.DEFINE_multi_string("grid", [], "FIELD=V1,V2,...: one sweep axis (repeat the flag for more axes)")
  flags.DEFINE_multi_string("set", [], "FIELD=VALUE: an override passed verbatim to every run")
  flags.DEFINE_string("main_module", "mmrag_jax.main", "module each run executes with `python -m`")
  flags.DEFINE_bool("dry_run", False, "print the run commands and exit")
  flags.DEFINE_bool("collect_only", False, "only rebuild ROOT/sweep.csv and ROOT/sweep.md")
  flags.DEFINE_bool("validate", True, "load the config and check every --grid / --set field first")
  flags.DEFINE_bool("echo", True, "also stream each run's output to this terminal")


def main(argv: Sequence[str]) -> int:
  from absl import app, flags

  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
  if FLAGS.collect_only:
    if not os.path.isdir(FLAGS.root):
      raise app.UsageError(f"--root={FLAGS.root!r} is not a directory")
    print(write_tables(collect(FLAGS.root), FLAGS.root), end="")
    return 0
  if not FLAGS.config:
    raise app.UsageError("--config is required (unless --collect_only)")
  try:
    runs = plan_sweep(FLAGS.config, FLAGS.root, FLAGS.grid, FLAGS.set, main_module=FLAGS.main_module,
                      validate=FLAGS.validate)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if FLAGS.dry_run:
    for run in runs:
      print(("# done, skipped: " if run.done else "") + shlex.join(run.command))
    return 0
  statuses = run_sweep(runs, echo=FLAGS.echo)
  failed = sum(status == "failed" for status in statuses.values())
  if host_process_index() == 0:
    print(write_tables(collect(FLAGS.root), FLAGS.root), end="")
  print(f"[sweep] {len(statuses) - failed} of {len(statuses)} runs ok; tables in {FLAGS.root}/sweep.md")
  return 1 if failed else 0


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main)
