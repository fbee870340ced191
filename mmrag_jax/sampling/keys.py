"""The RNG scheme: one key per (prompt, sample), one fold per generated token.

    row key   k[b * G + g] = fold_in(fold_in(key, prompt_ids[b]), g)
    step key  fold_in(k[n], t)          for the t-th generated token of row n

A row's random stream depends only on the caller's key, its prompt id and its sample index, never on
its place in the batch, the batch size or the group layout: the same prompt id gives the same samples
whether the prompt is sampled alone, in another batch, or with its prefix shared or not (up to the
float rounding of the logits themselves). Pass stable prompt ids (e.g. the example's index in the
epoch) to get that; the default is the row index.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["row_keys", "step_keys"]


def row_keys(key: jax.Array, prompt_ids: np.ndarray | jax.Array, group_size: int) -> jax.Array:
  """Typed keys [B * G] for prompts `prompt_ids` [B] int, G = group_size samples each (prompt-major)."""
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)  # accept raw uint32 keys from jax.random.PRNGKey
  prompt_ids = jnp.asarray(prompt_ids, jnp.uint32)
  per_prompt = jax.vmap(jax.random.fold_in, (None, 0))(key, prompt_ids)  # [B]
  samples = jnp.arange(group_size, dtype=jnp.uint32)
  per_sample = jax.vmap(jax.vmap(jax.random.fold_in, (None, 0)), (0, None))(per_prompt, samples)  # [B, G]
  return per_sample.reshape(-1)


def step_keys(keys: jax.Array, step: jax.Array) -> jax.Array:
  """keys [N] typed, step [] int -> the keys [N] of generated token number `step`."""
  return jax.vmap(jax.random.fold_in, (0, None))(keys, step)
