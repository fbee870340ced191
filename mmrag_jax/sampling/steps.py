"""Model steps of the rollout: group-shared prefill and single-token decode, with a float32 head.

Both run the model's cached decoder (`prefill_hidden` / `decode_hidden`) and project the hidden states
with float32 accumulation, exactly as `token_logprobs` does. The sampler's log-probs therefore come
from the same float32 logits the trainer recomputes, also when the model computes in bfloat16
(bfloat16 logits alone would be off by ~0.1 nats). A float32 model on CPU without a mesh decodes with
the packed step of `packed_decoder.py` instead of `decode_one` (same math, CPU-friendly layouts).

Group-shared prefix: the B prompts are prefilled once (vision tower and prompt attention run B times,
not B * G), then every cache row is repeated G times inside the same jitted call:

    prompts  [B]     -- prefill -->  cache [.., B, S, ..]  -- repeat G -->  cache [.., B * G, S, ..]
                                                                            row b * G + g = sample g of b
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from mmrag_jax.model.kv_cache import KVCache, decode_hidden, prefill_hidden, repeat_rows
from mmrag_jax.model.qwen25vl import ModelInputs, Qwen25VL
from mmrag_jax.parallel import activation_mesh, logical_to_mesh_spec


def float32_logits(model: Qwen25VL, hidden: jax.Array) -> jax.Array:
  """hidden [..., D] -> logits [..., V] float32 (float32 accumulation, like `token_logprobs`)."""
  return jnp.einsum("...d,dv->...v", hidden, model.head_weight(), preferred_element_type=jnp.float32)


def constrain_cache(cache: KVCache, mesh: Mesh | None) -> KVCache:
  """Pins the cache layout on `mesh`: rows over the batch axes, kv heads over 'tensor' (no-op without mesh).

  Dims that do not divide their mesh axes fall back to replication (see `logical_to_mesh_spec`).
  """
  if mesh is None:
    return cache

  def pin(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    spec = logical_to_mesh_spec(names, shape=x.shape, mesh=mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

  kv_names = (None, "batch", "length", "kv_heads", None)
  return KVCache(k=pin(cache.k, kv_names), v=pin(cache.v, kv_names), valid=pin(cache.valid, ("batch", "length")),
                 index=cache.index, rope_deltas=pin(cache.rope_deltas, ("batch",)))


def prefill_group(model: Qwen25VL, inputs: ModelInputs, cache_size: int, group_size: int,
                  mesh: Mesh | None = None) -> tuple[jax.Array, KVCache]:
  """Prefills B left-padded prompts once and shares each with G rows.

  inputs: B prompts of length L. Returns the next-token logits [B * G, V] float32 and a cache of
  `cache_size` (>= L) slots with rows [B * G], slots [0, L) written, prompt-major. With a `mesh` the
  forward's activations keep their row layout on it (`parallel.activation_mesh`).
  """
  with activation_mesh(mesh):
    hidden, cache = prefill_hidden(model, inputs, cache_size)
  logits = jnp.repeat(float32_logits(model, hidden[:, -1]), group_size, axis=0)  # left padding: slot L-1
  return logits, constrain_cache(repeat_rows(cache, group_size), mesh)


def decode_one(model: Qwen25VL, tokens: jax.Array, cache: KVCache,
               mesh: Mesh | None = None) -> tuple[jax.Array, KVCache]:
  """Feeds one token per row: tokens [N] int -> next-token logits [N, V] float32 and the updated cache."""
  hidden, cache = decode_hidden(model, tokens, cache)
  return float32_logits(model, hidden), constrain_cache(cache, mesh)
