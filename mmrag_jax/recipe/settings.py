"""A run's config as typed settings objects, built in one place: `settings(config) -> Settings`.

Each library settings dataclass (GRPOConfig, TrainerConfig, the reward, sampler, scorer and pipeline configs)
checks its own fields in __post_init__; `settings` turns such an error into the ConfigError of the config
field it came from:

  GRPOConfig.beta must be a non-negative number, got -0.1   ->   config.rl.beta: GRPOConfig.beta must ...
  TrainerConfig.seed must be a non-negative int, got -1     ->   config.seed: TrainerConfig.seed must ...

`checks.validate` checks what no single dataclass can (splits of the dataset, batch geometry, buckets) around
its call. The recipe's functions take these objects (and the model, paths, splits), never the ConfigDict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import ml_collections

from mmrag_jax.data.pipeline import PipelineConfig
from mmrag_jax.errors import RunError
from mmrag_jax.processing.prompts import PromptConfig
from mmrag_jax.recipe.presets import score_splits, stage1_run_config
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.rewards import Stage1RewardConfig, Stage2RewardConfig
from mmrag_jax.rl.trainer import TrainerConfig
from mmrag_jax.rl.warmup import WarmupConfig
from mmrag_jax.sampling import Categorical, Greedy, SamplerConfig, SamplingMethod, ScorerConfig, TopK, TopP

__all__ = [
    "ConfigError", "DataSettings", "ModelSettings", "Settings", "Stage1Settings", "Stage2Settings", "for_checkpoint",
    "sampling_method", "settings", "stage1_fields",
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


def for_checkpoint(pipeline: PipelineConfig, model_dir: str) -> PipelineConfig:
  """`pipeline` encoding its prompts with the tokenizer and image processor of checkpoint `model_dir`."""
  return dataclasses.replace(pipeline, processor_path=model_dir)


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
