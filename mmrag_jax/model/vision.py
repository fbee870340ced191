"""Qwen2.5-VL vision tower (ViT with 2-D rotary, window attention and a 2x2 patch merger).

Attention layout. The reference permutes patches into window order, runs variable-length attention
and un-permutes after the merger. Every op but attention acts on rows (or on the 4 rows of one merge
block, which the permutation keeps together), so this port never permutes: it stays in the original
patch order and expresses attention groups through integer indices from `VisionIndex`:

* window blocks: windows (<= S = 64 patches) are packed whole into [B, S] blocks on the host. Each
  block gathers its q/k/v rows, attends under a same-window mask, and each patch gathers its output
  back from its slot. Memory is O(B * S^2) = O(P * S): linear in the patch count, never [P, P].
* frame blocks (the few full-attention layers, 4 of 32): the same, with frames packed whole into
  [B, S] blocks of S >= the largest frame (1,024 patches at 448x448 px) under a same-frame mask, so
  images never attend to each other and memory is O(P * S), not O(P^2) over the whole batch.

Both are exact (no sliding window). Padding patches are in no window and no frame: their attention
output is 0, and they never touch real rows. Blocks are independent, so their dim shards over the
data-parallel chips like a batch dim.
Masked scores use the most negative finite float, keeping every row of the softmax finite.

Depth. The blocks are stacked like the decoder's layers (parameters [layers, ...], block i = slice [i]) and
run under `jax.lax.scan`: XLA compiles one window block and one full block, not `depth` (32) copies, so
compile time does not grow with depth. See `VisionTower` for the scan layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mmrag_jax.model.config import VisionConfig
from mmrag_jax.model.layers import RMSNorm, apply_rotary, linear, stacked_modules
from mmrag_jax.model.text import rotary_inv_freq
from mmrag_jax.model.vision_index import AttentionBlocks, VisionIndex
from mmrag_jax.parallel import constrain

__all__ = ["VISION_ROPE_THETA", "VisionTower", "block_runs", "full_attention_period", "vision_rotary"]

# The reference's vision rotary base (`rope_theta` of its axial rotary); not in config.json.
VISION_ROPE_THETA = 10000.0


def vision_rotary(position_ids: jax.Array, head_dim: int,
                  dtype: jnp.dtype = jnp.float32) -> tuple[jax.Array, jax.Array]:
  """cos, sin [P, head_dim] of the 2-D rotary for patch coordinates `position_ids` [P, 2].

  head_dim / 4 frequencies 1 / theta^(2i / (head_dim/2)) (`rotary_inv_freq`: float32, as the reference);
  angles [h*f, w*f] are concatenated and duplicated to head_dim (rotate-half layout). `dtype` is the
  precision of angles, cos and sin: float32, or wider when the model computes in float64.
  """
  rotary_dim = head_dim // 2
  inv_freq = rotary_inv_freq(rotary_dim, VISION_ROPE_THETA)
  angles = position_ids.astype(dtype)[:, :, None] * jnp.asarray(inv_freq, dtype)  # [P, 2, F]
  angles = angles.reshape(angles.shape[0], -1)  # [P, 2F]: h angles then w angles
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def _masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
  """Softmax attention over keys where `mask`; scores and softmax in float32 (or wider inputs' dtype).

  q: [..., Lq, H, D], k/v: [..., Lk, H, D], mask: [..., Lq, Lk] bool -> [..., Lq, H, D] in v.dtype.
  """
  score_dtype = jnp.promote_types(jnp.float32, q.dtype)
  scores = jnp.einsum("...qhd,...khd->...hqk", q, k, preferred_element_type=score_dtype) * scale
  scores = jnp.where(mask[..., None, :, :], scores, jnp.finfo(score_dtype).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("...hqk,...khd->...qhd", probs, v)


def _block_attention(q: jax.Array, k: jax.Array, v: jax.Array, blocks: AttentionBlocks, scale: float) -> jax.Array:
  """Attention within the groups of `blocks` (windows or frames): q/k/v [P, H, D] -> [P, H, D]; rows in no
  group get 0. Each [S, S] block gathers its rows, attends under a same-group mask, and every row
  gathers its output back from its slot."""
  num_blocks, slots = blocks.patches.shape
  ids = blocks.ids
  same_group = (ids[:, :, None] == ids[:, None, :]) & (ids[:, None, :] >= 0)  # [B, S, S]
  gather = lambda x: constrain(x[blocks.patches], ("vis_blocks", None, "vis_heads", None))  # [B, S, H, D]
  out = _masked_attention(gather(q), gather(k), gather(v), same_group, scale)
  out = out.reshape(num_blocks * slots, *out.shape[2:])
  # Padding patches point at slot B * S, past the end: their output is 0.
  return jnp.take(out, blocks.slots, axis=0, mode="fill", fill_value=0)


class _VisionAttention(nnx.Module):
  """Fused qkv projection ([q|k|v], head-major), 2-D rotary, exact window/segment attention, proj."""

  def __init__(self, config: VisionConfig, *, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
    d = config.hidden_size
    self.num_heads = config.num_heads
    self.head_dim = config.head_dim
    self.qkv = linear(d, 3 * d, use_bias=True, axes=("vis_embed", "vis_qkv"), dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)
    self.proj = linear(d, d, use_bias=True, axes=("vis_heads", "vis_embed"), dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array], index: VisionIndex,
               full: bool) -> jax.Array:
    """x: [P, Dv], rope: cos/sin [P, head_dim] float32 -> [P, Dv]."""
    p = x.shape[0]
    q, k, v = (constrain(a, ("vis_rows", "vis_heads", None))
               for a in jnp.moveaxis(self.qkv(x).reshape(p, 3, self.num_heads, self.head_dim), 1, 0))
    cos, sin = (r[:, None, :] for r in rope)
    # Rotary in the rope precision (>= float32) whatever the compute dtype, as the reference upcasts q, k.
    q = apply_rotary(q.astype(cos.dtype), cos, sin).astype(v.dtype)
    k = apply_rotary(k.astype(cos.dtype), cos, sin).astype(v.dtype)
    scale = self.head_dim**-0.5
    out = _block_attention(q, k, v, index.frames if full else index.windows, scale)
    return self.proj(constrain(out.reshape(p, -1), ("vis_rows", "vis_heads")))


class _VisionMLP(nnx.Module):
  """SwiGLU with biases: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: VisionConfig, *, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate_proj = linear(d, f, axes=("vis_embed", "vis_mlp"), **kw)
    self.up_proj = linear(d, f, axes=("vis_embed", "vis_mlp"), **kw)
    self.down_proj = linear(f, d, axes=("vis_mlp", "vis_embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [P, Dv] -> [P, Dv]."""
    hidden = ("vis_rows", "vis_mlp")
    return self.down_proj(constrain(jax.nn.silu(self.gate_proj(x)), hidden) * constrain(self.up_proj(x), hidden))


class _VisionBlock(nnx.Module):
  """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

  def __init__(self, config: VisionConfig, *, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
    norm = dict(eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = RMSNorm(config.hidden_size, **norm)
    self.norm2 = RMSNorm(config.hidden_size, **norm)
    self.attn = _VisionAttention(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.mlp = _VisionMLP(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array], index: VisionIndex,
               full: bool) -> jax.Array:
    """x: [P, Dv] -> [P, Dv]; under an `activation_mesh` rows stay over the batch axes (see `constrain`)."""
    x = constrain(x, ("vis_rows", None))
    x = x + self.attn(self.norm1(x), rope, index, full)
    return x + self.mlp(self.norm2(x))


class _PatchEmbed(nnx.Module):
  """The Conv3d with stride == kernel, as a dense matmul over flattened (C, T, P, P) rows."""

  def __init__(self, config: VisionConfig, *, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
    self.proj = linear(config.patch_dim, config.hidden_size, use_bias=False, axes=("vis_patch", "vis_embed"),
                       dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    """pixel_values: [P, patch_dim] -> [P, Dv]."""
    return self.proj(pixel_values)


class _PatchMerger(nnx.Module):
  """RMSNorm, then each merge block of 4 consecutive patches -> fc2(gelu_erf(fc1(concat)))."""

  def __init__(self, config: VisionConfig, *, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
    merged = config.hidden_size * config.merge_unit
    self.ln_q = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype,
                        rngs=rngs)
    self.fc1 = linear(merged, merged, use_bias=True, axes=("vis_merge", "vis_mlp"), dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)
    self.fc2 = linear(merged, config.out_hidden_size, use_bias=True, axes=("vis_mlp", "vis_out"), dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)
    self.merged = merged

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [P, Dv] -> [P / 4, out_hidden_size]."""
    x = constrain(self.ln_q(x).reshape(-1, self.merged), ("vis_tokens", None))
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


def full_attention_period(depth: int, fullatt_block_indexes: Sequence[int]) -> int | None:
  """The period p when the full-attention blocks are exactly the last of every p blocks, else None.

  depth 32, (7, 15, 23, 31) -> 8: four groups of 7 window blocks then 1 full block. p >= 2 (all-full is
  one run, see `block_runs`); (1,) of depth 5 -> None (irregular).
  """
  groups = len(fullatt_block_indexes)
  if groups == 0 or depth % groups or depth // groups < 2:
    return None
  period = depth // groups
  return period if tuple(fullatt_block_indexes) == tuple(range(period - 1, depth, period)) else None


def block_runs(depth: int, fullatt_block_indexes: Sequence[int]) -> list[tuple[bool, int, int]]:
  """Maximal runs of consecutive blocks of one attention kind, as (full, start, stop).

  depth 5, (1,) -> [(False, 0, 1), (True, 1, 2), (False, 2, 5)].
  """
  full = set(fullatt_block_indexes)
  runs: list[tuple[bool, int, int]] = []
  for i in range(depth):
    if runs and runs[-1][0] == (i in full):
      runs[-1] = (runs[-1][0], runs[-1][1], i + 1)
    else:
      runs.append((i in full, i, i + 1))
  return runs


class VisionTower(nnx.Module):
  """Patch embedding -> `depth` blocks (window or full attention, stacked) -> patch merger.

  The blocks are one `_VisionBlock` whose parameters are [layers, ...] (logical axis 'layers'; block i is
  slice [i], `stacked_modules`), run under `jax.lax.scan` so XLA compiles one window and one full block body,
  not `depth` copies:
    * periodic full blocks (the last of every `full_attention_period` blocks, e.g. depth 32 with
      (7, 15, 23, 31): 4 groups of 8): an outer scan over the groups, parameters [G, period, ...], whose body
      scans the period - 1 window blocks, then runs the full one;
    * any other pattern: one scan per maximal run of same-kind blocks (`block_runs`), a plain call for a run
      of one.
  unroll_layers: a Python loop over the blocks instead (same math; XLA's cost analysis counts a loop body
  once, see `Qwen25VLConfig.unroll_layers`). remat: each block keeps only its input for the backward pass.
  """

  def __init__(self, config: VisionConfig, *, dtype: jnp.dtype | str = jnp.float32,
               param_dtype: jnp.dtype | str = jnp.float32, remat: bool = False, unroll_layers: bool = False,
               rngs: nnx.Rngs):
    kw = dict(dtype=jnp.dtype(dtype), param_dtype=jnp.dtype(param_dtype))
    self.config = config
    self.remat = remat
    self.unroll_layers = unroll_layers
    self.patch_embed = _PatchEmbed(config, **kw, rngs=rngs)
    self.blocks = stacked_modules(lambda block_rngs: _VisionBlock(config, **kw, rngs=block_rngs), config.depth, rngs)
    self.merger = _PatchMerger(config, **kw, rngs=rngs)

  def __call__(self, pixel_values: jax.Array, index: VisionIndex) -> jax.Array:
    """Image embeddings for the language model, in the original merged-token order.

    pixel_values: [P, patch_dim] patch rows (P = index.num_patches_padded; padding rows may hold anything
    finite). Returns [P / 4, out_hidden_size]; rows past the real merged tokens are padding.
    """
    if pixel_values.shape[0] != index.segment_ids.shape[0]:
      raise ValueError(f"pixel_values has {pixel_values.shape[0]} rows but the VisionIndex was built for "
                       f"{index.segment_ids.shape[0]} patches")
    x = self.patch_embed(pixel_values)
    rope = vision_rotary(jnp.asarray(index.position_ids), self.config.head_dim,
                         dtype=jnp.promote_types(jnp.float32, x.dtype))
    return self.merger(self._run_blocks(x, rope, index))

  def _run_blocks(self, x: jax.Array, rope: tuple[jax.Array, jax.Array], index: VisionIndex) -> jax.Array:
    """x [P, Dv] through the `depth` blocks -> [P, Dv]."""
    graphdef, stacked = nnx.split(self.blocks)  # every leaf [layers, ...]
    take = lambda start, stop=None: jax.tree.map(lambda a: a[start] if stop is None else a[start:stop], stacked)

    def body(full: bool):
      def block(x: jax.Array, state: nnx.State) -> tuple[jax.Array, None]:
        return nnx.merge(graphdef, state)(x, rope, index, full), None
      # remat: only each block's input is kept for the backward pass, the rest is recomputed.
      return jax.checkpoint(block, prevent_cse=False) if self.remat else block

    window, full = body(False), body(True)
    depth, full_indexes = self.config.depth, self.config.fullatt_block_indexes
    if self.unroll_layers:
      for i in range(depth):
        x, _ = (full if i in full_indexes else window)(x, take(i))
      return x
    period = full_attention_period(depth, full_indexes)
    if period is not None:
      def group(x: jax.Array, state: nnx.State) -> tuple[jax.Array, None]:
        x, _ = jax.lax.scan(window, x, jax.tree.map(lambda a: a[:-1], state))
        return full(x, jax.tree.map(lambda a: a[-1], state))

      groups = jax.tree.map(lambda a: a.reshape(depth // period, period, *a.shape[1:]), stacked)
      return jax.lax.scan(group, x, groups)[0]
    for is_full, start, stop in block_runs(depth, full_indexes):
      run = full if is_full else window
      x = run(x, take(start))[0] if stop - start == 1 else jax.lax.scan(run, x, take(start, stop))[0]
    return x
