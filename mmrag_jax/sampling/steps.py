"""Model steps of the rollout: group-shared prefill and single-token decode, with a float32 head.

Both run the model's cached decoder (`prefill_hidden` / `decode_hidden`) and project the hidden states
with float32 accumulation, exactly as `chunked_logprobs` does. The sampler's log-probs therefore come
from the same float32 logits the trainer recomputes, also when the model computes in bfloat16
(bfloat16 logits alone would be off by ~0.1 nats). A float32 model on CPU without a mesh, or on a
one-device one, decodes with the packed step of `packed_decoder.py` instead of `decode_one` (same math,
CPU-friendly layouts).

Group-shared prefix: the B prompts are prefilled once (vision tower and prompt attention run B times,
not B * G), then every cache row is repeated G times inside the same jitted call:

    prompts  [B]     -- prefill -->  cache [.., B, S, ..]  -- repeat G -->  cache [.., B * G, S, ..]
                                                                            row b * G + g = sample g of b
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from mmrag_jax.model.kv_cache import KVCache, decode_hidden, prefill_hidden, repeat_rows
from mmrag_jax.model.qwen25vl import ModelInputs, Qwen25VL
from mmrag_jax.parallel import (DEFAULT_RULES, LogicalRules, activation_mesh, kv_cache_rules, logical_sharding,
                                logical_to_mesh_spec)

__all__ = ["cache_shardings", "decode_one", "prefill_group", "prefill_rows"]


def _float32_logits(model: Qwen25VL, hidden: jax.Array) -> jax.Array:
  """hidden [..., D] -> logits [..., V] float32 (float32 accumulation, like `chunked_logprobs`)."""
  return jnp.einsum("...d,dv->...v", hidden, model.head_weight(), preferred_element_type=jnp.float32)


def cache_shardings(cache: KVCache, mesh: Mesh, weight_rules: LogicalRules = DEFAULT_RULES) -> KVCache:
  """A `KVCache` of NamedShardings: the cache's layout on `mesh` beside weights laid out by `weight_rules`
  (`parallel.kv_cache_rules`; `decode_rules()` for the sampler's decode weights). `cache` may be abstract.

  Dims that do not divide their mesh axes fall back to replication (see `logical_to_mesh_spec`).
  """
  rules = kv_cache_rules(weight_rules, cache.k.shape[3], mesh)
  of = lambda x, names: logical_sharding(mesh, names, rules, shape=x.shape)
  kv_names = (None, "batch", "length", "kv_heads", None)
  return KVCache(k=of(cache.k, kv_names), v=of(cache.v, kv_names), valid=of(cache.valid, ("batch", "length")),
                 index=of(cache.index, ()), rope_deltas=of(cache.rope_deltas, ("batch",)))


def _constrain_cache(cache: KVCache, mesh: Mesh | None, weight_rules: LogicalRules = DEFAULT_RULES) -> KVCache:
  """Pins the cache to its `cache_shardings` layout on `mesh` (no-op without a mesh)."""
  if mesh is None:
    return cache
  return jax.tree.map(jax.lax.with_sharding_constraint, cache, cache_shardings(cache, mesh, weight_rules))


def prefill_rows(prompts: int, mesh: Mesh | None) -> int:
  """The rows a group-shared prefill of `prompts` prompts runs: a multiple of the devices its rows split over.

  A 7B stage-2 micro-batch has 4 prompts; on 8 data-parallel devices they do not divide, and rows that do
  not divide their mesh axes are replicated, so every device would prefill all 4 (the vision tower too). With
  4 text-only filler rows of one token each (`prompt_batch.with_padding_rows`) each device prefills one row;
  `prefill_group` drops the fillers before sharing the prompts with their groups.
  """
  if mesh is None:
    return prompts
  axes = logical_to_mesh_spec(("batch",), mesh=mesh)[0]
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  devices = math.prod(mesh.shape[a] for a in axes)
  return -(-prompts // devices) * devices


def prefill_group(model: Qwen25VL, inputs: ModelInputs, cache_size: int, group_size: int,
                  mesh: Mesh | None = None, weight_rules: LogicalRules = DEFAULT_RULES,
                  prompts: int | None = None) -> tuple[jax.Array, KVCache]:
  """Prefills B left-padded prompts once and shares each with G rows.

  inputs: B prompts of length L. Returns the next-token logits [B * G, V] float32 and a cache of
  `cache_size` (>= L) slots with rows [B * G], slots [0, L) written, prompt-major. With a `mesh` the
  forward's activations keep their row layout on it (`parallel.activation_mesh`) and the cache leaves in
  the layout the decode loop reads it in beside weights laid out by `weight_rules` (`cache_shardings`).
  prompts: with filler rows after the real prompts (`prefill_rows`), the number of real ones: only they
  are kept (logits [prompts * G, V], cache rows [prompts * G]).
  """
  with activation_mesh(mesh):
    hidden, cache = prefill_hidden(model, inputs, cache_size)
  if prompts is not None and prompts < hidden.shape[0]:
    hidden = hidden[:prompts]
    cache = KVCache(k=cache.k[:, :prompts], v=cache.v[:, :prompts], valid=cache.valid[:prompts], index=cache.index,
                    rope_deltas=cache.rope_deltas[:prompts])
  logits = jnp.repeat(_float32_logits(model, hidden[:, -1]), group_size, axis=0)  # left padding: slot L-1
  return logits, _constrain_cache(repeat_rows(cache, group_size), mesh, weight_rules)


def decode_one(model: Qwen25VL, tokens: jax.Array, cache: KVCache, mesh: Mesh | None = None,
               weight_rules: LogicalRules = DEFAULT_RULES) -> tuple[jax.Array, KVCache]:
  """Feeds one token per row: tokens [N] int -> next-token logits [N, V] float32 and the updated cache
  (kept in its `cache_shardings` layout beside weights laid out by `weight_rules`)."""
  hidden, cache = decode_hidden(model, tokens, cache)
  return _float32_logits(model, hidden), _constrain_cache(cache, mesh, weight_rules)
