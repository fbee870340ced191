"""Sampling on an emulated (data=2, fsdp=2, tensor=2) mesh of 8 CPU devices."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmrag_jax.model import load_pretrained
from mmrag_jax.parallel import decode_rules, make_mesh, param_shardings
from mmrag_jax.sampling import Sampler


@pytest.fixture(scope="module")
def mesh():
  return make_mesh((2, 2, 2))


@pytest.fixture(scope="module")
def sharded_sampler(checkpoint_dir, mesh, make_config, rollout_spec):
  model = load_pretrained(checkpoint_dir, mesh=mesh)
  return Sampler(model, make_config(method=rollout_spec.method), mesh=mesh)


def test_sharded_sampling_gives_the_single_device_tokens(sharded_sampler, prompts, rollout_spec, shared_rollout,
                                                         reference_roundoff):
  """The mesh runs the model's own decode step, the single device the packed CPU step: log-probs agree up
  to float32 round-off (sharded contractions sum in another order)."""
  assert sharded_sampler.packed_decoder() is None
  out = sharded_sampler.generate(prompts, jax.random.key(rollout_spec.seed), group_size=rollout_spec.group_size)
  np.testing.assert_array_equal(out.tokens, shared_rollout.tokens)
  np.testing.assert_array_equal(out.lengths, shared_rollout.lengths)
  np.testing.assert_allclose(out.policy_logprobs, shared_rollout.policy_logprobs, rtol=0,
                             atol=reference_roundoff.pairwise(reference_roundoff.policy_logprob))


def test_cache_rows_over_batch_axes_and_kv_heads_over_tensor(sharded_sampler, prompts, rollout_spec, mesh):
  _, cache = sharded_sampler.prefill(prompts, rollout_spec.group_size)
  kv_spec = NamedSharding(mesh, P(None, ("data", "fsdp"), None, "tensor", None))
  assert cache.k.sharding.is_equivalent_to(kv_spec, cache.k.ndim)
  assert cache.valid.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), None)), 2)
  assert cache.k.addressable_shards[0].data.shape == (cache.k.shape[0], cache.k.shape[1] // 4, cache.k.shape[2],
                                                      cache.k.shape[3] // 2, cache.k.shape[4])


def test_decode_weights_turn_fsdp_into_tensor_parallelism_once_per_parameter_version(sharded_sampler, mesh):
  """Under FSDP the decode loop reads a copy whose width dims are whole and whose heads / MLP / vocabulary
  dims are split over ('fsdp', 'tensor'): one reshard per parameter version, not an all-gather of every
  weight per token step. Kept while the parameters are the same arrays, remade when they change."""
  state = nnx.state(sharded_sampler.model)
  weights = sharded_sampler.decode_state()
  assert weights is sharded_sampler.decode_state()  # kept
  want = param_shardings(state, mesh, decode_rules())
  for original, copy, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(weights), jax.tree.leaves(want)):
    assert copy.sharding.is_equivalent_to(sharding, copy.ndim)
    assert copy.dtype == original.dtype  # a float32 model computes in float32: nothing to cast
    np.testing.assert_array_equal(np.asarray(copy), np.asarray(original))
  table = weights["language_model"]["embed_tokens"]["embedding"][...]  # [vocab, embed]
  assert table.sharding.is_equivalent_to(NamedSharding(mesh, P(("fsdp", "tensor"), None)), 2)
  assert state["language_model"]["embed_tokens"]["embedding"][...].sharding.is_equivalent_to(
      NamedSharding(mesh, P("tensor", "fsdp")), 2)
  embedding = sharded_sampler.model.language_model.embed_tokens.embedding
  original = embedding[...]
  embedding[...] = original + 1.0  # an update replaces the parameter array
  try:
    remade = sharded_sampler.decode_state()
    assert remade is not weights
    np.testing.assert_array_equal(np.asarray(remade["language_model"]["embed_tokens"]["embedding"][...]),
                                  np.asarray(original + 1.0))
  finally:
    embedding[...] = original


def test_training_decode_weights_read_the_parameters_themselves(checkpoint_dir, mesh, make_config, rollout_spec):
  model = load_pretrained(checkpoint_dir, mesh=mesh)
  sampler = Sampler(model, make_config(method=rollout_spec.method, decode_weights="training"), mesh=mesh)
  state = nnx.state(model)
  assert all(a is b for a, b in zip(jax.tree.leaves(sampler.decode_state()), jax.tree.leaves(state)))
