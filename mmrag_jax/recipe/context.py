"""Where a run works and what it loads: the resolved workdir and mesh (`RunDir`), checkpoints, processors and
splits, and the JSON files every process agrees on."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from typing import Any

import jax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from mmrag_jax.data import read_mmqa, read_webqa
from mmrag_jax.data.images import ImageStore
from mmrag_jax.data.pipeline import PipelineConfig
from mmrag_jax.data.records import Question
from mmrag_jax.model import Qwen25VL, load_pretrained, save_pretrained
from mmrag_jax.model.checkpoint import CONFIG_FILE
from mmrag_jax.parallel import make_mesh
from mmrag_jax.processing import load_processor
from mmrag_jax.recipe.settings import ConfigError, DataSettings, ModelSettings, require_path

__all__ = [
    "EXPORT_DIR", "RunDir", "Split", "barrier", "export_policy", "is_main_process", "load_model",
    "load_policy_processor", "read_split", "resolve_mesh", "write_json",
]

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


@dataclasses.dataclass(frozen=True)
class RunDir:
  """A run's resolved (absolute) workdir and the mesh its arrays live on."""

  workdir: str
  mesh: Mesh

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)


def is_main_process() -> bool:
  """Process 0 writes the files every host of a run shares."""
  return jax.process_index() == 0


def load_model(path: str, model: ModelSettings, mesh: Mesh, field: str = "model.path") -> Qwen25VL:
  """A Hugging Face checkpoint directory -> the sharded model (the settings' dtypes); errors name `field`."""
  if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
    raise ConfigError(field, f"{path!r} is not a Hugging Face checkpoint directory (no {CONFIG_FILE})")
  _log.info("loading the policy from %s", path)
  return load_pretrained(path, dtype=model.dtype, param_dtype=model.param_dtype, mesh=mesh, remat=model.remat,
                         max_pixels=model.max_pixels, attention_query_chunk=model.attention_query_chunk)


def export_policy(model: nnx.Module, source_dir: str, out_dir: str) -> str:
  """Writes the policy as a Hugging Face directory, with the source checkpoint's tokenizer and processor."""
  save_pretrained(model, out_dir)
  if is_main_process():
    for name in sorted(os.listdir(source_dir)):
      src = os.path.join(source_dir, name)
      if os.path.isfile(src) and name != CONFIG_FILE and not name.endswith(_WEIGHT_SUFFIXES):
        shutil.copy2(src, os.path.join(out_dir, name))
  _log.info("exported the policy to %s", out_dir)
  return out_dir


def load_policy_processor(model_dir: str, pipeline: PipelineConfig):
  """The processor of checkpoint `model_dir` with the pipeline's pixel budget."""
  return load_processor(model_dir, min_pixels=pipeline.min_pixels, max_pixels=pipeline.max_pixels)


def read_split(data: DataSettings, split: str, limit: int = 0) -> Split:
  """The first `limit` (0: all) usable questions of `split`; none at all is an error naming data.data_dir."""
  data_dir = require_path("data.data_dir", data.data_dir, f"{data.dataset} annotation files")
  if data.dataset == "webqa":
    read = read_webqa(data_dir, split, limit=limit or None)
  else:
    read = read_mmqa(data_dir, split, image_dir=data.image_dir or None, limit=limit or None)
  if not read.questions:
    raise ConfigError("data.data_dir", f"no usable {data.dataset} questions in split {split!r} of {data_dir}")
  return Split(split, list(read.questions), read.images)


def barrier(name: str) -> None:
  """Waits for every process (multi-host runs): files process 0 wrote are complete afterwards."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def write_json(path: str, obj: Any) -> str:
  """Writes `obj` to `path` (process 0 only)."""
  if is_main_process():
    with open(path, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=2, ensure_ascii=False)
      f.write("\n")
  return path


def resolve_mesh(shape: tuple[int, ...]) -> Mesh:
  """The config's mesh; a shape without -1 that needs fewer devices than exist uses the first ones."""
  devices = jax.devices()
  try:
    if -1 not in shape and 0 < math.prod(shape) < len(devices):
      devices = devices[:math.prod(shape)]
    return make_mesh(shape, devices)
  except ValueError as e:
    raise ConfigError("mesh.shape", str(e)) from e
