"""Key/value cache, prefill and single-token decode for left-padded batches.

Left padding aligns every row's last prompt token at slot L - 1, so all rows share one write slot per
step: prefill fills slots [0, L), decode step n writes slot L + n. Pad slots stay invalid forever. A
row's next M-RoPE position is `rope_deltas + (number of valid slots)`, the same on all three axes
(transformers' `generate` continues each axis from the last prompt token instead; the two agree
whenever a prompt ends with text, as chat prompts do).

    slots:   0   1   2   3   4   5   6 ...
    row 0:   p   p   a   b | x   y          (p = pad, | = end of prompt, x y = generated)
    row 1:   a   b   c   d | x   y

The cache is a plain pytree (batch on axis 1 of k/v, axis 0 of `valid` and `rope_deltas`), so it can
be donated to jit, carried through `lax.while_loop`, or widened by `repeat_rows` to share one prompt.
Slots past `max_length` are not checked inside jit: size the cache for prompt + generation.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from mmrag_jax.model.config import Qwen25VLConfig

if TYPE_CHECKING:
  from mmrag_jax.model.qwen25vl import ModelInputs, Qwen25VL

__all__ = ["KVCache", "decode_hidden", "decode_step", "init_cache", "prefill", "prefill_hidden", "repeat_rows"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """Decoder state between steps.

  k, v:         [layers, B, S, KVH, Dh] keys (rotary applied) and values, compute dtype.
  valid:        [B, S] bool, True where a slot holds a real token.
  index:        [] int32, the next slot to write.
  rope_deltas:  [B] int32, M-RoPE position minus real-token count for generated tokens.
  """

  k: jax.Array
  v: jax.Array
  valid: jax.Array
  index: jax.Array
  rope_deltas: jax.Array

  @property
  def max_length(self) -> int:
    return self.k.shape[2]

  @property
  def batch_size(self) -> int:
    return self.k.shape[1]

  def next_positions(self) -> jax.Array:
    """[B] int32 M-RoPE position of each row's next token."""
    return self.rope_deltas + jnp.sum(self.valid, axis=-1, dtype=jnp.int32)


def init_cache(config: Qwen25VLConfig, batch_size: int, max_length: int) -> KVCache:
  """An empty cache: zero buffers [layers, B, max_length, KVH, Dh] in the compute dtype, nothing valid."""
  t = config.text
  shape = (t.num_hidden_layers, batch_size, max_length, t.num_key_value_heads, t.head_dim)
  return KVCache(k=jnp.zeros(shape, config.compute_dtype), v=jnp.zeros(shape, config.compute_dtype),
                 valid=jnp.zeros((batch_size, max_length), bool), index=jnp.zeros((), jnp.int32),
                 rope_deltas=jnp.zeros((batch_size,), jnp.int32))


def prefill_hidden(model: "Qwen25VL", inputs: "ModelInputs", cache_size: int) -> tuple[jax.Array, KVCache]:
  """Runs the prompt into a fresh cache of `cache_size` slots (>= prompt length L).

  Returns the final hidden states [B, L, D] and the cache with slots [0, L) written. Callers that want
  their own head (e.g. float32 logits) start here; `prefill` applies the model's head.
  """
  batch, length = inputs.input_ids.shape
  if cache_size < length:
    raise ValueError(f"cache_size={cache_size} is smaller than the prompt length {length}")
  cache = init_cache(model.config, batch, cache_size)
  valid = jax.lax.dynamic_update_slice(cache.valid, inputs.attention_mask != 0, (0, 0))
  slots = jnp.arange(cache_size)
  # Query slot i sees valid key slots j <= i.
  mask = (slots[None, :length, None] >= slots[None, None, :]) & valid[:, None, :]  # [B, L, S]
  hidden, (k, v) = model.language_model(model.embed(inputs), inputs.positions, mask, cache=(cache.k, cache.v),
                                        write_index=jnp.zeros((), jnp.int32))
  cache = KVCache(k=k, v=v, valid=valid, index=jnp.asarray(length, jnp.int32),
                  rope_deltas=inputs.rope_deltas.astype(jnp.int32))
  return hidden, cache


def decode_hidden(model: "Qwen25VL", tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
  """Feeds one token per row. tokens: [B] int; returns final hidden states [B, D] and the updated cache."""
  positions = jnp.broadcast_to(cache.next_positions()[None, :, None], (3, cache.batch_size, 1))
  embeds = model.language_model.embed_tokens(tokens[:, None])
  # The layers attend the cached slots (cache.valid: the free slot is not valid yet) and the new token.
  hidden, (k, v) = model.language_model.step(embeds, positions, cache.valid[:, None, :], (cache.k, cache.v),
                                             cache.index)
  valid = jax.lax.dynamic_update_slice(cache.valid, jnp.ones((cache.batch_size, 1), bool), (0, cache.index))
  cache = KVCache(k=k, v=v, valid=valid, index=cache.index + 1, rope_deltas=cache.rope_deltas)
  return hidden[:, 0], cache


def prefill(model: "Qwen25VL", inputs: "ModelInputs", cache_size: int, *,
            all_logits: bool = False) -> tuple[jax.Array, KVCache]:
  """Runs the prompt and returns its logits and a cache of `cache_size` slots (>= prompt length L).

  Returns logits [B, V] of the last prompt slot (the next-token distribution of every row, since rows
  are left-padded), or [B, L, V] with `all_logits`; and the cache with slots [0, L) written.
  """
  hidden, cache = prefill_hidden(model, inputs, cache_size)
  return model.logits(hidden if all_logits else hidden[:, -1]), cache


def decode_step(model: "Qwen25VL", tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
  """Feeds one token per row. tokens: [B] int; returns next-token logits [B, V] and the updated cache."""
  hidden, cache = decode_hidden(model, tokens, cache)
  return model.logits(hidden), cache


def repeat_rows(cache: KVCache, repeats: int) -> KVCache:
  """Each row repeated `repeats` times in place (row b -> rows b*repeats ... b*repeats + repeats - 1).

  Shares one prefilled prompt among a group of samples: [.., B, ..] -> [.., B * repeats, ..].
  """
  return KVCache(k=jnp.repeat(cache.k, repeats, axis=1), v=jnp.repeat(cache.v, repeats, axis=1),
                 valid=jnp.repeat(cache.valid, repeats, axis=0), index=cache.index,
                 rope_deltas=jnp.repeat(cache.rope_deltas, repeats, axis=0))
