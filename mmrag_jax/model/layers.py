"""Layers shared by the Qwen2.5-VL vision tower and text decoder.

Every parameter carries logical axis names (`out_sharding` metadata set through
`nnx.with_partitioning`); `mmrag_jax.parallel` maps those names to mesh axes.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = [
    "DEFAULT_KERNEL_INIT", "RMSNorm", "apply_rotary", "attention", "attention_with_new_slot", "linear",
    "logical_partitioning", "rotate_half", "shared_prefix_attention", "stacked_modules",
]

# Hugging Face initialises Qwen2.5-VL linears with N(0, initializer_range=0.02) and zero biases.
DEFAULT_KERNEL_INIT = nnx.initializers.normal(stddev=0.02)

_M = TypeVar("_M", bound=nnx.Module)


def _mesh_is_set() -> bool:
  return not jax.sharding.get_abstract_mesh().empty


def logical_partitioning(init: Callable[..., jax.Array], axes: tuple[str, ...]) -> Callable[..., jax.Array]:
  """`nnx.with_partitioning(init, axes)` that shards eagerly only under `jax.set_mesh(...)`.

  Under a mesh (with logical-axis rules in context) a new variable is placed on its sharding at
  creation; without one it stays a plain host array that still carries the names as metadata
  (`nnx.get_partition_spec` reads them), so tests and `nnx.eval_shape` need no mesh.
  """
  return nnx.with_partitioning(init, axes, eager_sharding=_mesh_is_set())


class RMSNorm(nnx.Module):
  """Root-mean-square norm in the reference's order of casts.

  y = weight * (x / sqrt(mean(x^2) + eps)).astype(x.dtype): the variance and the normalisation run in
  float32 (float64 for float64 inputs), the normalised value is cast back to the input dtype and only
  then scaled by `weight` (cast to the compute dtype). Param `weight` [D], ones at init, logical axis
  `axis_name`.
  """

  def __init__(self, num_features: int, *, eps: float, dtype: jnp.dtype | str | None = None,
               param_dtype: jnp.dtype | str = jnp.float32, rngs: nnx.Rngs, axis_name: str = "norm"):
    del rngs  # deterministic init; kept so every layer is built the same way
    self.eps = eps
    self.dtype = None if dtype is None else jnp.dtype(dtype)
    ones = logical_partitioning(nnx.initializers.ones_init(), (axis_name,))
    self.weight = nnx.Param(ones(None, (num_features,), jnp.dtype(param_dtype)))

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., D] -> [..., D] in `dtype` (or x.dtype when `dtype` is None)."""
    out_dtype = self.dtype or x.dtype
    wide = x.astype(jnp.promote_types(jnp.float32, x.dtype))  # float32, or float64 for float64 inputs
    variance = jnp.mean(jnp.square(wide), axis=-1, keepdims=True)
    normed = (wide * jax.lax.rsqrt(variance + self.eps)).astype(x.dtype)
    return normed.astype(out_dtype) * self.weight[...].astype(out_dtype)


def linear(in_f: int, out_f: int, *, use_bias: bool, axes: tuple[str, str],
           dtype: jnp.dtype | str | None, param_dtype: jnp.dtype | str, rngs: nnx.Rngs) -> nnx.Linear:
  """An `nnx.Linear` (kernel [in_f, out_f], bias [out_f]) whose params carry logical axis names.

  `axes` names the kernel's (input, output) dims; the bias is partitioned like the output dim.
  """
  return nnx.Linear(
      in_f, out_f, use_bias=use_bias, dtype=None if dtype is None else jnp.dtype(dtype),
      param_dtype=jnp.dtype(param_dtype),
      kernel_init=logical_partitioning(DEFAULT_KERNEL_INIT, axes),
      bias_init=logical_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
      rngs=rngs)


def stacked_modules(build: Callable[[nnx.Rngs], _M], count: int, rngs: nnx.Rngs) -> _M:
  """`count` modules of `build` as one whose every parameter is [layers, ...]: module i is slice [i].

  Each draws its own initial weights (split RNG streams); the leading dim carries the logical axis name
  'layers' (not sharded by the rules), so a `jax.lax.scan` over it runs one compiled body for all of them.
  """
  @nnx.split_rngs(splits=count)
  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def build_all(each_rngs: nnx.Rngs) -> _M:
    return build(each_rngs)

  return build_all(rngs)


def rotate_half(x: jax.Array) -> jax.Array:
  """[x1, x2] -> [-x2, x1] over the last dim (split into two equal halves): the rotary pairing."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotary embedding x * cos + rotate_half(x) * sin; cos/sin broadcast against x [..., head_dim]."""
  return x * cos + rotate_half(x) * sin


def attention_with_new_slot(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, k_new: jax.Array,
                            v_new: jax.Array, scale: float) -> jax.Array:
  """One query step's attention over cached slots plus its own new key / value, the cache left unread-after-write.

  q: [B, 1, H, Dh]; k, v: [B, S, KVH, Dh] the cache before this step; mask: [B, 1, S] bool over those slots
  (True = may attend); k_new, v_new: [B, 1, KVH, Dh] this step's, always attended -> [B, 1, H, Dh].

  The same math as `attention` over the S slots with the new key / value written into a free one: float32
  logits and softmax, probabilities in the values' dtype, query heads grouped as (kv_head, group). Reading the
  cache as it was, the decode step writes its new slot once after the layers instead of each layer writing
  its slot and reading the buffer back, which on TPU made XLA copy every layer's cache slice per token.
  """
  batch, _, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  q = q.reshape(batch, 1, kv_heads, heads // kv_heads, head_dim)
  f32 = jnp.float32
  old = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=f32) * scale  # [B, KVH, G, 1, S]
  new = jnp.einsum("btkgd,btkd->bkgt", q, k_new, preferred_element_type=f32)[..., None] * scale  # [.., 1, 1]
  visible = mask[:, None, None, :, :]
  top = jnp.maximum(jnp.max(jnp.where(visible, old, -jnp.inf), axis=-1, keepdims=True), new)
  p_old = jnp.where(visible, jnp.exp(old - top), 0.0)
  p_new = jnp.exp(new - top)
  total = jnp.sum(p_old, axis=-1, keepdims=True) + p_new
  p_old, p_new = (p_old / total).astype(v.dtype), (p_new / total).astype(v.dtype)
  out = (jnp.einsum("bkgts,bskd->btkgd", p_old, v, preferred_element_type=f32)
         + jnp.einsum("bkgts,bskd->btkgd", p_new, v_new, preferred_element_type=f32))
  return out.astype(q.dtype).reshape(batch, 1, heads, head_dim)


def _grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
  """q: [B, T, H, Dh]; k, v: [B, S, KVH, Dh]; mask: [B, T, S] -> [B, T, H, Dh]; the math of jax's XLA
  `dot_product_attention` (float32 logits and softmax, masked logits at a large negative value so a row that
  sees nothing stays finite, probabilities in the values' dtype).

  Laid out kv-head major: each kv head's G x T query rows form one [G T, Dh] x [Dh, S] matmul, and the
  probabilities [G T, S] meet the values [S, Dh] as they are. On XLA:CPU this skips the transposes of the
  [.., T, S] probabilities that `jax.nn.dot_product_attention`'s head-major layout makes (2-core AMD EPYC,
  450 tokens, 16 / 4 heads of 64: 7.8 vs 13.8 ms per layer).
  """
  batch, steps, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  f32 = jnp.float32
  grouped = jnp.moveaxis(q.reshape(batch, steps, kv_heads, heads // kv_heads, head_dim), 2, 1)  # [B, KVH, T, G, Dh]
  logits = jnp.einsum("bktgd,bskd->bktgs", grouped, k, preferred_element_type=f32) * jnp.asarray(scale, f32)
  logits = jnp.where(mask[:, None, :, None, :], logits, -0.7 * jnp.finfo(f32).max)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bktgs,bskd->bktgd", probs, v, preferred_element_type=f32)
  return jnp.moveaxis(out, 1, 2).reshape(batch, steps, heads, head_dim).astype(q.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float, *,
              query_chunk: int | None = None) -> jax.Array:
  """Grouped-query softmax attention (`_grouped_attention`: float32 softmax, query heads grouped as
  (kv_head, group)), optionally over chunks of queries.

  q: [B, T, H, Dh]; k, v: [B, S, KVH, Dh]; mask: [B, T, S] bool (True = may attend) -> [B, T, H, Dh].
  With `query_chunk` < T the queries go through in n = ceil(T / query_chunk) equal chunks (rows padded by
  fewer than n), one after another, each chunk's [B, H, chunk, S] scores recomputed in the backward pass:
  memory grows with T x chunk instead of T^2 (a 4,608-token stage-2 row holds 28 x 4608^2 float32 scores,
  2.4 GB, per layer otherwise). Every query row is computed exactly as unchunked.
  """
  return _in_query_chunks(lambda q_chunk, mask_chunk: _grouped_attention(q_chunk, k, v, mask_chunk, scale),
                          q, mask, query_chunk)


def _in_query_chunks(attend: Callable[[jax.Array, jax.Array], jax.Array], q: jax.Array, mask: jax.Array,
                     query_chunk: int | None) -> jax.Array:
  """attend(q, mask) -> [B, T, H, Dh] over q [B, T, H, Dh] and mask [B, T, ...], whole or in equal chunks of
  at most `query_chunk` queries (see `attention`), each chunk rematerialized in the backward pass."""
  steps = q.shape[1]
  if query_chunk is None or query_chunk <= 0 or steps <= query_chunk:
    return attend(q, mask)
  num_chunks = -(-steps // query_chunk)
  chunk = -(-steps // num_chunks)
  pad = num_chunks * chunk - steps
  q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  # Padded query rows attend to nothing among the mask's keys and are dropped.
  mask = jnp.pad(mask, ((0, 0), (0, pad)) + ((0, 0),) * (mask.ndim - 2))
  split = lambda x: jnp.moveaxis(x.reshape(x.shape[0], num_chunks, chunk, *x.shape[2:]), 1, 0)
  one_chunk = jax.checkpoint(attend)
  out = jax.lax.map(lambda qm: one_chunk(*qm), (split(q), split(mask)))  # [n, B, chunk, H, Dh]
  out = jnp.moveaxis(out, 0, 1).reshape(q.shape[0], num_chunks * chunk, *q.shape[2:])
  return out[:, :steps]


def shared_prefix_attention(q: jax.Array, prefix_k: jax.Array, prefix_v: jax.Array, prefix_mask: jax.Array,
                            k: jax.Array, v: jax.Array, mask: jax.Array, scale: float, *,
                            query_chunk: int | None = None) -> jax.Array:
  """Attention of N rows that continue B shared prefixes (row r continues prefix r // (N / B)) over
  [their prefix's keys, their own keys], without copying a prefix's keys / values per row.

  q: [N, T, H, Dh]; prefix_k, prefix_v: [B, Lp, KVH, Dh]; prefix_mask: [B, Lp] bool, the real prefix keys;
  k, v: [N, T, KVH, Dh] the rows' own keys / values; mask: [N, T, T] bool over them -> [N, T, H, Dh].

  The math of `attention` over each row's concatenated keys (float32 logits, one softmax over both parts,
  probabilities in the values' dtype): the G = N / B rows of a prefix meet its keys as one [G T, Dh] x
  [Dh, Lp] matmul per kv head, their own keys row by row, and the two parts share one max and one
  normalizer. `query_chunk` splits the T query positions as in `attention`.
  """
  return _in_query_chunks(
      lambda q_chunk, mask_chunk: _shared_prefix_attention(q_chunk, prefix_k, prefix_v, prefix_mask, k, v,
                                                           mask_chunk, scale),
      q, mask, query_chunk)


def _shared_prefix_attention(q: jax.Array, prefix_k: jax.Array, prefix_v: jax.Array, prefix_mask: jax.Array,
                             k: jax.Array, v: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
  """`shared_prefix_attention` on C query positions per row: q [N, C, H, Dh], mask [N, C, T]."""
  rows, steps, heads, head_dim = q.shape
  prefixes, kv_heads = prefix_k.shape[0], prefix_k.shape[2]
  group = rows // prefixes
  f32, masked = jnp.float32, -0.7 * jnp.finfo(jnp.float32).max

  def by_prefix(x: jax.Array) -> jax.Array:  # [N, KVH, C, ...] -> [B, KVH, G C, ...]
    x = jnp.moveaxis(x.reshape(prefixes, group, *x.shape[1:]), 1, 2)
    return x.reshape(prefixes, kv_heads, group * steps, *x.shape[4:])

  def by_row(x: jax.Array) -> jax.Array:  # [B, KVH, G C, ...] -> [N, KVH, C, ...]
    x = jnp.moveaxis(x.reshape(prefixes, kv_heads, group, steps, *x.shape[3:]), 2, 1)
    return x.reshape(rows, kv_heads, steps, *x.shape[4:])

  grouped = jnp.moveaxis(q.reshape(rows, steps, kv_heads, heads // kv_heads, head_dim), 2, 1)  # [N, KVH, C, g, Dh]
  scale = jnp.asarray(scale, f32)
  shared = jnp.einsum("bktgd,bskd->bktgs", by_prefix(grouped), prefix_k, preferred_element_type=f32) * scale
  shared = jnp.where(prefix_mask[:, None, None, None, :], shared, masked)  # [B, KVH, G C, g, Lp]
  own = jnp.einsum("nktgd,nskd->nktgs", grouped, k, preferred_element_type=f32) * scale
  own = jnp.where(mask[:, None, :, None, :], own, masked)  # [N, KVH, C, g, T]
  top = jax.lax.stop_gradient(jnp.maximum(jnp.max(shared, axis=-1), by_prefix(jnp.max(own, axis=-1))))
  shared, own = jnp.exp(shared - top[..., None]), jnp.exp(own - by_row(top)[..., None])
  total = jnp.sum(shared, axis=-1) + by_prefix(jnp.sum(own, axis=-1))  # [B, KVH, G C, g]
  shared = (shared / total[..., None]).astype(prefix_v.dtype)
  own = (own / by_row(total)[..., None]).astype(v.dtype)
  out = by_row(jnp.einsum("bktgs,bskd->bktgd", shared, prefix_v, preferred_element_type=f32))
  out = out + jnp.einsum("nktgs,nskd->nktgd", own, v, preferred_element_type=f32)  # [N, KVH, C, g, Dh]
  return jnp.moveaxis(out, 1, 2).reshape(rows, steps, heads, head_dim).astype(q.dtype)
