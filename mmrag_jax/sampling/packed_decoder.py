"""Single-token decoding on CPU from text-decoder weights repacked for matrix-vector products.

A decode step multiplies a few rows (N = B * G) by every weight matrix once, so on a CPU it is bound by
how fast the weights stream from memory. XLA:CPU's matmul library streams a matrix fastest when it is
the left-hand operand in row-major [out, in] layout; with the flax layout [in, out] as the right-hand
operand it re-packs the whole matrix on every call (2-4x slower at N = 8). So this step:

  * keeps activations as columns, hidden [D, N], and computes every projection as W^T [out, in] @ h [in, N];
  * fuses q/k/v into one [(H + 2 KVH) Dh, D] matrix and gate/up into one [2 I, D] (fewer, larger ops),
    and splits every matrix into `_ROW_BLOCKS` blocks of rows that XLA multiplies on separate threads;
  * carries the cache as one key and one value buffer per layer, [N, KVH, S, Dh] (`LayerCache`: the
    model's [layers, N, S, KVH, Dh] transposed once per call), written in place: attention is then two
    batched matmuls over (row, kv head) that read the buffers as stored, with no per-step transpose or
    slice copy of the cache (which XLA emits for the model's layout).

The math is the model's (`TextModel` with a cache, float32 `steps._float32_logits` head); only the layouts and
the grouping of the matmuls differ, so logits agree to float32 rounding. Packing copies the decoder's
weights once (`pack_decoder`); the sampler keeps the packed copy while the parameters are unchanged.
Used for float32 models on CPU without a mesh; elsewhere the sampler runs the model's own decode step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from mmrag_jax.model.config import TextConfig
from mmrag_jax.model.kv_cache import KVCache
from mmrag_jax.model.qwen25vl import Qwen25VL
from mmrag_jax.model.text import mrope_cos_sin

__all__ = [
    "Blocks", "LayerCache", "PackedDecoder", "PackedLayer", "matvec", "pack_decoder", "packed_decode_step",
    "rotary_columns",
]

# Each matrix is split into this many blocks of rows, one matmul each: independent matmuls run on
# separate XLA:CPU threads, so two threads stream weights at once (on 2 cores: 5-10% off the step time
# with 2 blocks; 3 or 4 were slower than 2).
_ROW_BLOCKS = 2

Blocks = tuple[jax.Array, ...]  # consecutive row blocks of one [out, in] matrix


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedLayer:
  """One decoder layer, matrices as [out, in] row blocks. D hidden, H / KVH heads of Dh, I MLP width.

  input_norm, post_norm:  [D] RMSNorm weights.
  qkv:                    [(H + 2 KVH) Dh, D], rows q (H Dh), then k (KVH Dh), then v (KVH Dh).
  qkv_bias:               [(H + 2 KVH) Dh].
  out:                    [D, H Dh] attention output projection.
  gate_up:                [2 I, D], rows gate then up.
  down:                   [D, I].
  """

  input_norm: jax.Array
  qkv: Blocks
  qkv_bias: jax.Array
  out: Blocks
  post_norm: jax.Array
  gate_up: Blocks
  down: Blocks


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedDecoder:
  """The text decoder for decoding: embedding [V, D], layers, final norm [D], head [V, D] row blocks."""

  embedding: jax.Array
  layers: tuple[PackedLayer, ...]
  norm: jax.Array
  head: Blocks


def pack_decoder(model: Qwen25VL, row_blocks: int = _ROW_BLOCKS) -> PackedDecoder:
  """Copies the text decoder's weights into the decode layouts (jit it: one fused copy of the weights)."""
  text = model.language_model
  dtype = model.config.compute_dtype

  def blocks(matrix: jax.Array) -> Blocks:
    return tuple(jnp.array_split(matrix, row_blocks))

  stack = text.layers  # parameters [layers, ...]: layer i is slice i
  attention, mlp = stack.self_attn, stack.mlp

  def rows(i: int, *linears: nnx.Linear) -> Blocks:  # layer i's [in, out] kernels -> one [sum(out), in] matrix
    return blocks(jnp.concatenate([linear.kernel[i] for linear in linears], axis=1).astype(dtype).T)

  layers = []
  for i in range(model.config.text.num_hidden_layers):
    layers.append(PackedLayer(
        input_norm=stack.input_layernorm.weight[i].astype(dtype),
        qkv=rows(i, attention.q_proj, attention.k_proj, attention.v_proj),
        qkv_bias=jnp.concatenate([attention.q_proj.bias[i], attention.k_proj.bias[i],
                                  attention.v_proj.bias[i]]).astype(dtype),
        out=rows(i, attention.o_proj),
        post_norm=stack.post_attention_layernorm.weight[i].astype(dtype),
        gate_up=rows(i, mlp.gate_proj, mlp.up_proj),
        down=rows(i, mlp.down_proj)))
  return PackedDecoder(embedding=text.embed_tokens.embedding[...].astype(dtype), layers=tuple(layers),
                       norm=text.norm.weight[...].astype(dtype), head=blocks(model.head_weight().T))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerCache:
  """The KV cache as one buffer pair per layer (the loop carry of the packed decode).

  keys, values:  per layer [N, KVH, S, Dh].
  valid, index, rope_deltas: as in `KVCache`.
  """

  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  valid: jax.Array
  index: jax.Array
  rope_deltas: jax.Array

  @classmethod
  def from_cache(cls, cache: KVCache) -> LayerCache:
    """From [layers, N, S, KVH, Dh] buffers (one transposed copy)."""
    split = lambda x: tuple(layer.transpose(0, 2, 1, 3) for layer in x)
    return cls(keys=split(cache.k), values=split(cache.v), valid=cache.valid, index=cache.index,
               rope_deltas=cache.rope_deltas)

  def to_cache(self) -> KVCache:
    """Back to [layers, N, S, KVH, Dh] buffers."""
    stack = lambda buffers: jnp.stack(buffers).transpose(0, 1, 3, 2, 4)
    return KVCache(k=stack(self.keys), v=stack(self.values), valid=self.valid, index=self.index,
                   rope_deltas=self.rope_deltas)


def _rms_norm_columns(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  """RMSNorm of every column of x [D, N] (float32), scaled by weight [D]."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=0, keepdims=True) + eps) * weight[:, None]


def matvec(weight: Blocks, columns: jax.Array) -> jax.Array:
  """weight [out, in] (row blocks) @ columns [in, N] -> [out, N]."""
  return jnp.concatenate([jax.lax.dot_general(block, columns, (((1,), (0,)), ((), ()))) for block in weight])


def _rotate_columns(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotary embedding of x [..., Dh, N] with cos, sin [Dh, N] (rotate-half pairing along Dh)."""
  first, second = jnp.split(x, 2, axis=-2)
  return x * cos + jnp.concatenate([-second, first], axis=-2) * sin


def _attend(queries: jax.Array, keys: jax.Array, values: jax.Array, valid: jax.Array, scale: float) -> jax.Array:
  """Grouped-query attention of one token per row over the layer's cache.

  queries: [N, KVH, G, Dh]; keys, values: [N, KVH, S, Dh]; valid: [N, S] bool. Returns [N, KVH, G, Dh].
  """
  scores = jnp.einsum("nkgd,nksd->nkgs", queries, keys) * scale
  scores = jnp.where(valid[:, None, None, :], scores, -jnp.inf)  # the slot just written is always valid
  return jnp.einsum("nkgs,nksd->nkgd", jax.nn.softmax(scores, axis=-1), values)


def rotary_columns(config: TextConfig, first_positions: jax.Array, steps: int) -> tuple[jax.Array, jax.Array]:
  """Rotary cos, sin [T, Dh, N] of the next T tokens of every row.

  first_positions: [N] int, each row's next position (`KVCache.next_positions`); a row's position grows
  by one per token, on all three M-RoPE axes (as in `decode_hidden`). Computed once before the loop:
  inside it XLA fuses the cos/sin into every consumer and recomputes them per element.
  """
  positions = first_positions[:, None] + jnp.arange(steps, dtype=first_positions.dtype)  # [N, T]
  cos, sin = mrope_cos_sin(jnp.broadcast_to(positions[None], (3, *positions.shape)), head_dim=config.head_dim,
                           theta=config.rope_theta, mrope_section=config.mrope_section, dtype=jnp.float32)
  return cos.transpose(1, 2, 0), sin.transpose(1, 2, 0)


def packed_decode_step(packed: PackedDecoder, config: TextConfig, tokens: jax.Array, cache: LayerCache,
                       cos: jax.Array, sin: jax.Array) -> tuple[jax.Array, LayerCache]:
  """Feeds one token per row: tokens [N] int -> next-token logits [N, V] float32 and the updated cache.

  cos, sin: [Dh, N], the rotary of this token's positions (`rotary_columns`). Same positions, mask and
  slot as `decode_hidden`: the token goes to slot `cache.index` and attends to every valid slot, itself
  included.
  """
  rows = tokens.shape[0]
  heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
  group, width = heads // kv_heads, config.intermediate_size
  valid = jax.lax.dynamic_update_slice(cache.valid, jnp.ones((rows, 1), bool), (0, cache.index))

  hidden = packed.embedding[tokens].T  # [D, N]
  keys, values = list(cache.keys), list(cache.values)
  for i, layer in enumerate(packed.layers):
    qkv = matvec(layer.qkv, _rms_norm_columns(hidden, layer.input_norm, config.rms_norm_eps))
    qkv = qkv + layer.qkv_bias[:, None]
    q = _rotate_columns(qkv[:heads * head_dim].reshape(kv_heads, group, head_dim, rows), cos, sin)
    k = _rotate_columns(qkv[heads * head_dim:(heads + kv_heads) * head_dim].reshape(kv_heads, head_dim, rows),
                        cos, sin)
    v = qkv[(heads + kv_heads) * head_dim:].reshape(kv_heads, head_dim, rows)
    slot = (0, 0, cache.index, 0)
    keys[i] = jax.lax.dynamic_update_slice(keys[i], k.transpose(2, 0, 1)[:, :, None], slot)
    values[i] = jax.lax.dynamic_update_slice(values[i], v.transpose(2, 0, 1)[:, :, None], slot)
    attended = _attend(q.transpose(3, 0, 1, 2), keys[i], values[i], valid, head_dim**-0.5)  # [N, KVH, G, Dh]
    hidden = hidden + matvec(layer.out, attended.transpose(1, 2, 3, 0).reshape(heads * head_dim, rows))
    gate_up = matvec(layer.gate_up, _rms_norm_columns(hidden, layer.post_norm, config.rms_norm_eps))
    hidden = hidden + matvec(layer.down, jax.nn.silu(gate_up[:width]) * gate_up[width:])

  logits = matvec(packed.head, _rms_norm_columns(hidden, packed.norm, config.rms_norm_eps))  # [V, N]
  # The barrier keeps the head a [V, D] @ [D, N] product: folded into its consumer's transpose, XLA
  # would turn it into an [N, D] @ [D, V] product that its matmul library does not take (10x slower).
  logits = jax.lax.optimization_barrier(logits).astype(jnp.float32).T
  return logits, LayerCache(keys=tuple(keys), values=tuple(values), valid=valid, index=cache.index + 1,
                            rope_deltas=cache.rope_deltas)
