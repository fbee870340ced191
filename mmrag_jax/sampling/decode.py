"""The decode loop: one `lax.while_loop` of single-token steps, stopping rows independently.

Per step, for every row n of the N = B * G rows:
  1. draw token t from the method's processed distribution of the current logits (key fold_in(k_n, t)),
     with the suppressed ids (vision placeholders) removed from it;
  2. record it with two log-probs (float32, 0 on padding):
       policy_logprobs    log softmax(logits)[token]: the temperature-1, untruncated policy, i.e. what
                          `rl.policy.completion_logprobs` recomputes. The GRPO ratio uses these.
       sampling_logprobs  log softmax(processed logits)[token]: the distribution actually sampled from
                          (temperature, top-k/top-p, suppression; 0 for greedy);
  3. a row that emitted a stop id is done: it keeps its length and receives only pads afterwards;
  4. feed the tokens to the model for the next logits.

    step:      0   1   2   3   4          T = 5, stop id s
    row 0:     a   b   s   .   .          length 3, done        (. = pad, masked)
    row 1:     c   d   e   f   g          length 5, truncated

Token 0 comes from the prompt's logits, before the loop; each loop iteration is one model step (4, on
the previous token) then 1-3, so the loop runs at most T - 1 model steps and ends after T tokens or as
soon as every row is done. The logits are never carried across iterations. The KV cache is the loop
carry: the jitted loop takes it donated and returns it, so XLA updates the prompt's cache buffers in
place.

Model step: the model's own cached decoder (`decode_one`), or, given a `PackedDecoder`, the CPU step of
`packed_decoder.py` (same math, layouts that stream the weights faster; the cache is carried as one
buffer pair per layer and handed back as a `KVCache`). The log-probs are read off the logits at the
token (`token_log_softmax`: no [N, V] log-softmax is materialised); greedy decoding skips the sampling
one (it is 0).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mmrag_jax.model.kv_cache import KVCache
from mmrag_jax.model.qwen25vl import Qwen25VL
from mmrag_jax.parallel import DEFAULT_RULES, LogicalRules
from mmrag_jax.sampling.keys import step_keys
from mmrag_jax.sampling.methods import SamplingMethod, token_log_softmax
from mmrag_jax.sampling.packed_decoder import LayerCache, PackedDecoder, packed_decode_step, rotary_columns
from mmrag_jax.sampling.steps import decode_one

__all__ = ["DecodeSettings", "DecodeState", "decode_loop"]


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """Static decode settings: max_new_tokens T, the pad written after a stop, ids never sampled."""

  max_new_tokens: int
  pad_token_id: int
  suppressed_ids: tuple[int, ...] = ()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
  """Loop carry. N rows, T = max_new_tokens.

  step:               [] int32, tokens generated so far.
  tokens:             [N, T] int32, generated tokens, pad after a row's stop.
  policy_logprobs:    [N, T] float32, see module docstring (0 on padding).
  sampling_logprobs:  [N, T] float32.
  done:               [N] bool, True once the row emitted a stop id.
  lengths:            [N] int32, tokens generated per row, its stop token included.
  cache:              `KVCache` with N rows (a `LayerCache` inside the packed loop).
  """

  step: jax.Array
  tokens: jax.Array
  policy_logprobs: jax.Array
  sampling_logprobs: jax.Array
  done: jax.Array
  lengths: jax.Array
  cache: KVCache | LayerCache


def _suppress(logits: jax.Array, suppressed_ids: tuple[int, ...]) -> jax.Array:
  if not suppressed_ids:
    return logits
  # A constant mask (not a scatter into a copy of the logits): XLA fuses it into the sampling reductions.
  suppressed = np.zeros(logits.shape[-1], bool)
  suppressed[list(suppressed_ids)] = True
  return jnp.where(suppressed, -jnp.inf, logits)


def _emit(state: DecodeState, logits: jax.Array, keys: jax.Array, stop_ids: jax.Array, method: SamplingMethod,
          settings: DecodeSettings) -> DecodeState:
  """Samples, records and stops token number `state.step` from its logits [N, V] float32."""
  sampled, sampling = method.sample_with_logprob(step_keys(keys, state.step),
                                                 _suppress(logits, settings.suppressed_ids))
  policy = token_log_softmax(logits, sampled)
  tokens = jnp.where(state.done, settings.pad_token_id, sampled)
  zero = jnp.zeros_like(policy)
  column = lambda buffer, value: jax.lax.dynamic_update_slice(buffer, value[:, None], (0, state.step))
  stopped = jnp.any(tokens[:, None] == stop_ids[None, :], axis=-1)
  return dataclasses.replace(
      state,
      tokens=column(state.tokens, tokens),
      policy_logprobs=column(state.policy_logprobs, jnp.where(state.done, zero, policy)),
      sampling_logprobs=column(state.sampling_logprobs, jnp.where(state.done, zero, sampling)),
      lengths=state.lengths + (~state.done).astype(jnp.int32),
      done=state.done | stopped,
      step=state.step + 1,
  )


def decode_loop(model: Qwen25VL, logits: jax.Array, cache: KVCache, keys: jax.Array, stop_ids: jax.Array, *,
                method: SamplingMethod, settings: DecodeSettings, mesh: Mesh | None = None,
                weight_rules: LogicalRules = DEFAULT_RULES, packed: PackedDecoder | None = None) -> DecodeState:
  """Generates up to T tokens per row from the prompt's next-token logits [N, V] float32 and its cache.

  keys: [N] typed per-row keys (`row_keys`); stop_ids: [S] int32 (an argument, not static: changing the
  stop set does not recompile). The cache needs T - 1 free slots after the prompt. weight_rules: the rules
  the model's weights are laid out by on `mesh`, which place the cache (`steps.cache_shardings`). packed:
  `pack_decoder(model)` to run the packed CPU step instead of the model's (no mesh).
  Returns the final `DecodeState` (its cache included, so a donated cache can be updated in place).
  """
  rows, steps = logits.shape[0], settings.max_new_tokens
  if packed is None:
    carried = cache
    model_step = lambda tokens, c, position: decode_one(model, tokens, c, mesh, weight_rules)
  else:
    if mesh is not None:
      raise ValueError("the packed decode step runs without a mesh")
    carried, text = LayerCache.from_cache(cache), model.config.text
    cos, sin = rotary_columns(text, cache.next_positions(), steps)  # position t: generated token t
    model_step = lambda tokens, c, position: packed_decode_step(packed, text, tokens, c, cos[position],
                                                                sin[position])
  state = DecodeState(
      step=jnp.zeros((), jnp.int32), tokens=jnp.full((rows, steps), settings.pad_token_id, jnp.int32),
      policy_logprobs=jnp.zeros((rows, steps), jnp.float32), sampling_logprobs=jnp.zeros((rows, steps), jnp.float32),
      done=jnp.zeros((rows,), bool), lengths=jnp.zeros((rows,), jnp.int32), cache=carried)
  state = _emit(state, logits, keys, stop_ids, method, settings)

  def keep_going(s: DecodeState) -> jax.Array:
    return (s.step < steps) & ~jnp.all(s.done)

  def step(s: DecodeState) -> DecodeState:
    previous = s.step - 1
    last_tokens = jax.lax.dynamic_index_in_dim(s.tokens, previous, axis=1, keepdims=False)
    next_logits, next_cache = model_step(last_tokens, s.cache, previous)
    return _emit(dataclasses.replace(s, cache=next_cache), next_logits, keys, stop_ids, method, settings)

  final = jax.lax.while_loop(keep_going, step, state)
  if packed is not None:
    final = dataclasses.replace(final, cache=final.cache.to_cache())
  return final
