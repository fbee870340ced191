"""What the benchmarks measure alike: median wall times, the machine's dense-matmul peak, and the matmul
FLOPs of a Qwen2.5-VL prefill forward."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mmrag_jax.model import Qwen25VLConfig

__all__ = ["matmul_peak", "median_seconds", "prefill_flops"]


def median_seconds(fn: Callable[[], object], runs: int) -> float:
  """Median wall seconds of `runs` calls of `fn` (which must block until its work is done)."""
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_peak(size: int, dtype: str, runs: int) -> float:
  """FLOP/s of a jitted [size, size] @ [size, size] matmul in `dtype` (float32 accumulation): the CPU
  analogue of a datasheet peak, measured in the run that uses it."""
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.random.normal(k, (size, size), jnp.float32).astype(dtype) for k in keys)
  matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  jax.block_until_ready(matmul(a, b))
  return 2.0 * size**3 / median_seconds(lambda: jax.block_until_ready(matmul(a, b)), max(runs, 5))


def prefill_flops(config: Qwen25VLConfig, tokens: int, grid: tuple[int, int, int]) -> float:
  """Matmul FLOPs of one forward over one row of `tokens` positions (logits at every position) holding one
  image of `grid` (t, h, w) patches, each multiply-add counted as 2.

  Text decoder, per position and layer: the q/k/v/o projections and the gated MLP, plus scores and
  weighted values against all `tokens` key positions (a dense masked attention computes them all). LM head
  at every position. Vision tower: the patch embedding, per block the fused qkv, the output projection and
  the gated MLP at every patch, scores and values within its attention group (a window of at most
  (window_size / patch_size)^2 patches, or the whole image in the full-attention blocks); the merger's two
  matmuls at every merged token. Norms, rotary, softmax and activations are not counted.
  """
  t, v = config.text, config.vision
  q_dim, kv_dim = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
  weights = t.hidden_size * (2 * q_dim + 2 * kv_dim) + 3 * t.hidden_size * t.intermediate_size
  text = t.num_hidden_layers * tokens * 2 * (weights + 2 * tokens * q_dim) + tokens * 2 * t.hidden_size * t.vocab_size

  frames, height, width = grid
  patches = frames * height * width
  d = v.hidden_size
  window_side = v.window_size // v.patch_size
  window = min(height, window_side) * min(width, window_side)
  full_blocks = len(v.fullatt_block_indexes)
  attention = 2 * 2 * patches * d * (full_blocks * height * width + (v.depth - full_blocks) * window)
  blocks = v.depth * patches * 2 * (4 * d * d + 3 * d * v.intermediate_size)
  embed = patches * 2 * v.patch_dim * d
  merged_width = d * v.merge_unit
  merger = patches // v.merge_unit * 2 * (merged_width * merged_width + merged_width * v.out_hidden_size)
  return float(text + attention + blocks + embed + merger)
