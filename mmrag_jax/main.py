"""The MMRAG-RFT entry point.

  python -m mmrag_jax.main --config=configs/stage2.py:demo --workdir=/tmp/mmrag_demo
  python -m mmrag_jax.main --config=configs/stage1.py:3b --workdir=runs/s1 \
      --config.model.path=/ckpt/Qwen2.5-VL-3B-Instruct --config.data.data_dir=/data/webqa
  python -m mmrag_jax.main --config=configs/stage2.py --workdir=runs/s2 --config.mode=predict \
      --config.stage2.stage1_workdir=runs/s1 --config.data.data_dir=/data/webqa --config.data.eval_split=test

--config takes an ml_collections config file and an optional preset after ':'; any field can be set with
--config.FIELD=VALUE. See configs/stage1.py, configs/stage2.py and mmrag_jax/recipe/run.py.

A failure whose cause is known (a bad flag or config field, an unusable or busy workdir, a stopped run) is
one line `error: <message>` on stderr and the error's exit code (2: the command line; 130: interrupted).
"""

from __future__ import annotations

import logging
import os
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import ConfigDict, config_flags

from mmrag_jax.errors import RunError  # ConfigError (recipe/settings.py) is one

__all__ = ["entry", "main", "use_compilation_cache"]

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

  use_compilation_cache(config, workdir)
  try:
    maybe_initialize_distributed()
    from mmrag_jax.recipe.run import run

    summary = run(config, workdir)
  except RunError as error:  # TrainingInterrupted (a stop on SIGTERM / SIGINT) is one, exit code 128 + signal
    _fail(str(error), error.exit_code)
  print("final metrics: " + ", ".join(f"{k}={'n/a' if v is None else f'{v:.4f}'}"
                                      for k, v in summary["metrics"].items()))
  _print_outputs(os.path.abspath(workdir))
  shutdown_distributed()
  return 0


def use_compilation_cache(config: ConfigDict, workdir: str) -> None:
  """XLA's persistent compilation cache in WORKDIR/jax_cache (`config.compilation_cache`): a rerun, a resumed
  run or the next mode in the same workdir loads its compiled programs instead of compiling them again. A
  cache directory the environment names (JAX_COMPILATION_CACHE_DIR) is kept. Set before the first compile:
  jax decides once per process whether it caches."""
  import jax

  if not config.compilation_cache:
    jax.config.update("jax_enable_compilation_cache", False)
    return
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir), "jax_cache"))
  # jax's default keeps only programs that compile for >= 1 s; the many small ones add up on CPU.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _fail(message: str, code: int = 2) -> None:
  print(f"error: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the message holds
  sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing; a bad --config (file, preset, field, value) exits with one line naming the cause.

  absl and ml_collections report these with tracebacks, and a config file that fails to load only when
  the config is first read; the cause is found again here by loading the file as --config does.
  """
  try:
    rest = flags.FLAGS(argv)
  except Exception as error:  # noqa: BLE001 - each is reported as one line below
    _fail(_flag_error(argv, error))
  if _CONFIG.value is not None and not isinstance(_CONFIG.value, ConfigDict):  # the file failed to load
    _fail(_flag_error(argv, None))
  return rest


def _flag_error(argv: list[str], error: Exception | None) -> str:
  """What went wrong in parsing `argv`: the config file or preset, an override's field or value, or `error`."""
  from mmrag_jax.sweep.grid import check_field, load_config

  spec = next((arg.split("=", 1)[1] if "=" in arg else following
               for arg, following in zip(argv[1:], argv[2:] + [None]) if arg.split("=", 1)[0] == "--config"), None)
  if spec:
    try:
      config = load_config(spec)
    except Exception as e:  # noqa: BLE001 - the config file's own error, as one line
      text = str(e) if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {e}"
      return text if text.startswith("--config") else f"--config={spec}: {text}"
  if error is None:
    return f"--config={spec}: the config failed to load"
  bad_value = re.match(r"flag --config\.([\w.]+)=(.*?): ", str(error))
  if spec and bad_value:
    field, value = bad_value.groups()
    node = config
    for part in field.split("."):
      node = node[part]
    return f"config.{field}: expected {type(node).__name__}, got {value!r}"
  if isinstance(error, (AttributeError, KeyError)):  # ml_collections' lookup of a missing field
    fields = [arg[len("--config."):].split("=", 1)[0] for arg in argv[1:] if arg.startswith("--config.")]
    problems = []
    for field in fields if spec else ():
      try:
        check_field(config, field, "config")
      except ValueError as e:
        problems.append(str(e))
    return "; ".join(problems) or f"unknown field among {fields}"
  return str(error).split("\n", 1)[0]


def entry() -> None:
  try:
    app.run(main, flags_parser=_parse_flags)
  except KeyboardInterrupt as stop:  # a second Ctrl-C, or one outside the GRPO loop: no traceback
    if not stop.args:  # the loop's own (a second signal) carries its reason and was logged
      print("interrupted", file=sys.stderr)
    sys.exit(getattr(stop, "exit_code", 130))  # StopNow: 128 + the signal


if __name__ == "__main__":
  entry()
