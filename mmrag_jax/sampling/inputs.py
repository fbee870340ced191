"""Host-to-device preparation shared by the sampler and the scorer: bucketing, mesh placement, fetching."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from mmrag_jax.model.config import Qwen25VLConfig
from mmrag_jax.model.qwen25vl import ModelInputs, map_input_arrays, prepare_inputs
from mmrag_jax.parallel import logical_sharding
from mmrag_jax.sampling.host_batch import fit_length, smallest_bucket

DEFAULT_LENGTH_BUCKETS = (128, 256, 512, 1024, 2048, 4096, 8192)
DEFAULT_PATCH_BUCKETS = (256, 1024, 4096, 16384, 65536)


def to_host(array: jax.Array) -> np.ndarray:
  """A (possibly multi-host sharded) array as one numpy array on every host."""
  if isinstance(array, jax.Array) and not array.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
  return np.asarray(array)


def place_inputs(inputs: ModelInputs, mesh: Mesh | None) -> ModelInputs:
  """Puts prompt arrays on `mesh`: rows over the batch axes, the vision arrays too (`map_input_arrays`)."""
  if mesh is None:
    return inputs
  return map_input_arrays(
      inputs, lambda x, names: jax.device_put(x, logical_sharding(mesh, names, shape=np.shape(x))))


def prepare_bucketed(batch: Mapping[str, Any], model_config: Qwen25VLConfig, length_buckets: tuple[int, ...],
                     patch_buckets: tuple[int, ...]) -> ModelInputs:
  """A processor batch as `ModelInputs` left-padded to a length bucket, patches padded to a patch bucket."""
  mask = np.asarray(batch.get("attention_mask", np.ones_like(np.asarray(batch["input_ids"]))))
  length = smallest_bucket(int(mask.astype(bool).sum(axis=1).max(initial=1)), length_buckets, "prompt length")
  padded = fit_length(batch, length, model_config.pad_token_id)
  num_patches = None
  if padded.get("pixel_values") is not None:
    num_patches = smallest_bucket(len(padded["pixel_values"]), patch_buckets, "image patch count")
  return prepare_inputs(padded, model_config, num_patches=num_patches)
