"""The MMRAG-RFT entry point.

  python -m mmrag_jax.main --config=configs/stage2.py:demo --workdir=/tmp/mmrag_demo
  python -m mmrag_jax.main --config=configs/stage1.py:3b --workdir=runs/s1 \
      --config.model.path=/ckpt/Qwen2.5-VL-3B-Instruct --config.data.data_dir=/data/webqa
  python -m mmrag_jax.main --config=configs/stage2.py --workdir=runs/s2 --config.mode=predict \
      --config.stage2.stage1_workdir=runs/s1 --config.data.data_dir=/data/webqa --config.data.eval_split=test

--config takes an ml_collections config file and an optional preset after ':'; any field can be set with
--config.FIELD=VALUE. See configs/stage1.py, configs/stage2.py and mmrag_jax/recipe/run.py.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/stage2.py:demo.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")

_OUTPUTS = ("report.html", "predictions.jsonl", "metrics.json", "webqa_submission.json", "mmqa_predictions.json",
            "training_curves.png", "export", "summary.json")


def _print_outputs(workdir: str) -> None:
  print(f"\noutputs in {workdir}:")
  for name in _OUTPUTS:
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      print(f"  {path}")
  for name in sorted(os.listdir(workdir)):
    if name.startswith(("ranking_", "recall_")):
      print(f"  {os.path.join(workdir, name)}")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config, workdir = _CONFIG.value, _WORKDIR.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/stage2.py:demo")
  if not workdir:
    raise app.UsageError("--workdir is required: the directory for checkpoints, metrics and outputs")
  # Our progress messages at INFO; the libraries' (orbax logs every checkpoint file) at WARNING.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("mmrag_jax").setLevel(logging.INFO)
  # Imported after flag parsing: jax initializes its backends on first use, and multi-host runs must call
  # jax.distributed.initialize() before that.
  from mmrag_jax.parallel import maybe_initialize_distributed, shutdown_distributed

  maybe_initialize_distributed()
  from mmrag_jax.recipe.checks import ConfigError
  from mmrag_jax.recipe.run import run

  try:
    summary = run(config, workdir)
  except ConfigError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print("final metrics: " + ", ".join(f"{k}={'n/a' if v is None else f'{v:.4f}'}"
                                      for k, v in summary["metrics"].items()))
  _print_outputs(os.path.abspath(workdir))
  shutdown_distributed()
  return 0


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing; an override of a field the config lacks exits naming the field and its siblings."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError):  # ml_collections' lookup of an overridden field that does not exist
    from mmrag_jax.sweep.grid import check_field, load_config

    spec = next((arg.split("=", 1)[1] if "=" in arg else following
                 for arg, following in zip(argv[1:], argv[2:] + [None]) if arg.split("=", 1)[0] == "--config"), None)
    fields = [arg[len("--config."):].split("=", 1)[0] for arg in argv[1:] if arg.startswith("--config.")]
    problems = []
    try:
      config = load_config(spec) if spec else None
    except Exception:  # noqa: BLE001 - absl reports a config file that fails to load by itself
      config = None
    for field in fields if config is not None else ():
      try:
        check_field(config, field, "config")
      except ValueError as error:
        problems.append(str(error))
    print("FATAL Flags parsing error: " + ("; ".join(problems) or f"unknown field among {fields}"), file=sys.stderr)
    sys.exit(1)


def entry() -> None:
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  entry()
