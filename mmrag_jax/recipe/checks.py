"""Early validation of a run's config: every error names the bad field and says how to fix it.

`validate` checks what no settings dataclass can: the fields the recipe reads itself (splits of the dataset,
batch sizes, pixel budgets, buckets) and how fields fit together (batch geometry, the buckets of the prompts
a batch can hold). The settings dataclasses check their own fields when `settings.settings` builds them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from mmrag_jax.model.config import VisionConfig
from mmrag_jax.model.vision_index import max_frame_patches
from mmrag_jax.recipe.presets import stage1_run_config
from mmrag_jax.recipe.settings import ConfigError, Settings, settings, stage1_fields
from mmrag_jax.validation import is_int, is_number

__all__ = ["batch_pixel_rows", "check_patch_buckets", "require_path", "validate", "validate_batch_division"]

_MODES = ("train", "eval", "predict")
_DATASETS = ("webqa", "mmqa")
_SPLITS = {"webqa": ("train", "val", "test"), "mmqa": ("train", "dev", "test")}
_SAMPLER_METHODS = ("greedy", "categorical", "top_k", "top_p")


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


def _positive_number(config: ml_collections.ConfigDict, field: str) -> float:
  """A real number > 0; the finiteness of every float is checked apart."""
  value = _get(config, field)
  if not is_number(value) or not value > 0:
    raise ConfigError(field, f"must be a number > 0, got {value!r}")
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


def validate(config: ml_collections.ConfigDict) -> Settings:
  """Checks the fields that do not depend on the devices or the file system; returns the run's settings.

  Stage 2's patch buckets are checked by `check_patch_buckets` once the splits are read, after stage2.k is
  judged against their candidate pools (a k no pool can fill is the cause to report, not the buckets).
  """
  if config.stage not in (1, 2):
    raise ConfigError("stage", f"must be 1 or 2, got {config.stage!r}")
  _finite_floats(config)
  _choice(config, "mode", _MODES)
  dataset = _choice(config, "data.dataset", _DATASETS)
  of_dataset = f" (the splits of {dataset})"
  for field in ("data.train_split", "data.eval_split"):
    _choice(config, field, _SPLITS[dataset], what=of_dataset)
  if config.stage == 1:
    for split in config.stage1.score_splits:  # () = the train and eval splits
      _choice(config, "stage1.score_splits", _SPLITS[dataset], split, of_dataset)
  if config.mode == "train" and config.data.train_split == "test":
    raise ConfigError("data.train_split", "the test split has no gold labels to train on")
  for field in ("data.max_train_questions", "data.max_eval_questions", "pipeline.worker_count",
                "warmup.steps", "model.attention_query_chunk"):
    _positive_int(config, field, allow_zero=True)
  for field in ("train.batch_size", "predict.batch_size", "pipeline.min_pixels", "pipeline.max_pixels"):
    _positive_int(config, field)
  if tuple(config.pipeline.patch_buckets):  # () = one bucket at the batch's worst case
    patch_buckets = _increasing(config, "pipeline.patch_buckets")
    if any(b % 4 for b in patch_buckets):
      raise ConfigError("pipeline.patch_buckets", f"must be multiples of 4 (2x2 patch merging), got {patch_buckets}")
  if config.pipeline.min_pixels > config.pipeline.max_pixels:
    raise ConfigError("pipeline.min_pixels", f"{config.pipeline.min_pixels} exceeds pipeline.max_pixels="
                      f"{config.pipeline.max_pixels}")
  _positive_number(config, "warmup.learning_rate")  # the warm-up's own rate: WarmupConfig does not check it
  _choice(config, "sampler.method", _SAMPLER_METHODS)
  _increasing(config, "pipeline.length_buckets")
  run_settings = settings(config)  # every settings dataclass checks its fields, rl.group_size among them
  if config.train.batch_size % config.rl.group_size:
    raise ConfigError("train.batch_size", f"{config.train.batch_size} completions is not a whole number of groups "
                      f"of rl.group_size={config.rl.group_size}; use a multiple of it")
  if config.stage == 1:
    check_patch_buckets(config)
  else:
    _positive_int(config, "stage2.k")
  if any(k < 1 for k in config.scorer.recall_ks):
    raise ConfigError("scorer.recall_ks", f"must be positive, got {tuple(config.scorer.recall_ks)}")
  if config.mode == "eval" and config.data.eval_split == "test":
    raise ConfigError("data.eval_split", "the test split has no gold labels to evaluate: use config.mode=predict")
  if config.stage == 2 and config.stage2.run_stage1:
    with stage1_fields():
      validate(stage1_run_config(config))  # as it will run: with this run's data unless stage1.data is set
  return run_settings


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


def validate_batch_division(config: ml_collections.ConfigDict, data_parallel: int) -> None:
  """Rows are sharded over the mesh's data-parallel size ('data' x 'fsdp'): every row count must divide."""
  rows = {"train.batch_size": config.train.batch_size, "scorer.batch_size": config.scorer.batch_size,
          "predict.batch_size": config.predict.batch_size}
  for field, value in rows.items():
    if value % data_parallel:
      raise ConfigError(field, f"{value} rows do not split evenly over the {data_parallel} data-parallel devices "
                        f"of config.mesh.shape={tuple(config.mesh.shape)}; use a multiple of {data_parallel}")


def require_path(field: str, path: str, what: str, *, kind: str = "dir") -> str:
  """`path`, the value of config `field`, which must exist; the error names the flag and the demo preset."""
  if not path:
    raise ConfigError(field, f"is empty: set --config.{field}=PATH ({what}). To try the method without any "
                      "download, run the demo preset: --config=configs/stage2.py:demo")
  exists = os.path.isdir(path) if kind == "dir" else os.path.isfile(path)
  if not exists:
    raise ConfigError(field, f"{kind} {path!r} does not exist ({what})")
  return path
