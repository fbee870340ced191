"""Host-to-device movement shared by the sampler and the scorer: mesh placement, fetching."""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from mmrag_jax.model.qwen25vl import ModelInputs, map_input_arrays
from mmrag_jax.parallel import logical_sharding

__all__ = ["place_inputs", "to_host"]

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
