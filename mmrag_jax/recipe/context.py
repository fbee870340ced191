"""What every run needs: resolved paths, the mesh, the model, the data, and the config as library objects."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from typing import Any, Sequence

import jax
import ml_collections
from flax import nnx
from jax.experimental import multihost_utils

from mmrag_jax.data import read_mmqa, read_webqa
from mmrag_jax.data.images import ImageStore
from mmrag_jax.data.pipeline import PipelineConfig
from mmrag_jax.data.records import Question
from mmrag_jax.model import Qwen25VL, load_pretrained, save_pretrained
from mmrag_jax.model.checkpoint import CONFIG_FILE
from mmrag_jax.parallel import make_mesh
from mmrag_jax.processing import load_processor
from mmrag_jax.processing.prompts import PromptConfig
from mmrag_jax.recipe.checks import ConfigError, grpo_config, require_path, validate_batch_division
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.trainer import TrainerConfig
from mmrag_jax.sampling import Categorical, Greedy, SamplerConfig, SamplingMethod, ScorerConfig, TopK, TopP

_log = logging.getLogger(__name__)

EXPORT_DIR = "export"
# Files of a checkpoint directory that are not weights: the tokenizer, processor and generation settings.
_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".pth")


@dataclasses.dataclass
class Split:
  """One split's questions and the image store their image candidates read from."""

  name: str
  questions: list[Question]
  images: ImageStore | None


class RunContext:
  """The resolved run: config, workdir, mesh. Loads models and splits on request."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, os.path.abspath(workdir)
    os.makedirs(self.workdir, exist_ok=True)
    self.mesh = _mesh(tuple(config.mesh.shape))
    self.data_parallel = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    validate_batch_division(config, self.data_parallel)
    self.is_main_process = jax.process_index() == 0

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  # -- model -----------------------------------------------------------------------------------------

  def load_model(self, path: str, field: str = "model.path") -> Qwen25VL:
    """A Hugging Face checkpoint directory -> the sharded model (config's dtypes); errors name `field`."""
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
      raise ConfigError(field, f"{path!r} is not a Hugging Face checkpoint directory (no {CONFIG_FILE})")
    _log.info("loading the policy from %s", path)
    return load_pretrained(path, dtype=self.config.model.dtype, param_dtype=self.config.model.param_dtype,
                           mesh=self.mesh, remat=self.config.model.remat,
                           max_pixels=self.config.pipeline.max_pixels,
                           attention_query_chunk=self.config.model.attention_query_chunk)

  def export(self, model: nnx.Module, source_dir: str, out_dir: str | None = None) -> str:
    """Writes the policy as a Hugging Face directory, with the source checkpoint's tokenizer and processor."""
    out_dir = out_dir or self.path(EXPORT_DIR)
    save_pretrained(model, out_dir)
    if self.is_main_process:
      for name in sorted(os.listdir(source_dir)):
        src = os.path.join(source_dir, name)
        if os.path.isfile(src) and name != CONFIG_FILE and not name.endswith(_WEIGHT_SUFFIXES):
          shutil.copy2(src, os.path.join(out_dir, name))
    _log.info("exported the policy to %s", out_dir)
    return out_dir

  def processor(self, model_dir: str):
    return load_processor(model_dir, min_pixels=self.config.pipeline.min_pixels,
                          max_pixels=self.config.pipeline.max_pixels)

  # -- data ------------------------------------------------------------------------------------------

  def read_split(self, split: str, limit: int = 0) -> Split:
    c = self.config.data
    data_dir = require_path(self.config, "data.data_dir", f"{c.dataset} annotation files")
    if c.dataset == "webqa":
      data = read_webqa(data_dir, split, limit=limit or None)
    else:
      data = read_mmqa(data_dir, split, image_dir=c.image_dir or None, limit=limit or None)
    if not data.questions:
      raise ConfigError("data.data_dir", f"no usable {c.dataset} questions in split {split!r} of {data_dir}")
    return Split(split, list(data.questions), data.images)

  # -- library configs -------------------------------------------------------------------------------

  def pipeline_config(self, processor_path: str, batch_size: int, *, train: bool) -> PipelineConfig:
    c = self.config
    return PipelineConfig(
        processor_path=processor_path, min_pixels=c.pipeline.min_pixels, max_pixels=c.pipeline.max_pixels,
        batch_size=batch_size, length_buckets=tuple(c.pipeline.length_buckets),
        patch_buckets=tuple(c.pipeline.patch_buckets), seed=c.seed, shuffle=train, num_epochs=None if train else 1,
        worker_count=c.pipeline.worker_count if train else 0, read_threads=c.pipeline.read_threads,
        prompt=PromptConfig(**c.prompt.to_dict()))

  def grpo_config(self) -> GRPOConfig:
    return grpo_config(self.config)

  def sampling_method(self) -> SamplingMethod:
    s = self.config.sampler
    if s.method == "greedy":
      return Greedy()
    if s.method == "categorical":
      return Categorical(temperature=s.temperature)
    if s.method == "top_k":
      return TopK(k=s.top_k, temperature=s.temperature)
    return TopP(p=s.top_p, temperature=s.temperature)

  def sampler_config(self, *, max_new_tokens: int, greedy: bool = False) -> SamplerConfig:
    s = self.config.sampler
    return SamplerConfig(max_new_tokens=max_new_tokens, method=Greedy() if greedy else self.sampling_method(),
                         decode_weights=s.decode_weights)

  def scorer_config(self) -> ScorerConfig:
    return ScorerConfig(batch_size=self.config.scorer.batch_size)

  def trainer_config(self) -> TrainerConfig:
    t = self.config.train
    return TrainerConfig(num_steps=t.num_steps, micro_batches=t.micro_batches, seed=self.config.seed,
                         checkpoint_every=t.checkpoint_every, max_to_keep=t.max_to_keep, eval_every=t.eval_every,
                         progress_bar=t.progress_bar)

  @property
  def prompts_per_batch(self) -> int:
    return self.config.train.batch_size // self.config.rl.group_size

  # -- bookkeeping -----------------------------------------------------------------------------------

  def barrier(self, name: str) -> None:
    """Waits for every process (multi-host runs): files process 0 wrote are complete afterwards."""
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(name)

  def write_json(self, name: str, obj: Any) -> str:
    path = self.path(name)
    if self.is_main_process:
      with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return path


def _mesh(shape: tuple[int, ...]):
  """The config's mesh; a shape without -1 that needs fewer devices than exist uses the first ones."""
  devices = jax.devices()
  try:
    if -1 not in shape and 0 < math.prod(shape) < len(devices):
      devices = devices[:math.prod(shape)]
    return make_mesh(shape, devices)
  except ValueError as e:
    raise ConfigError("mesh.shape", str(e)) from e


def has_files(directory: str, names: Sequence[str]) -> bool:
  return all(os.path.exists(os.path.join(directory, n)) for n in names)
