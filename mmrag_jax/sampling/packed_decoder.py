"""Single-token decoding on CPU from text-decoder weights repacked for matrix-vector products.

A decode step multiplies a few rows (N = B * G) by every weight matrix once, so on a CPU it is bound by
how fast the weights stream from memory. XLA:CPU's matmul library streams a matrix fastest when it is
the left-hand operand in row-major [out, in] layout; with the flax layout [in, out] as the right-hand
operand it re-packs the whole matrix on every call (2-3x slower at N = 8). So this step:

  * keeps activations as columns, hidden [D, N], and computes every projection as W^T [out, in] @ h [in, N];
  * fuses q/k/v into one [(H + 2 KVH) Dh, D] matrix and gate/up into one [2 I, D] (fewer, larger ops);
  * reads each layer's keys/values from its own [N, S, KVH * Dh] buffer, written in place, in the stored
    layout (no per-step transpose or copy of the cache): the queries of kv head j are placed in a
    block-diagonal [N, H, KVH * Dh] matrix, zero outside head j's Dh columns, so one batched matmul
    against the buffer gives every head's scores:

        scores[n, h, s] = sum_c qblock[n, h, c] * keys[n, s, c],   qblock[n, h, c] = q[n, h, c mod Dh]
                                                                   if c // Dh == h // G, else 0

    and the values come back the same way (the blocks off the diagonal are discarded). It spends KVH
    times the attention flops, which are small next to the projections at decode time.

The math is the model's (`TextModel` with a cache, float32 `float32_logits` head); only the layouts and
the grouping of the matmuls differ, so logits agree to float32 rounding. Packing copies the decoder's
weights once (`pack_decoder`); the sampler keeps the packed copy while the parameters are unchanged.
Used for float32 models on CPU without a mesh; elsewhere the sampler runs the model's own decode step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mmrag_jax.model.config import TextConfig
from mmrag_jax.model.kv_cache import KVCache
from mmrag_jax.model.qwen25vl import Qwen25VL
from mmrag_jax.model.text import mrope_cos_sin


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedLayer:
  """One decoder layer, matrices as [out, in]. D hidden, H / KVH heads of Dh, I MLP width.

  input_norm, post_norm:  [D] RMSNorm weights.
  qkv:                    [(H + 2 KVH) Dh, D], rows q (H Dh), then k (KVH Dh), then v (KVH Dh).
  qkv_bias:               [(H + 2 KVH) Dh].
  out:                    [D, H Dh] attention output projection.
  gate_up:                [2 I, D], rows gate then up.
  down:                   [D, I].
  """

  input_norm: jax.Array
  qkv: jax.Array
  qkv_bias: jax.Array
  out: jax.Array
  post_norm: jax.Array
  gate_up: jax.Array
  down: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedDecoder:
  """The text decoder for decoding: embedding [V, D], layers, final norm [D], head [V, D] (float32)."""

  embedding: jax.Array
  layers: tuple[PackedLayer, ...]
  norm: jax.Array
  head: jax.Array


def pack_decoder(model: Qwen25VL) -> PackedDecoder:
  """Copies the text decoder's weights into the decode layouts (jit it: one fused copy of the weights)."""
  text = model.language_model
  dtype = model.config.compute_dtype

  def rows(*linears) -> jax.Array:  # [in, out] kernels -> one [sum(out), in] matrix
    return jnp.concatenate([linear.kernel[...] for linear in linears], axis=1).astype(dtype).T

  layers = []
  for layer in text.layers:
    attention, mlp = layer.self_attn, layer.mlp
    layers.append(PackedLayer(
        input_norm=layer.input_layernorm.weight[...].astype(dtype),
        qkv=rows(attention.q_proj, attention.k_proj, attention.v_proj),
        qkv_bias=jnp.concatenate([attention.q_proj.bias[...], attention.k_proj.bias[...],
                                  attention.v_proj.bias[...]]).astype(dtype),
        out=rows(attention.o_proj),
        post_norm=layer.post_attention_layernorm.weight[...].astype(dtype),
        gate_up=rows(mlp.gate_proj, mlp.up_proj),
        down=rows(mlp.down_proj)))
  return PackedDecoder(embedding=text.embed_tokens.embedding[...].astype(dtype), layers=tuple(layers),
                       norm=text.norm.weight[...].astype(dtype), head=model.head_weight().T)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerCache:
  """The KV cache as one buffer pair per layer (the loop carry of the packed decode).

  keys, values:  per layer [N, S, KVH * Dh] (a free reshape of a `KVCache` layer row).
  valid, index, rope_deltas: as in `KVCache`.
  """

  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  valid: jax.Array
  index: jax.Array
  rope_deltas: jax.Array

  @classmethod
  def from_cache(cls, cache: KVCache) -> LayerCache:
    layers, rows, slots = cache.k.shape[:3]
    split = lambda x: tuple(x[i].reshape(rows, slots, -1) for i in range(layers))
    return cls(keys=split(cache.k), values=split(cache.v), valid=cache.valid, index=cache.index,
               rope_deltas=cache.rope_deltas)

  def to_cache(self, kv_heads: int) -> KVCache:
    """Back to [layers, N, S, KVH, Dh] buffers."""
    def stack(buffers: tuple[jax.Array, ...]) -> jax.Array:
      rows, slots, _ = buffers[0].shape
      return jnp.stack(buffers).reshape(len(buffers), rows, slots, kv_heads, -1)

    return KVCache(k=stack(self.keys), v=stack(self.values), valid=self.valid, index=self.index,
                   rope_deltas=self.rope_deltas)


def _rms_norm_columns(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  """RMSNorm of every column of x [D, N] (float32), scaled by weight [D]."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=0, keepdims=True) + eps) * weight[:, None]


def _matvec(weight: jax.Array, columns: jax.Array) -> jax.Array:
  """weight [out, in] @ columns [in, N] -> [out, N]."""
  return jax.lax.dot_general(weight, columns, (((1,), (0,)), ((), ())))


def _rotate_columns(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotary embedding of x [..., Dh, N] with cos, sin [Dh, N] (rotate-half pairing along Dh)."""
  first, second = jnp.split(x, 2, axis=-2)
  return x * cos + jnp.concatenate([-second, first], axis=-2) * sin


def _attend(queries: jax.Array, keys: jax.Array, values: jax.Array, valid: jax.Array, scale: float) -> jax.Array:
  """Grouped-query attention of one token per row over the layer's cache (see the module docstring).

  queries: [KVH, G, Dh, N]; keys, values: [N, S, KVH * Dh]; valid: [N, S] bool. Returns [H * Dh, N].
  """
  kv_heads, group, head_dim, rows = queries.shape
  same_head = jnp.eye(kv_heads, dtype=queries.dtype)
  per_row = queries.transpose(3, 0, 1, 2)  # [N, KVH, G, Dh]
  block = (per_row[:, :, :, None, :] * same_head[None, :, None, :, None]).reshape(
      rows, kv_heads * group, kv_heads * head_dim)
  scores = jnp.einsum("nhc,nsc->nhs", block, keys) * scale
  scores = jnp.where(valid[:, None, :], scores, -jnp.inf)  # the slot just written is always valid
  probs = jax.nn.softmax(scores, axis=-1)
  mixed = jnp.einsum("nhs,nsc->nhc", probs, values).reshape(rows, kv_heads, group, kv_heads, head_dim)
  out = jnp.einsum("nkgjd,kj->kgdn", mixed, same_head)  # keep head k's own value columns
  return out.reshape(kv_heads * group * head_dim, rows)


def packed_decode_step(packed: PackedDecoder, config: TextConfig, tokens: jax.Array,
                       cache: LayerCache) -> tuple[jax.Array, LayerCache]:
  """Feeds one token per row: tokens [N] int -> next-token logits [N, V] float32 and the updated cache.

  Same positions, mask and slot as `decode_hidden`: the token goes to slot `cache.index` and attends to
  every valid slot, itself included.
  """
  rows = tokens.shape[0]
  heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
  group, width = heads // kv_heads, config.intermediate_size
  positions = cache.rope_deltas + jnp.sum(cache.valid, axis=-1, dtype=jnp.int32)  # [N]
  valid = jax.lax.dynamic_update_slice(cache.valid, jnp.ones((rows, 1), bool), (0, cache.index))
  cos, sin = mrope_cos_sin(jnp.broadcast_to(positions[None, :, None], (3, rows, 1)), head_dim=head_dim,
                           theta=config.rope_theta, mrope_section=config.mrope_section, dtype=jnp.float32)
  cos, sin = cos[:, 0].T, sin[:, 0].T  # [Dh, N]

  hidden = packed.embedding[tokens].T  # [D, N]
  keys, values = list(cache.keys), list(cache.values)
  for i, layer in enumerate(packed.layers):
    qkv = _matvec(layer.qkv, _rms_norm_columns(hidden, layer.input_norm, config.rms_norm_eps))
    qkv = qkv + layer.qkv_bias[:, None]
    q = _rotate_columns(qkv[:heads * head_dim].reshape(kv_heads, group, head_dim, rows), cos, sin)
    k = _rotate_columns(qkv[heads * head_dim:(heads + kv_heads) * head_dim].reshape(kv_heads, head_dim, rows),
                        cos, sin)
    v = qkv[(heads + kv_heads) * head_dim:]
    new_slot = lambda x: x.reshape(kv_heads * head_dim, rows).T[:, None, :]  # [N, 1, KVH * Dh]
    keys[i] = jax.lax.dynamic_update_slice(keys[i], new_slot(k), (0, cache.index, 0))
    values[i] = jax.lax.dynamic_update_slice(values[i], new_slot(v), (0, cache.index, 0))
    attended = _attend(q, keys[i], values[i], valid, head_dim**-0.5)
    hidden = hidden + _matvec(layer.out, attended)
    gate_up = _matvec(layer.gate_up, _rms_norm_columns(hidden, layer.post_norm, config.rms_norm_eps))
    hidden = hidden + _matvec(layer.down, jax.nn.silu(gate_up[:width]) * gate_up[width:])

  logits = _matvec(packed.head, _rms_norm_columns(hidden, packed.norm, config.rms_norm_eps))  # [V, N]
  # The barrier keeps the head a [V, D] @ [D, N] product: folded into its consumer's transpose, XLA
  # would turn it into an [N, D] @ [D, V] product that its matmul library does not take (10x slower).
  logits = jax.lax.optimization_barrier(logits).astype(jnp.float32).T
  return logits, LayerCache(keys=tuple(keys), values=tuple(values), valid=valid, index=cache.index + 1,
                            rope_deltas=cache.rope_deltas)
