"""The packed CPU decode step against the model's own cached decode step, and the sampler's packed-weight reuse.

End to end, the packed loop is also checked by the greedy-vs-transformers test, by the full-forward
log-prob test and by the sharded test (a mesh runs the model's step, one device the packed one).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmrag_jax.model import Qwen25VL
from mmrag_jax.model.kv_cache import decode_step
from mmrag_jax.sampling import Greedy, Sampler
from mmrag_jax.sampling.packed_decoder import LayerCache, pack_decoder, packed_decode_step, rotary_columns

STEPS = 4


@pytest.fixture(scope="module")
def varied_model(model):
  """The test model with RMSNorm weights and q/k/v biases away from their initial ones and zeros."""
  varied = nnx.clone(model)
  rng = np.random.default_rng(11)
  text = varied.language_model
  layers = text.layers  # stacked: each weight below is [layers, D]
  norms = [text.norm, layers.input_layernorm, layers.post_attention_layernorm]
  biases = [p.bias for p in (layers.self_attn.q_proj, layers.self_attn.k_proj, layers.self_attn.v_proj)]
  for norm in norms:
    norm.weight[...] = jnp.asarray(rng.uniform(0.5, 1.5, norm.weight.shape), jnp.float32)
  for bias in biases:
    bias[...] = jnp.asarray(rng.normal(0.0, 0.1, bias.shape), jnp.float32)
  return varied


def test_packed_steps_give_the_model_decode_step_logits_and_cache(varied_model, prompt_inputs, make_config,
                                                                  reference_roundoff):
  """Equal up to float32 round-off: the packed step fuses q/k/v and gate/up, so its matmuls sum in other
  orders. The unit is the test model's relative logit round-off, scaled to each compared value."""
  model = varied_model
  sampler = Sampler(model, make_config(method=Greedy()))
  _, cache = sampler.prefill(prompt_inputs, group_size=2)
  rows = cache.batch_size
  fed = np.random.default_rng(3).integers(0, 400, (STEPS, rows))

  packed = nnx.jit(pack_decoder)(model)
  cos, sin = rotary_columns(model.config.text, cache.next_positions(), STEPS)
  packed_step = jax.jit(packed_decode_step, static_argnums=1)
  model_step = nnx.jit(decode_step)
  model_cache, layer_cache = cache, LayerCache.from_cache(cache)
  worst = 0.0
  for t in range(STEPS):
    expected, model_cache = model_step(model, jnp.asarray(fed[t]), model_cache)
    logits, layer_cache = packed_step(packed, model.config.text, jnp.asarray(fed[t]), layer_cache, cos[t], sin[t])
    assert logits.shape == expected.shape and logits.dtype == jnp.float32
    worst = max(worst, float(jnp.abs(logits - expected).max()))
  tolerance = lambda values: reference_roundoff.pairwise(reference_roundoff.logit * float(jnp.abs(values).max()))
  print(f"packed vs model decode step: max |logits difference| = {worst:.2e} (tolerance {tolerance(expected):.2e})")
  assert worst <= tolerance(expected)

  final = layer_cache.to_cache()
  np.testing.assert_allclose(final.k, model_cache.k, rtol=0, atol=tolerance(model_cache.k))
  np.testing.assert_allclose(final.v, model_cache.v, rtol=0, atol=tolerance(model_cache.v))
  np.testing.assert_array_equal(final.valid, model_cache.valid)
  assert int(final.index) == int(model_cache.index)


def test_layer_cache_round_trip_is_exact(model, prompt_inputs, make_config):
  _, cache = Sampler(model, make_config()).prefill(prompt_inputs, group_size=1)
  layer_cache = LayerCache.from_cache(cache)
  t = model.config.text
  assert len(layer_cache.keys) == t.num_hidden_layers
  assert layer_cache.keys[0].shape == (cache.batch_size, t.num_key_value_heads, cache.max_length, t.head_dim)
  back = layer_cache.to_cache()
  for name in ("k", "v", "valid", "index", "rope_deltas"):
    np.testing.assert_array_equal(getattr(back, name), getattr(cache, name))


def test_pack_blocks_hold_the_transposed_weights(model):
  packed = nnx.jit(pack_decoder, static_argnums=1)(model, 3)
  layer, attention = packed.layers[1], model.language_model.layers.self_attn  # stacked: layer 1 is slice 1
  assert len(layer.qkv) == 3
  qkv = np.concatenate(layer.qkv)
  q_rows, v_rows = attention.q_proj.kernel.shape[-1], attention.v_proj.kernel.shape[-1]
  np.testing.assert_array_equal(qkv[:q_rows], np.asarray(attention.q_proj.kernel[1]).T)
  np.testing.assert_array_equal(qkv[-v_rows:], np.asarray(attention.v_proj.kernel[1]).T)
  np.testing.assert_array_equal(np.concatenate(packed.head), np.asarray(model.head_weight()).T)


def test_a_tied_head_is_packed_from_the_embedding(config):
  tied_config = config.replace(text=dataclasses.replace(config.text, tie_word_embeddings=True))
  tied = Qwen25VL(tied_config, rngs=nnx.Rngs(0))
  assert tied.lm_head is None
  packed = nnx.jit(pack_decoder)(tied)
  embedding = np.asarray(tied.language_model.embed_tokens.embedding[...])
  np.testing.assert_array_equal(np.concatenate(packed.head), embedding)


def test_packed_weights_are_reused_until_a_parameter_changes(model, prompt_inputs, make_config):
  updated = nnx.clone(model)
  sampler = Sampler(updated, make_config(method=Greedy()))
  first = sampler.packed_decoder()
  assert first is not None and sampler.packed_decoder() is first

  head = updated.lm_head.kernel
  head[...] = head[...][:, ::-1]  # a new array: the sampler must not decode from the stale copy
  repacked = sampler.packed_decoder()
  assert repacked is not first
  np.testing.assert_array_equal(np.concatenate(repacked.head), np.asarray(head[...]).T)

  key = jax.random.key(0)
  fresh = Sampler(updated, make_config(method=Greedy())).generate(prompt_inputs, key)
  np.testing.assert_array_equal(sampler.generate(prompt_inputs, key).tokens, fresh.tokens)
  original = Sampler(model, make_config(method=Greedy())).generate(prompt_inputs, key)
  assert not np.array_equal(fresh.tokens, original.tokens)
