"""Prefill + decode steps against a reference forward pass over the extended sequence."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from mmrag_jax.model import KVCache
from mmrag_jax.model.kv_cache import init_cache, repeat_rows

DECODE_STEPS = 8


def test_prefill_and_decode_steps_match_full_forward(hf_parity_model, flax_parity_model, parity_batch,
                                                     parity_reference_logits, parity_prefill, jitted_decoding,
                                                     torch_batch):
  prefill_logits, cache = parity_prefill
  cache = jax.tree.map(jnp.copy, cache)  # decode donates its cache; the fixture's stays intact
  real = parity_batch["attention_mask"].astype(bool)
  assert np.abs(np.asarray(prefill_logits) - parity_reference_logits)[real].max() <= 1e-4

  batch_size, length = parity_batch["input_ids"].shape
  appended = np.random.default_rng(5).integers(0, 400, (batch_size, DECODE_STEPS))
  extended = dict(parity_batch)
  extended["input_ids"] = np.concatenate([parity_batch["input_ids"], appended], axis=1)
  extended["attention_mask"] = np.concatenate([parity_batch["attention_mask"], np.ones_like(appended)], axis=1)
  extended["mm_token_type_ids"] = np.concatenate([parity_batch["mm_token_type_ids"], 0 * appended], axis=1)
  with torch.no_grad():
    reference = hf_parity_model(**torch_batch(extended)).logits.numpy()

  decode = jitted_decoding[1]
  worst = 0.0
  for step in range(DECODE_STEPS):
    logits, cache = decode(flax_parity_model, jnp.asarray(appended[:, step]), cache)
    worst = max(worst, float(np.abs(np.asarray(logits) - reference[:, length + step]).max()))
  print(f"decode steps: max |logits - reference| = {worst:.2e}")
  assert worst <= 1e-4
  assert int(cache.index) == length + DECODE_STEPS
  np.testing.assert_array_equal(np.asarray(cache.valid)[:, :length + DECODE_STEPS], extended["attention_mask"])


def test_prefill_cache_holds_prompt_slots_and_rope_deltas(parity_batch, parity_prefill):
  _, cache = parity_prefill
  length = parity_batch["input_ids"].shape[1]
  valid = np.asarray(cache.valid)
  np.testing.assert_array_equal(valid[:, :length], parity_batch["attention_mask"].astype(bool))
  assert not valid[:, length:].any()
  assert int(cache.index) == length
  # Each row's next position is its largest prompt position + 1. Text tokens (vision start/end included)
  # advance the position by 1, an image by the longer side of its merged grid.
  row0 = 3 + 1 + max(2, 3) + 1 + 2 + 1 + max(5, 6) + 1 + 4  # 3 text, image 2x3, 2 text, image 5x6, 4 text
  row1 = 5 + 1 + max(1, 1) + 1 + 1 + max(4, 4) + 1 + 6  # 5 text, image 1x1, image 4x4, 6 text
  np.testing.assert_array_equal(np.asarray(cache.next_positions()), [row0, row1])


def test_repeat_rows_copies_each_row_consecutively():
  cache = KVCache(k=jnp.arange(2 * 3).reshape(1, 2, 3, 1, 1).astype(jnp.float32),
                  v=-jnp.arange(2 * 3).reshape(1, 2, 3, 1, 1).astype(jnp.float32),
                  valid=jnp.array([[False, True, True], [True, True, True]]), index=jnp.asarray(3, jnp.int32),
                  rope_deltas=jnp.array([4, -2], jnp.int32))
  grouped = jax.jit(repeat_rows, static_argnums=1)(cache, 3)
  np.testing.assert_array_equal(grouped.k[0, :, :, 0, 0], np.repeat(np.arange(6).reshape(2, 3), 3, axis=0))
  np.testing.assert_array_equal(grouped.v[0, :, :, 0, 0], -np.repeat(np.arange(6).reshape(2, 3), 3, axis=0))
  np.testing.assert_array_equal(grouped.rope_deltas, [4, 4, 4, -2, -2, -2])
  np.testing.assert_array_equal(grouped.valid[:3], [[False, True, True]] * 3)
  assert int(grouped.index) == 3


def test_init_cache_shapes(tiny_config):
  cache = init_cache(tiny_config, batch_size=3, max_length=10)
  t = tiny_config.text
  assert cache.k.shape == cache.v.shape == (t.num_hidden_layers, 3, 10, t.num_key_value_heads, t.head_dim)
  assert cache.valid.shape == (3, 10) and not bool(cache.valid.any())
  assert cache.max_length == 10 and cache.batch_size == 3
