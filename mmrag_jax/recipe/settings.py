"""A run's config as typed settings objects, built once and checked before any work: `validate(config) -> Settings`.

`settings(config)` builds them. Each library settings dataclass (GRPOConfig, TrainerConfig, the reward, sampler,
scorer and pipeline configs) checks its own fields in __post_init__; `settings` turns such an error into the
ConfigError of the config field it came from:

  GRPOConfig.beta must be a non-negative number, got -0.1   ->   config.rl.beta: GRPOConfig.beta must ...
  TrainerConfig.seed must be a non-negative int, got -1     ->   config.seed: TrainerConfig.seed must ...

`validate` checks, around that call, what no single dataclass can: the fields the recipe reads itself (splits of
the dataset, batch sizes, pixel budgets, buckets) and how fields fit together (batch geometry, the buckets of the
prompts a batch can hold). `check_patch_buckets`, `validate_batch_division` and `require_path` are the checks
that wait for stage 2's splits, the devices and the file system. Every error names the bad field and says how
to fix it. The recipe's functions take these objects (and the model, paths, splits), never the ConfigDict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import ml_collections

from mmrag_jax.data.pipeline import PipelineConfig
from mmrag_jax.errors import RunError
from mmrag_jax.model.config import Qwen25VLConfig, VisionConfig
from mmrag_jax.model.vision_index import max_frame_patches
from mmrag_jax.processing.prompts import PromptConfig
from mmrag_jax.recipe.presets import score_splits, stage1_run_config
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.rewards import Stage1RewardConfig, Stage2RewardConfig
from mmrag_jax.rl.trainer import TrainerConfig
from mmrag_jax.rl.warmup import WarmupConfig
from mmrag_jax.sampling import Categorical, Greedy, SamplerConfig, SamplingMethod, ScorerConfig, TopK, TopP
from mmrag_jax.sampling.prompt_batch import PromptTokens
from mmrag_jax.validation import is_int, is_number

__all__ = [
    "ConfigError", "DataSettings", "ModelSettings", "Settings", "Stage1Settings", "Stage2Settings",
    "batch_pixel_rows", "check_patch_buckets", "for_checkpoint", "require_path", "sampling_method", "settings",
    "stage1_fields", "validate", "validate_batch_division",
]

_T = TypeVar("_T")


class ConfigError(RunError, ValueError):
  """A bad or missing config field; the message starts with the field's name."""

  exit_code = 2  # a usage error: fix the command line

  def __init__(self, field: str, message: str):
    super().__init__(f"config.{field}: {message}")
    self.field = field


@contextlib.contextmanager
def stage1_fields() -> Iterator[None]:
  """Errors of the nested stage-1 run of a stage-2 config name its fields as they are set: config.stage1.*."""
  try:
    yield
  except ConfigError as e:
    raise ConfigError(f"stage1.{e.field}", str(e).split(": ", 1)[1]) from e


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """The benchmark files of a run (config.data); a limit of 0 reads the whole split."""

  dataset: str
  data_dir: str
  image_dir: str
  train_split: str
  eval_split: str
  max_train_questions: int
  max_eval_questions: int

  def limit(self, split: str) -> int:
    """The questions read of `split`: max_train_questions for the train split, else max_eval_questions."""
    return self.max_train_questions if split == self.train_split else self.max_eval_questions


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """How a checkpoint is loaded (config.model; max_pixels: pipeline.max_pixels, which sizes the vision index)."""

  dtype: str
  param_dtype: str
  remat: bool
  max_pixels: int
  attention_query_chunk: int


@dataclasses.dataclass(frozen=True)
class Stage1Settings:
  """negatives_per_positive: sampled negatives per gold candidate in training prompts; score_splits: the
  splits ranked after training (config.stage1.score_splits, () resolved to the train and eval splits)."""

  negatives_per_positive: float
  score_splits: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Stage2Settings:
  """k: candidates per prompt; stage1_workdir, init_from: config.stage2's paths ('' = unset); run_stage1:
  the nested stage-1 run's settings when stage 2 may run stage 1 (config.stage2.run_stage1), else None."""

  k: int
  stage1_workdir: str
  init_from: str
  run_stage1: Settings | None


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything a run reads of its config, as typed objects.

  rollout: the GRPO rollout's sampler (the configured method, rl.max_new_tokens); predict: the greedy sampler
  of stage-2 answers (predict.max_new_tokens). The pipelines of training (train.batch_size / rl.group_size
  prompts, shuffled, endless), scoring (scorer.batch_size) and prediction (predict.batch_size) have no
  processor path: `for_checkpoint` sets the checkpoint whose processor encodes the prompts.
  source: the config they were built from, frozen (WORKDIR/config.json; mesh.shape and the batch sizes the
  mesh must divide, judged once the devices are known).
  """

  stage: int
  mode: str
  seed: int
  model_path: str
  data: DataSettings
  model: ModelSettings
  grpo: GRPOConfig
  reward: Stage1RewardConfig | Stage2RewardConfig
  trainer: TrainerConfig
  warmup: WarmupConfig
  rollout: SamplerConfig
  predict: SamplerConfig
  scorer: ScorerConfig
  train_pipeline: PipelineConfig
  score_pipeline: PipelineConfig
  predict_pipeline: PipelineConfig
  recall_ks: tuple[int, ...]
  export: bool
  report: bool
  bart: str
  stage1: Stage1Settings | None
  stage2: Stage2Settings | None
  source: ml_collections.FrozenConfigDict = dataclasses.field(compare=False, repr=False)


def for_checkpoint(pipeline: PipelineConfig, model_dir: str, model: Qwen25VLConfig) -> PipelineConfig:
  """`pipeline` encoding its prompts with the tokenizer and image processor of checkpoint `model_dir`, for
  `model` (its batches carry the vision index of that model's layout)."""
  return dataclasses.replace(pipeline, processor_path=model_dir, layout=PromptTokens.of(model))


def _built(build: Callable[[], _T], section: str, fields: Mapping[str, str]) -> _T:
  """build(), whose error ('GRPOConfig.beta must ...', 'temperature must ...') becomes the ConfigError of
  the config field it names (`fields`: dataclass field -> config field), else of `section`."""
  try:
    return build()
  except (TypeError, ValueError) as e:
    named = re.match(r"(?:\w+\.)?(\w+) must ", str(e))
    raise ConfigError(fields.get(named.group(1), section) if named else section, str(e)) from e


def _section_fields(config: ml_collections.ConfigDict, section: str) -> dict[str, str]:
  return {name: f"{section}.{name}" for name in config[section]}


def _policy_temperature(config: ml_collections.ConfigDict) -> float:
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


def _grpo(config: ml_collections.ConfigDict) -> GRPOConfig:
  """config.rl (with model.freeze_vision_tower) as a GRPOConfig; the schedule's total_steps defaults to the
  run's optimizer steps."""
  fields = config.rl.to_dict()
  names = {"total_steps": "train.num_steps", **_section_fields(config, "rl"),
           "freeze_vision_tower": "model.freeze_vision_tower"}
  fields.setdefault("total_steps", config.train.num_steps * fields.get("num_iterations", 1))
  fields["temperature"] = _policy_temperature(config)
  fields["freeze_vision_tower"] = config.model.get("freeze_vision_tower", "none")
  return _built(lambda: GRPOConfig.from_mapping(fields), "rl", names)


def sampling_method(config: ml_collections.ConfigDict) -> SamplingMethod:
  """config.sampler's method (sampler.method: greedy | categorical | top_k | top_p) and its parameters."""
  s = config.sampler
  if s.method == "greedy":
    return Greedy()
  if s.method == "categorical":
    return Categorical(temperature=s.temperature)
  if s.method == "top_k":
    return TopK(k=s.top_k, temperature=s.temperature)
  return TopP(p=s.top_p, temperature=s.temperature)


def _sampler_config(config: ml_collections.ConfigDict, *, max_new_tokens: int, greedy: bool = False) -> SamplerConfig:
  """The sampler of `max_new_tokens` tokens per completion: config.sampler's method, or argmax with `greedy`."""
  s = config.sampler
  return SamplerConfig(max_new_tokens=max_new_tokens, method=Greedy() if greedy else sampling_method(config),
                       decode_weights=s.decode_weights)


def _scorer_config(config: ml_collections.ConfigDict) -> ScorerConfig:
  """Stage 1's P(yes) scorer: scorer.batch_size candidates per forward pass, as the pipeline built them."""
  return ScorerConfig(batch_size=config.scorer.batch_size)


def _pipeline_config(config: ml_collections.ConfigDict, processor_path: str, batch_size: int, *,
                     train: bool) -> PipelineConfig:
  """The input pipeline of `batch_size` prompts: shuffled, endless and with workers for training, one pass
  in the calling process otherwise."""
  c = config
  return PipelineConfig(
      processor_path=processor_path, min_pixels=c.pipeline.min_pixels, max_pixels=c.pipeline.max_pixels,
      batch_size=batch_size, length_buckets=tuple(c.pipeline.length_buckets),
      patch_buckets=tuple(c.pipeline.patch_buckets), seed=c.seed, shuffle=train, num_epochs=None if train else 1,
      worker_count=c.pipeline.worker_count if train else 0, read_threads=c.pipeline.read_threads,
      prompt=PromptConfig(**c.prompt.to_dict()))


def _warmup(config: ml_collections.ConfigDict) -> WarmupConfig:
  """The format warm-up: warmup.*, with the GRPO batch's geometry (rl.*)."""
  c = config
  return WarmupConfig(steps=c.warmup.steps, learning_rate=c.warmup.learning_rate,
                      max_new_tokens=c.rl.max_new_tokens, logprob_chunk_size=c.rl.logprob_chunk_size,
                      group_size=c.rl.group_size)


def _trainer(config: ml_collections.ConfigDict) -> TrainerConfig:
  t = config.train
  return TrainerConfig(num_steps=t.num_steps, micro_batches=t.micro_batches, seed=config.seed,
                       checkpoint_every=t.checkpoint_every, max_to_keep=t.max_to_keep, eval_every=t.eval_every,
                       progress_bar=t.progress_bar)


def settings(config: ml_collections.ConfigDict) -> Settings:
  """The typed settings of `config`; a settings object's error is the ConfigError of the field it came from.

  Built in dependency order: the trainer (train.num_steps sizes the GRPO schedule), the sampling method
  (sampler.temperature is the policy's), GRPO (rl.group_size sizes the training batches), then the rest.
  """
  c = config
  sampler_fields = {"temperature": "sampler.temperature", "k": "sampler.top_k", "p": "sampler.top_p",
                    **_section_fields(c, "sampler")}
  trainer = _built(lambda: _trainer(c), "train", {**_section_fields(c, "train"), "seed": "seed"})
  _built(lambda: sampling_method(c), "sampler", sampler_fields)  # a bad sampler.temperature is the sampler's
  grpo = _grpo(c)
  reward_cls = Stage1RewardConfig if c.stage == 1 else Stage2RewardConfig
  reward = _built(lambda: reward_cls.from_mapping(c.reward.to_dict()), "reward", _section_fields(c, "reward"))
  rollout = _built(lambda: _sampler_config(c, max_new_tokens=grpo.max_new_tokens), "sampler", sampler_fields)
  predict = _built(lambda: _sampler_config(c, max_new_tokens=c.predict.max_new_tokens, greedy=True), "sampler",
                   {**sampler_fields, "max_new_tokens": "predict.max_new_tokens"})
  scorer = _built(lambda: _scorer_config(c), "scorer", {"batch_size": "scorer.batch_size", **sampler_fields})
  pipeline_fields = {**_section_fields(c, "pipeline"), **_section_fields(c, "prompt")}
  pipelines = {name: _built(lambda: _pipeline_config(c, "", batch_size, train=name == "train"), "prompt",
                            pipeline_fields)
               for name, batch_size in (("train", c.train.batch_size // grpo.group_size),
                                        ("score", c.scorer.batch_size), ("predict", c.predict.batch_size))}
  stage1 = stage2 = None
  if c.stage == 1:
    stage1 = Stage1Settings(negatives_per_positive=c.stage1.negatives_per_positive, score_splits=score_splits(c))
  else:
    nested = None
    if c.stage2.run_stage1:
      with stage1_fields():
        nested = settings(stage1_run_config(c))
    stage2 = Stage2Settings(k=c.stage2.k, stage1_workdir=c.stage2.stage1_workdir, init_from=c.stage2.init_from,
                            run_stage1=nested)
  d, m = c.data, c.model
  return Settings(
      stage=c.stage, mode=c.mode, seed=c.seed, model_path=m.path,
      data=DataSettings(dataset=d.dataset, data_dir=d.data_dir, image_dir=d.image_dir, train_split=d.train_split,
                        eval_split=d.eval_split, max_train_questions=d.max_train_questions,
                        max_eval_questions=d.max_eval_questions),
      model=ModelSettings(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat, max_pixels=c.pipeline.max_pixels,
                          attention_query_chunk=m.attention_query_chunk),
      grpo=grpo, reward=reward, trainer=trainer, warmup=_warmup(c), rollout=rollout, predict=predict, scorer=scorer,
      train_pipeline=pipelines["train"], score_pipeline=pipelines["score"], predict_pipeline=pipelines["predict"],
      recall_ks=tuple(c.scorer.recall_ks), export=c.train.export, report=c.predict.report, bart=c.predict.bart,
      stage1=stage1, stage2=stage2, source=ml_collections.FrozenConfigDict(c))


_MODES = ("train", "eval", "predict")
_DATASETS = ("webqa", "mmqa")
_SPLITS = {"webqa": ("train", "val", "test"), "mmqa": ("train", "dev", "test")}
_SAMPLER_METHODS = ("greedy", "categorical", "top_k", "top_p")


def validate(config: ml_collections.ConfigDict) -> Settings:
  """Checks the fields that do not depend on the devices or the file system; returns the run's settings.

  Stage 2's patch buckets are checked by `check_patch_buckets` once the splits are read, after stage2.k is
  judged against their candidate pools (a k no pool can fill is the cause to report, not the buckets).
  """
  _check_fields(config)
  run_settings = settings(config)  # every settings dataclass checks its fields, rl.group_size among them
  _check_geometry(config)
  if config.stage == 2 and config.stage2.run_stage1:
    with stage1_fields():  # its settings were built with this run's: run_settings.stage2.run_stage1
      stage1_config = stage1_run_config(config)  # as it will run: with this run's data unless stage1.data is set
      _check_fields(stage1_config)
      _check_geometry(stage1_config)
  return run_settings


def _check_fields(config: ml_collections.ConfigDict) -> None:
  """The fields the recipe reads itself (mode, splits, counts, pixel budgets, buckets), before the settings."""
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


def _check_geometry(config: ml_collections.ConfigDict) -> None:
  """How the fields fit together, once the settings checked rl.group_size: batches, buckets, recall@k, splits."""
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
