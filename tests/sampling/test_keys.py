"""The RNG scheme: one key per (prompt id, sample index), one fold per step."""

from __future__ import annotations

import jax
import numpy as np

from mmrag_jax.sampling.keys import row_keys, step_keys


def key_data(keys) -> np.ndarray:
  return np.asarray(jax.random.key_data(keys))


def test_row_keys_fold_prompt_id_then_sample_index():
  key = jax.random.key(3)
  keys = row_keys(key, np.array([5, 9]), group_size=2)
  expected = [jax.random.fold_in(jax.random.fold_in(key, prompt), sample) for prompt in (5, 9) for sample in (0, 1)]
  np.testing.assert_array_equal(key_data(keys), np.stack([key_data(k) for k in expected]))
  step = step_keys(keys, 4)
  np.testing.assert_array_equal(key_data(step[3]), key_data(jax.random.fold_in(expected[3], 4)))


def test_raw_uint32_keys_are_accepted():
  typed = row_keys(jax.random.key(11), np.arange(3), group_size=2)
  raw = row_keys(jax.random.PRNGKey(11), np.arange(3), group_size=2)
  np.testing.assert_array_equal(key_data(raw), key_data(typed))
