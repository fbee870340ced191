"""The Qwen2.5-VL text decoder: a Qwen2 transformer with multimodal rotary positions (M-RoPE).

Pre-norm blocks: RMSNorm -> GQA self-attention (q/k/v with bias, o without) -> residual -> RMSNorm ->
SwiGLU MLP (no biases) -> residual; a final RMSNorm. Attribute names mirror the Hugging Face modules.

The layers are one `_DecoderLayer` whose parameters are stacked, [layers, ...] (logical axis 'layers'),
and the forward pass is a `jax.lax.scan` over that axis: XLA compiles one layer body, not
`num_hidden_layers` copies of it, so compile time does not grow with depth. (XLA's `cost_analysis()`
counts a loop body once: a compiled program's FLOPs and bytes include one layer, not all of them.)

The decoder runs in these modes with one code path per layer:
  * plain: keys/values are the sequence's own, mask [B, L, L];
  * cached: new keys/values are written into per-layer buffers [layers, B, S, KVH, Dh] at slot
    `write_index` and queries attend over the whole buffer, mask [B, T, S]; `step` is its one-token form;
  * shared prefix: `shared_prefix` runs B prefixes and the G rows continuing each of them (the G
    completions of a GRPO group) as one sequence per prefix, each row attending to its prefix's keys and
    its own: the prompt runs once per group, in the forward and the backward pass.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmrag_jax.model.config import Qwen25VLConfig
from mmrag_jax.model.layers import (DEFAULT_KERNEL_INIT, RMSNorm, apply_rotary, attention, attention_with_new_slot,
                                    linear, logical_partitioning, shared_prefix_attention, stacked_modules)
from mmrag_jax.parallel import constrain

__all__ = ["KVBuffers", "TextModel", "causal_padding_mask", "mrope_cos_sin", "rotary_inv_freq"]

KVBuffers = tuple[jax.Array, jax.Array]  # (k, v), each [layers, B, S, KVH, Dh]


def rotary_inv_freq(dim: int, theta: float) -> np.ndarray:
  """Rotary frequencies 1 / theta^(2i / dim), i < dim / 2, as float32 [dim / 2] on the host.

  Computed in float64 and rounded once: each entry is the float32 nearest the exact value on every CPU
  (only a float64 near-tie, odds ~2^-28 per entry, could round another way under another libm). A float32
  `pow` is good to an ulp or two and differs between CPUs, and at positions ~1e4 one ulp of a frequency
  moves an angle by ~1e-3. Host numpy, not jnp: inside jit XLA would constant-fold the power its own way.
  """
  exponents = np.arange(0, dim, 2, dtype=np.float64) / dim
  return (1.0 / np.float64(theta) ** exponents).astype(np.float32)


def mrope_cos_sin(positions: jax.Array, *, head_dim: int, theta: float, mrope_section: tuple[int, ...],
                  dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
  """Rotary cos/sin for M-RoPE positions.

  Frequency slot i of the head_dim / 2 slots rotates by the t-, h- or w-position according to
  `mrope_section` (e.g. (16, 24, 24): slots 0-15 t, 16-39 h, 40-63 w); angles are duplicated to head_dim
  for rotate-half pairing. Angles position * inv_freq (`rotary_inv_freq`), cos and sin in float32,
  then cast to `dtype`.

  positions: [3, B, T] int; returns cos, sin [B, T, head_dim].
  """
  if sum(mrope_section) != head_dim // 2:
    raise ValueError(f"mrope_section {tuple(mrope_section)} must sum to head_dim / 2 = {head_dim // 2}")
  inv_freq = rotary_inv_freq(head_dim, theta)
  slot_axis = np.repeat(np.arange(len(mrope_section)), mrope_section)  # [Dh/2] in {0, 1, 2}
  slot_positions = jnp.moveaxis(positions, 0, -1)[..., slot_axis]  # [B, T, Dh/2]
  angles = slot_positions.astype(jnp.float32) * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def causal_padding_mask(attention_mask: jax.Array) -> jax.Array:
  """Attention mask [B, L, L] (True = may attend) for a padded batch.

  Query i sees key j iff j <= i and key j is real. attention_mask: [B, L], 1 real / 0 pad. Left-padded
  example, one pad then three tokens (rows = queries, columns = keys):

      . . . .     <- the pad row sees nothing (its output is ignored)
      . x . .
      . x x .
      . x x x
  """
  length = attention_mask.shape[-1]
  causal = jnp.tril(jnp.ones((length, length), dtype=bool))
  return causal[None] & (attention_mask[:, None, :] != 0)


class _TextAttention(nnx.Module):
  """Grouped-query attention with M-RoPE; kv head j serves query heads j*g ... (j+1)*g - 1."""

  def __init__(self, config: Qwen25VLConfig, *, rngs: nnx.Rngs):
    t = config.text
    self.num_heads, self.num_kv_heads, self.head_dim = t.num_attention_heads, t.num_key_value_heads, t.head_dim
    self.query_chunk = config.attention_query_chunk
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_attention_heads={self.num_heads} is not a multiple of "
                       f"num_key_value_heads={self.num_kv_heads}")
    kw = dict(dtype=config.compute_dtype, param_dtype=config.storage_dtype, rngs=rngs)
    q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
    self.q_proj = linear(t.hidden_size, q_dim, use_bias=True, axes=("embed", "q_heads"), **kw)
    self.k_proj = linear(t.hidden_size, kv_dim, use_bias=True, axes=("embed", "kv_heads"), **kw)
    self.v_proj = linear(t.hidden_size, kv_dim, use_bias=True, axes=("embed", "kv_heads"), **kw)
    self.o_proj = linear(q_dim, t.hidden_size, use_bias=False, axes=("q_heads", "embed"), **kw)

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array, *,
               cache: KVBuffers | None = None, layer_index: int | jax.Array = 0,
               write_index: jax.Array | None = None) -> tuple[jax.Array, KVBuffers | None]:
    """x: [B, T, D]; cos, sin: [B, T, Dh]; mask: [B, T, T] (plain) or [B, T, S] (cached).

    With `cache`, this layer's new keys/values go to slot `write_index` of buffer row `layer_index`;
    returns the output [B, T, D] and the updated buffers (None without a cache).
    """
    batch, steps, _ = x.shape
    q, k, v = self._qkv(x, cos, sin)
    if cache is not None:
      cache_k, cache_v = cache
      start = (layer_index, 0, write_index, 0, 0)
      # Writing into the full buffer (not a per-layer copy) lets XLA update a donated cache in place.
      cache_k = jax.lax.dynamic_update_slice(cache_k, k[None].astype(cache_k.dtype), start)
      cache_v = jax.lax.dynamic_update_slice(cache_v, v[None].astype(cache_v.dtype), start)
      k, v, cache = cache_k[layer_index], cache_v[layer_index], (cache_k, cache_v)
    # `attention` groups query heads as (kv_head, group), i.e. repeat-interleave semantics, and runs the
    # softmax in float32.
    out = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, self.head_dim**-0.5,
                    query_chunk=self.query_chunk)
    return self._out(out), cache

  def shared_prefix(self, x: jax.Array, cos: jax.Array, sin: jax.Array, prefix_mask: jax.Array, mask: jax.Array,
                    prefix_valid: jax.Array, prefix_length: int) -> jax.Array:
    """Prefixes and the rows that continue them in one pass.

    x: [B, Lp + G T, D], per prefix its Lp tokens, then the T tokens of each of its G rows; cos, sin alike;
    prefix_mask: [B, Lp, Lp] the prefixes' own (causal) mask; mask: [N = B G, T, T] over each row's own keys;
    prefix_valid: [B, Lp] bool, the real prefix keys. The prefix tokens attend among themselves, each row's
    tokens to its prefix and then its own (`shared_prefix_attention`): the math of `__call__` on every
    concatenated row [prefix, own], with the prefix's projections computed once for its G rows.
    """
    prefixes, rows, steps = x.shape[0], mask.shape[0], mask.shape[-1]
    q, k, v = self._qkv(x, cos, sin)
    per_row = lambda a: a[:, prefix_length:].reshape(rows, steps, *a.shape[2:])
    prefix_k, prefix_v = k[:, :prefix_length], v[:, :prefix_length]
    scale = self.head_dim**-0.5
    out_prefix = attention(q[:, :prefix_length], prefix_k, prefix_v, prefix_mask, scale, query_chunk=self.query_chunk)
    out_rows = shared_prefix_attention(per_row(q), prefix_k, prefix_v, prefix_valid, per_row(k), per_row(v), mask,
                                       scale, query_chunk=self.query_chunk)
    return self._out(jnp.concatenate([out_prefix, out_rows.reshape(prefixes, -1, *out_rows.shape[2:])], axis=1))

  def step(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array, k_cache: jax.Array,
           v_cache: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """One decode step over this layer's cache slice, which it only reads.

    x: [B, 1, D]; cos, sin: [B, 1, Dh]; mask: [B, 1, S] over the cached slots; k_cache, v_cache: [B, S, KVH, Dh].
    Returns the output [B, 1, D] and this step's (k, v) [B, 1, KVH, Dh] (rotary applied) for the caller to
    write into a free slot (`attention_with_new_slot`).
    """
    q, k, v = self._qkv(x, cos, sin)
    out = attention_with_new_slot(q, k_cache.astype(q.dtype), v_cache.astype(q.dtype), mask, k, v,
                                  self.head_dim**-0.5)
    return self._out(out), (k, v)

  def _qkv(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x [B, T, D] -> q [B, T, H, Dh], k and v [B, T, KVH, Dh], rotary applied to q and k."""
    batch, steps, _ = x.shape
    heads = ("batch", "length", "q_heads", None)
    kv_heads = ("batch", "length", "kv_heads", None)
    q = constrain(self.q_proj(x).reshape(batch, steps, self.num_heads, self.head_dim), heads)
    k = constrain(self.k_proj(x).reshape(batch, steps, self.num_kv_heads, self.head_dim), kv_heads)
    v = constrain(self.v_proj(x).reshape(batch, steps, self.num_kv_heads, self.head_dim), kv_heads)
    return (apply_rotary(q, cos[:, :, None, :], sin[:, :, None, :]),
            apply_rotary(k, cos[:, :, None, :], sin[:, :, None, :]), v)

  def _out(self, out: jax.Array) -> jax.Array:
    """Attention output [B, T, H, Dh] -> [B, T, D]."""
    batch, steps = out.shape[:2]
    return self.o_proj(constrain(out.reshape(batch, steps, self.num_heads * self.head_dim),
                                 ("batch", "length", "q_heads")))


class _TextMLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

  def __init__(self, config: Qwen25VLConfig, *, rngs: nnx.Rngs):
    t = config.text
    kw = dict(use_bias=False, dtype=config.compute_dtype, param_dtype=config.storage_dtype, rngs=rngs)
    self.gate_proj = linear(t.hidden_size, t.intermediate_size, axes=("embed", "mlp"), **kw)
    self.up_proj = linear(t.hidden_size, t.intermediate_size, axes=("embed", "mlp"), **kw)
    self.down_proj = linear(t.intermediate_size, t.hidden_size, axes=("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, T, D] -> [B, T, D]."""
    hidden = ("batch", "length", "mlp")
    return self.down_proj(constrain(jax.nn.silu(self.gate_proj(x)), hidden) * constrain(self.up_proj(x), hidden))


class _DecoderLayer(nnx.Module):
  """One pre-norm decoder block (`TextModel` holds all of them as one, stacked: `_stacked_layers`)."""

  def __init__(self, config: Qwen25VLConfig, *, rngs: nnx.Rngs):
    t = config.text
    norm_kw = dict(eps=t.rms_norm_eps, dtype=config.compute_dtype, param_dtype=config.storage_dtype, rngs=rngs)
    self.input_layernorm = RMSNorm(t.hidden_size, **norm_kw)
    self.self_attn = _TextAttention(config, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(t.hidden_size, **norm_kw)
    self.mlp = _TextMLP(config, rngs=rngs)

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array, *,
               cache: KVBuffers | None = None, layer_index: int | jax.Array = 0,
               write_index: jax.Array | None = None) -> tuple[jax.Array, KVBuffers | None]:
    """x: [B, T, D] -> ([B, T, D], updated cache); see `_TextAttention` for the other arguments.

    Under an `activation_mesh` the residual stream, q / k / v, the attention output and the MLP hidden
    states are pinned to rows over the batch axes (heads and MLP over 'tensor'), so FSDP gathers weights,
    never activations."""
    x = constrain(x, ("batch", "length", None))
    attn_out, cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache=cache,
                                     layer_index=layer_index, write_index=write_index)
    x = x + attn_out
    return x + self.mlp(self.post_attention_layernorm(x)), cache

  def shared_prefix(self, x: jax.Array, cos: jax.Array, sin: jax.Array, prefix_mask: jax.Array, mask: jax.Array,
                    prefix_valid: jax.Array, prefix_length: int) -> jax.Array:
    """The block on prefixes and their rows, x [B, Lp + G T, D]; see `_TextAttention.shared_prefix`."""
    x = constrain(x, ("batch", "length", None))
    x = x + self.self_attn.shared_prefix(self.input_layernorm(x), cos, sin, prefix_mask, mask, prefix_valid,
                                         prefix_length)
    return x + self.mlp(self.post_attention_layernorm(x))

  def step(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array, k_cache: jax.Array,
           v_cache: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """One decode step: x [B, 1, D] -> ([B, 1, D], this step's (k, v)); see `_TextAttention.step`."""
    attn_out, new_kv = self.self_attn.step(self.input_layernorm(x), cos, sin, mask, k_cache, v_cache)
    x = x + attn_out
    return x + self.mlp(self.post_attention_layernorm(x)), new_kv


def _stacked_layers(config: Qwen25VLConfig, *, rngs: nnx.Rngs) -> _DecoderLayer:
  """`num_hidden_layers` decoder layers as one `_DecoderLayer` whose parameters are [layers, ...].

  Each layer draws its own initial weights (split RNG streams); the leading dim of every parameter
  carries the logical axis name 'layers', e.g. q_proj.kernel [layers, D, H * Dh] ('layers', 'embed',
  'q_heads'). Layer i is the slice [i] of every parameter.
  """
  return stacked_modules(lambda layer_rngs: _DecoderLayer(config, rngs=layer_rngs), config.text.num_hidden_layers,
                         rngs)


class TextModel(nnx.Module):
  """Token embedding, decoder layers (stacked, see `_stacked_layers`) and final norm (no head: `Qwen25VL`
  owns it)."""

  def __init__(self, config: Qwen25VLConfig, *, rngs: nnx.Rngs):
    t = config.text
    self.config = config
    self.embed_tokens = nnx.Embed(
        t.vocab_size, t.hidden_size, dtype=config.compute_dtype, param_dtype=config.storage_dtype,
        embedding_init=logical_partitioning(DEFAULT_KERNEL_INIT, ("vocab", "embed")), rngs=rngs)
    self.layers = _stacked_layers(config, rngs=rngs)
    self.norm = RMSNorm(t.hidden_size, eps=t.rms_norm_eps, dtype=config.compute_dtype,
                        param_dtype=config.storage_dtype, rngs=rngs)

  def rotary(self, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """positions [3, B, T] -> cos, sin [B, T, Dh] in the compute dtype."""
    t = self.config.text
    return mrope_cos_sin(positions, head_dim=t.head_dim, theta=t.rope_theta, mrope_section=t.mrope_section,
                         dtype=self.config.compute_dtype)

  def __call__(self, embeds: jax.Array, positions: jax.Array, mask: jax.Array, *,
               cache: KVBuffers | None = None,
               write_index: jax.Array | None = None) -> tuple[jax.Array, KVBuffers | None]:
    """Runs the decoder on input embeddings.

    embeds: [B, T, D]; positions: [3, B, T] M-RoPE positions; mask: [B, T, T] without a cache or
    [B, T, S] with one (True = may attend). cache: (k, v) buffers [layers, B, S, KVH, Dh] receiving this
    call's keys/values at slot `write_index` (int32 scalar). Returns the normed hidden states [B, T, D] and
    the updated buffers (None without a cache).
    """
    cos, sin = self.rotary(positions)
    x = embeds.astype(self.config.compute_dtype)
    graphdef, stacked = nnx.split(self.layers)  # every leaf [layers, ...]; the scan hands out slice i
    if cache is None:
      def plain(x: jax.Array, layer: nnx.State) -> tuple[jax.Array, None]:
        return nnx.merge(graphdef, layer)(x, cos, sin, mask)[0], None

      x, _ = self._scan(plain, x, stacked)
    else:
      def cached(carry: tuple[jax.Array, KVBuffers], layer: tuple[nnx.State, jax.Array]):
        (x, buffers), (state, index) = carry, layer
        x, buffers = nnx.merge(graphdef, state)(x, cos, sin, mask, cache=buffers, layer_index=index,
                                                write_index=write_index)
        return (x, buffers), None

      # The whole buffers ride in the carry and each layer writes its row in place (dynamic-update-slice),
      # so a donated cache is updated without a copy.
      indices = jnp.arange(self.config.text.num_hidden_layers, dtype=jnp.int32)
      unroll = True if self.config.unroll_layers else 1
      (x, cache), _ = jax.lax.scan(cached, (x, cache), (stacked, indices), unroll=unroll)
    return self.norm(x), cache

  def _scan(self, body: Any, carry: jax.Array, xs: Any) -> tuple[jax.Array, Any]:
    """scan over the stacked layers; with remat, each layer keeps only its inputs for the backward pass."""
    body = jax.checkpoint(body, prevent_cse=False) if self.config.remat else body
    return jax.lax.scan(body, carry, xs, unroll=True if self.config.unroll_layers else 1)

  def shared_prefix(self, prefix_embeds: jax.Array, prefix_positions: jax.Array, prefix_mask: jax.Array,
                    embeds: jax.Array, positions: jax.Array, mask: jax.Array, prefix_valid: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
    """Prefixes and the rows that continue them (e.g. a GRPO group's prompt and its G completions), in one
    pass over the layers.

    prefix_embeds: [B, Lp, D]; prefix_positions: [3, B, Lp]; prefix_mask: [B, Lp, Lp]; embeds: [N, T, D] of
    N = B G rows, row r continuing prefix r // G; positions: [3, N, T]; mask: [N, T, T] over the rows' own
    tokens; prefix_valid: [B, Lp] bool, the real prefix tokens. Returns the normed hidden states of the
    prefixes [B, Lp, D] and of the rows [N, T, D]: those of `__call__` on the prefixes and on the
    concatenated rows [prefix, own], while each prefix runs once for its G rows (its gradient sums over
    them). Each layer takes a prefix's tokens and its rows' tokens as one [Lp + G T] sequence, so every
    projection and MLP matmul covers both.
    """
    prefixes, prefix_length = prefix_embeds.shape[:2]
    rows, steps = embeds.shape[:2]
    together = lambda p, r: jnp.concatenate([p, r.reshape(prefixes, (rows // prefixes) * steps, *r.shape[2:])],
                                            axis=1)
    prefix_cos, prefix_sin = self.rotary(prefix_positions)
    cos, sin = self.rotary(positions)
    cos, sin = together(prefix_cos, cos), together(prefix_sin, sin)
    dtype = self.config.compute_dtype
    graphdef, stacked = nnx.split(self.layers)

    def one_layer(x: jax.Array, layer: nnx.State) -> tuple[jax.Array, None]:
      return nnx.merge(graphdef, layer).shared_prefix(x, cos, sin, prefix_mask, mask, prefix_valid,
                                                      prefix_length), None

    x, _ = self._scan(one_layer, together(prefix_embeds.astype(dtype), embeds.astype(dtype)), stacked)
    x = self.norm(x)
    return x[:, :prefix_length], x[:, prefix_length:].reshape(rows, steps, x.shape[-1])

  def step(self, embeds: jax.Array, positions: jax.Array, mask: jax.Array, cache: KVBuffers,
           write_index: jax.Array) -> tuple[jax.Array, KVBuffers]:
    """One decode step: every layer reads its cache slice as it was and attends it plus the new token.

    embeds: [B, 1, D]; positions: [3, B, 1]; mask: [B, 1, S] over the cached slots (the free slot
    `write_index` excluded); cache: (k, v) buffers [layers, B, S, KVH, Dh]. The layers' new keys / values
    go to slot `write_index` in one update after the scan (the buffers are scanned over, never written
    inside it). Returns the normed hidden states [B, 1, D] and the updated buffers.
    """
    cos, sin = self.rotary(positions)
    x = embeds.astype(self.config.compute_dtype)
    graphdef, stacked = nnx.split(self.layers)
    cache_k, cache_v = cache

    def one_layer(x: jax.Array, layer: tuple[nnx.State, jax.Array, jax.Array]):
      state, k_layer, v_layer = layer
      return nnx.merge(graphdef, state).step(x, cos, sin, mask, k_layer, v_layer)

    unroll = True if self.config.unroll_layers else 1
    x, (k_new, v_new) = jax.lax.scan(one_layer, x, (stacked, cache_k, cache_v), unroll=unroll)
    start = (0, 0, write_index, 0, 0)  # k_new, v_new: [layers, B, 1, KVH, Dh]
    cache = (jax.lax.dynamic_update_slice(cache_k, k_new.astype(cache_k.dtype), start),
             jax.lax.dynamic_update_slice(cache_v, v_new.astype(cache_v.dtype), start))
    return self.norm(x), cache
