"""Demo inputs made on the spot: a synthetic WebQA in the official file format and a tiny random
Qwen2.5-VL checkpoint with an offline tokenizer, both written as files and then read through the same
loaders a real run uses."""

from __future__ import annotations

import logging
import os

import ml_collections
from flax import nnx

from mmrag_jax.data.synthetic import generate_webqa
from mmrag_jax.model import Qwen25VL, save_pretrained, tiny
from mmrag_jax.processing.tiny_tokenizer import build_tiny_processor_dir

__all__ = ["prepare_demo_inputs"]

_log = logging.getLogger(__name__)

_DATA_DIR = "data"
_MODEL_DIR = "tiny_model"


def _build_tiny_checkpoint(out_dir: str, seed: int = 0) -> str:
  """A random tiny Qwen2.5-VL saved as a Hugging Face directory, with the offline tokenizer + processor."""
  if os.path.isfile(os.path.join(out_dir, "model.safetensors")):
    return out_dir
  model = Qwen25VL(tiny(), rngs=nnx.Rngs(seed))
  build_tiny_processor_dir(out_dir)
  save_pretrained(model, out_dir)
  return out_dir


def prepare_demo_inputs(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """Fills `data.data_dir` / `model.path` with generated inputs when the config asks for them and they are
  empty (generation is skipped when the files already exist, so a resumed demo reuses them). Returns
  whether it set either field."""
  filled = False
  if config.data.synthetic and not config.data.data_dir:
    data_dir = os.path.join(workdir, _DATA_DIR)
    if not os.path.isfile(os.path.join(data_dir, "WebQA_train_val.json")):
      num_train, num_val, num_test = config.data.synthetic_sizes
      _log.info("writing a synthetic WebQA (%d/%d/%d questions) to %s", num_train, num_val, num_test, data_dir)
      generate_webqa(data_dir, num_train=num_train, num_val=num_val, num_test=num_test, seed=config.seed)
    config.data.data_dir, filled = data_dir, True
  if config.model.build_tiny and not config.model.path:
    model_dir = os.path.join(workdir, _MODEL_DIR)
    _log.info("writing a tiny random Qwen2.5-VL checkpoint to %s", model_dir)
    config.model.path, filled = _build_tiny_checkpoint(model_dir, seed=config.seed), True
  return filled
