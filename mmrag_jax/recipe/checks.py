"""Early validation of a run's config: every error names the bad field and says how to fix it."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any

import ml_collections

from mmrag_jax.errors import RunError
from mmrag_jax.model.config import VisionConfig
from mmrag_jax.model.vision_index import max_frame_patches
from mmrag_jax.recipe.presets import stage1_run_config
from mmrag_jax.rl.advantages import group_size_error
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.rewards import Stage1RewardConfig, Stage2RewardConfig
from mmrag_jax.sampling.sampler import DECODE_WEIGHTS
from mmrag_jax.validation import is_int, is_number

MODES = ("train", "eval", "predict")
DATASETS = ("webqa", "mmqa")
SPLITS = {"webqa": ("train", "val", "test"), "mmqa": ("train", "dev", "test")}
SAMPLER_METHODS = ("greedy", "categorical", "top_k", "top_p")


class ConfigError(RunError, ValueError):
  """A bad or missing config field; the message starts with the field's name."""

  exit_code = 2  # a usage error: fix the command line

  def __init__(self, field: str, message: str):
    super().__init__(f"config.{field}: {message}")
    self.field = field


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  value: Any = config
  for part in field.split("."):
    value = value[part]
  return value


def _positive_int(config: ml_collections.ConfigDict, field: str, allow_zero: bool = False) -> int:
  value = _get(config, field)
  low = 0 if allow_zero else 1
  if not is_int(value) or value < low:
    raise ConfigError(field, f"must be an integer >= {low}, got {value!r}")
  return value


def _number(config: ml_collections.ConfigDict, field: str, *, low: float = 0.0, high: float | None = None,
            allow_low: bool = False) -> float:
  """A real number in (low, high] ([low, high] with allow_low); the finiteness of every float is checked apart."""
  value = _get(config, field)
  above = is_number(value) and (value >= low if allow_low else value > low)
  if not above or (high is not None and value > high):
    bounds = f"{'>=' if allow_low else '>'} {low}" + ("" if high is None else f" and <= {high}")
    raise ConfigError(field, f"must be a number {bounds}, got {value!r}")
  return value


def _choice(config: ml_collections.ConfigDict, field: str, choices: Sequence[str], value: Any = None,
            what: str = "") -> str:
  """`value` (default: the field's) must be one of `choices`; `what` says whose choices they are."""
  value = _get(config, field) if value is None else value
  if value not in choices:
    raise ConfigError(field, f"must be one of {tuple(choices)}{what}, got {value!r}")
  return value


def _finite_floats(config: ml_collections.ConfigDict, prefix: str = "") -> None:
  """No float anywhere in the config (tuples included) may be nan or inf: a nan rate or weight trains on garbage."""
  for key, value in config.items():
    field = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      _finite_floats(ml_collections.ConfigDict(value) if isinstance(value, dict) else value, f"{field}.")
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, float) and not math.isfinite(item):
        raise ConfigError(field, f"must be a finite number, got {value!r}")


def _increasing(config: ml_collections.ConfigDict, field: str) -> tuple[int, ...]:
  value = tuple(_get(config, field))
  if not value or any(not isinstance(v, int) or v < 1 for v in value) or list(value) != sorted(set(value)):
    raise ConfigError(field, f"must be a non-empty, strictly increasing tuple of positive ints, got {value!r}")
  return value


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the fields that do not depend on the devices or the file system.

  Stage 2's patch buckets are checked by `check_patch_buckets` once the splits are read, after stage2.k is
  judged against their candidate pools (a k no pool can fill is the cause to report, not the buckets).
  """
  if config.stage not in (1, 2):
    raise ConfigError("stage", f"must be 1 or 2, got {config.stage!r}")
  _finite_floats(config)
  _choice(config, "mode", MODES)
  dataset = _choice(config, "data.dataset", DATASETS)
  of_dataset = f" (the splits of {dataset})"
  for field in ("data.train_split", "data.eval_split"):
    _choice(config, field, SPLITS[dataset], what=of_dataset)
  if config.stage == 1:
    for split in config.stage1.score_splits:  # () = the train and eval splits
      _choice(config, "stage1.score_splits", SPLITS[dataset], split, of_dataset)
  if config.mode == "train" and config.data.train_split == "test":
    raise ConfigError("data.train_split", "the test split has no gold labels to train on")
  for field in ("data.max_train_questions", "data.max_eval_questions", "pipeline.worker_count",
                "warmup.steps", "train.checkpoint_every", "train.eval_every", "model.attention_query_chunk"):
    _positive_int(config, field, allow_zero=True)
  for field in ("train.batch_size", "train.micro_batches", "train.num_steps", "train.max_to_keep",
                "rl.group_size", "rl.max_new_tokens", "scorer.batch_size", "predict.batch_size",
                "predict.max_new_tokens", "pipeline.min_pixels", "pipeline.max_pixels"):
    _positive_int(config, field)
  if tuple(config.pipeline.patch_buckets):  # () = one bucket at the batch's worst case
    patch_buckets = _increasing(config, "pipeline.patch_buckets")
    if any(b % 4 for b in patch_buckets):
      raise ConfigError("pipeline.patch_buckets", f"must be multiples of 4 (2x2 patch merging), got {patch_buckets}")
  if config.pipeline.min_pixels > config.pipeline.max_pixels:
    raise ConfigError("pipeline.min_pixels", f"{config.pipeline.min_pixels} exceeds pipeline.max_pixels="
                      f"{config.pipeline.max_pixels}")
  _number(config, "warmup.learning_rate")  # the warm-up's own rate: GRPOConfig would name rl.learning_rate
  if why := group_size_error(config.rl.group_size):  # before the checks below divide by it
    raise ConfigError("rl.group_size", why)
  if config.train.batch_size % config.rl.group_size:
    raise ConfigError("train.batch_size", f"{config.train.batch_size} completions is not a whole number of groups "
                      f"of rl.group_size={config.rl.group_size}; use a multiple of it")
  _choice(config, "sampler.decode_weights", DECODE_WEIGHTS)
  if _choice(config, "sampler.method", SAMPLER_METHODS) != "greedy":
    _number(config, "sampler.temperature")
  _number(config, "sampler.top_p", high=1.0)
  _positive_int(config, "sampler.top_k")
  _increasing(config, "pipeline.length_buckets")
  if config.stage == 1:
    check_patch_buckets(config)
  else:
    _positive_int(config, "stage2.k")
  if any(k < 1 for k in config.scorer.recall_ks):
    raise ConfigError("scorer.recall_ks", f"must be positive, got {tuple(config.scorer.recall_ks)}")
  if config.mode == "eval" and config.data.eval_split == "test":
    raise ConfigError("data.eval_split", "the test split has no gold labels to evaluate: use config.mode=predict")
  grpo_config(config)
  reward_config(config)
  if config.stage == 2 and config.stage2.run_stage1:
    try:
      validate(stage1_run_config(config))  # as it will run: with this run's data unless stage1.data is set
    except ConfigError as e:  # the nested stage-1 run's fields are config.stage1.*
      raise ConfigError(f"stage1.{e.field}", str(e).split(": ", 1)[1]) from e


def _images_and_patches(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """Images per prompt (1 in stage 1, stage2.k in stage 2) and the most patches one image has at
  pipeline.max_pixels (the released models' 14 px patches)."""
  return (1 if config.stage == 1 else config.stage2.k), max_frame_patches(config.pipeline.max_pixels, VisionConfig())


def batch_pixel_rows(config: ml_collections.ConfigDict, prompts: int) -> int:
  """The most pixel rows a batch of `prompts` prompts can hold: each prompt's images at pipeline.max_pixels
  (`_images_and_patches`)."""
  images_per_prompt, per_image = _images_and_patches(config)
  return prompts * images_per_prompt * per_image


def check_patch_buckets(config: ml_collections.ConfigDict) -> None:
  """The largest pipeline patch bucket must hold the pixel rows of any batch the run builds: a batch beyond it
  would drop prompts (prediction rows included) rather than fail. () = one bucket at that worst case."""
  if not tuple(config.pipeline.patch_buckets):
    return
  images_per_prompt, per_image = _images_and_patches(config)
  images = "images" if config.stage == 1 else "images (stage2.k)"
  prompts = max(config.train.batch_size // config.rl.group_size, config.predict.batch_size, config.scorer.batch_size
                if config.stage == 1 else 0)
  worst, largest = batch_pixel_rows(config, prompts), max(config.pipeline.patch_buckets)
  if worst > largest:
    raise ConfigError("pipeline.patch_buckets", f"the largest bucket {largest} is below the {worst} pixel rows a "
                      f"batch can hold ({prompts} prompts x {images_per_prompt} {images} x {per_image} patches at "
                      f"pipeline.max_pixels={config.pipeline.max_pixels}); add a bucket >= {worst}"
                      + ("" if config.stage == 1 else " or lower stage2.k"))


def policy_temperature(config: ml_collections.ConfigDict) -> float:
  """The temperature of the trained policy's log-probs: that of the distribution the sampler draws from.

  rl.temperature None (the default) takes sampler.temperature; a value that differs from a sampling
  sampler's would make every ratio pi_T / pi_1 and the clip fire on its own, so it is an error.
  """
  sampling = config.sampler.method != "greedy"
  wanted = config.rl.get("temperature")
  if wanted is None:
    return float(config.sampler.temperature) if sampling else 1.0
  if sampling and wanted != config.sampler.temperature:
    raise ConfigError("rl.temperature", f"{wanted} differs from sampler.temperature={config.sampler.temperature}: "
                      "the trainer's log-probs must be of the distribution the sampler draws from; leave "
                      "rl.temperature unset (None) or set both to the same value")
  return float(wanted)


def grpo_config(config: ml_collections.ConfigDict) -> GRPOConfig:
  """config.rl (with model.freeze_vision_tower) as a GRPOConfig; the schedule's total_steps defaults to the
  run's optimizer steps."""
  fields = config.rl.to_dict()
  fields.setdefault("total_steps", config.train.num_steps * fields.get("num_iterations", 1))
  fields["temperature"] = policy_temperature(config)
  fields["freeze_vision_tower"] = config.model.get("freeze_vision_tower", "none")
  try:
    return GRPOConfig.from_mapping(fields)
  except (TypeError, ValueError) as e:
    raise _library_error(config, "rl", e) from e


def reward_config(config: ml_collections.ConfigDict) -> Stage1RewardConfig | Stage2RewardConfig:
  """config.reward as the stage's reward config."""
  cls = Stage1RewardConfig if config.stage == 1 else Stage2RewardConfig
  try:
    return cls.from_mapping(config.reward.to_dict())
  except (TypeError, ValueError) as e:
    raise _library_error(config, "reward", e) from e


def _library_error(config: ml_collections.ConfigDict, section: str, error: Exception) -> ConfigError:
  """A library config's error ('GRPOConfig.beta must ...') as the config field it came from (rl.beta)."""
  named = re.match(r"\w+Config\.(\w+) ", str(error))
  if named and named.group(1) in config[section]:
    return ConfigError(f"{section}.{named.group(1)}", str(error))
  if named and named.group(1) == "freeze_vision_tower":
    return ConfigError("model.freeze_vision_tower", str(error))
  return ConfigError(section, str(error))


def validate_batch_division(config: ml_collections.ConfigDict, data_parallel: int) -> None:
  """Rows are sharded over the mesh's data-parallel size ('data' x 'fsdp'): every row count must divide."""
  rows = {"train.batch_size": config.train.batch_size, "scorer.batch_size": config.scorer.batch_size,
          "predict.batch_size": config.predict.batch_size}
  for field, value in rows.items():
    if value % data_parallel:
      raise ConfigError(field, f"{value} rows do not split evenly over the {data_parallel} data-parallel devices "
                        f"of config.mesh.shape={tuple(config.mesh.shape)}; use a multiple of {data_parallel}")


def require_path(config: ml_collections.ConfigDict, field: str, what: str, *, kind: str = "dir") -> str:
  """The path in `field`, which must exist; the error names the flag and the demo preset."""
  path = _get(config, field)
  if not path:
    raise ConfigError(field, f"is empty: set --config.{field}=PATH ({what}). To try the method without any "
                      "download, run the demo preset: --config=configs/stage2.py:demo")
  exists = os.path.isdir(path) if kind == "dir" else os.path.isfile(path)
  if not exists:
    raise ConfigError(field, f"{kind} {path!r} does not exist ({what})")
  return path
