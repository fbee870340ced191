"""Token log-probs and entropies from final hidden states, with the LM head applied chunk by chunk.

    hidden = model.hidden_states(inputs)                                    # [B, L, D]
    logprobs, entropy = chunked_logprobs(hidden, model.head_weight(), targets, temperature=0.7)

The [B, L, V] logits are never materialised: positions are processed in chunks whose [B, chunk, V]
logits are recomputed in the backward pass, so peak memory is about B * chunk_size * V floats.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["chunked_logprobs"]


def chunked_logprobs(hidden: jax.Array, head_weight: jax.Array, targets: jax.Array, *, temperature: float = 1.0,
                     chunk_size: int = 512) -> tuple[jax.Array, jax.Array]:
  """log softmax(hidden @ head_weight / temperature) at `targets`, and the entropy of that softmax.

  hidden: [B, L, D]; head_weight: [D, V]; targets: [B, L] int (e.g. the input ids shifted left by one).
  Returns log-probs [B, L] float32 (differentiable) and entropy [B, L] float32 in nats (gradient
  stopped: a metric). The head matmul accumulates in float32. Under jit an unused entropy is dead code
  and is not computed.
  """
  batch, length, dim = hidden.shape
  chunk = max(1, min(chunk_size, length))
  num_chunks = -(-length // chunk)
  pad = num_chunks * chunk - length
  hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(batch, num_chunks, chunk, dim).swapaxes(0, 1)
  targets = jnp.pad(targets.astype(jnp.int32), ((0, 0), (0, pad))).reshape(batch, num_chunks, chunk).swapaxes(0, 1)

  @jax.checkpoint  # keep only the chunk inputs for backward; the [B, chunk, V] logits are recomputed
  def chunk_stats(h: jax.Array, t: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = jnp.einsum("bcd,dv->bcv", h, w, preferred_element_type=jnp.float32) / temperature
    log_z = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0] - log_z
    probs = jax.lax.stop_gradient(jnp.exp(logits - log_z[..., None]))
    entropy = jax.lax.stop_gradient(log_z - jnp.sum(probs * logits, axis=-1))
    return picked, entropy

  logprobs, entropy = jax.lax.map(lambda ht: chunk_stats(*ht, head_weight), (hidden, targets))  # [C, B, chunk]
  unchunk = lambda x: x.swapaxes(0, 1).reshape(batch, num_chunks * chunk)[:, :length]
  return unchunk(logprobs), unchunk(entropy)
