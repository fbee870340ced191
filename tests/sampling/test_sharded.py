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
from mmrag_jax.sampling.steps import prefill_rows


@pytest.fixture(scope="module")
def mesh():
  return make_mesh((2, 2, 2))


@pytest.fixture(scope="module")
def sharded_sampler(checkpoint_dir, mesh, make_config, rollout_spec):
  model = load_pretrained(checkpoint_dir, mesh=mesh)
  return Sampler(model, make_config(method=rollout_spec.method), mesh=mesh)


def test_sharded_sampling_gives_the_single_device_tokens(sharded_sampler, prompt_inputs, rollout_spec, shared_rollout,
                                                         reference_roundoff):
  """The mesh runs the model's own decode step, the single device the packed CPU step: log-probs agree up
  to float32 round-off (sharded contractions sum in another order)."""
  assert sharded_sampler.packed_decoder() is None
  out = sharded_sampler.generate(prompt_inputs, jax.random.key(rollout_spec.seed), group_size=rollout_spec.group_size)
  np.testing.assert_array_equal(out.tokens, shared_rollout.tokens)
  np.testing.assert_array_equal(out.lengths, shared_rollout.lengths)
  np.testing.assert_allclose(out.policy_logprobs, shared_rollout.policy_logprobs, rtol=0,
                             atol=reference_roundoff.pairwise(reference_roundoff.policy_logprob))


def test_cache_rows_over_batch_axes_and_kv_heads_over_tensor(sharded_sampler, prompt_inputs, rollout_spec, mesh):
  """2 kv heads do not divide the 4 devices of ('fsdp', 'tensor') the decode weights split heads over: the
  cache keeps the training layout."""
  _, cache = sharded_sampler.prefill(prompt_inputs, rollout_spec.group_size)
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


@pytest.mark.parametrize("decode_weights, kv_spec", [
    ("gathered", P(None, "data", None, "fsdp", None)),  # heads over the decode weights' ('fsdp', 'tensor')
    ("training", P(None, ("data", "fsdp"), None, None, None)),  # rows over the batch axes, heads over 'tensor'
])
def test_cache_kv_heads_follow_the_decode_weights_where_they_divide(checkpoint_dir, make_config, rollout_spec,
                                                                    prompt_inputs, shared_rollout, reference_roundoff,
                                                                    decode_weights, kv_spec):
  """On (data=4, fsdp=2, tensor=1) the decode weights split the 2 kv heads over 'fsdp': the prefill leaves the
  cache with each device holding its rows' share of the data axis and one kv head, so a token step's attention
  reads its own heads' cache; the loop keeps that layout and samples the single-device tokens."""
  mesh = make_mesh((4, 2, 1))
  sampler = Sampler(load_pretrained(checkpoint_dir, mesh=mesh),
                    make_config(method=rollout_spec.method, decode_weights=decode_weights), mesh=mesh)
  _, cache = sampler.prefill(prompt_inputs, rollout_spec.group_size)
  assert cache.k.sharding.is_equivalent_to(NamedSharding(mesh, kv_spec), cache.k.ndim)
  assert cache.v.sharding.is_equivalent_to(NamedSharding(mesh, kv_spec), cache.v.ndim)
  assert cache.valid.sharding.is_equivalent_to(NamedSharding(mesh, P(kv_spec[1], None)), 2)
  out = sampler.generate(prompt_inputs, jax.random.key(rollout_spec.seed), group_size=rollout_spec.group_size)
  np.testing.assert_array_equal(out.tokens, shared_rollout.tokens)
  np.testing.assert_allclose(out.policy_logprobs, shared_rollout.policy_logprobs, rtol=0,
                             atol=reference_roundoff.pairwise(reference_roundoff.policy_logprob))


def test_prompts_fewer_than_the_data_parallel_devices_are_filled_not_replicated(prompt_inputs, checkpoint_dir,
                                                                                make_config,
                                                                                rollout_spec, prompts, shared_rollout,
                                                                                reference_roundoff):
  """4 prompts on 8 data-parallel devices (data=2, fsdp=4): replicated rows would make every device prefill all
  4 prompts; 4 one-token filler rows give each device one row, and the fillers leave before the groups share
  the prompts: B * G rows come out, with the single-device samples."""
  mesh = make_mesh((2, 4, 1))
  assert prefill_rows(len(prompts["input_ids"]), mesh) == 8 and prefill_rows(8, mesh) == 8
  sampler = Sampler(load_pretrained(checkpoint_dir, mesh=mesh), make_config(method=rollout_spec.method), mesh=mesh)
  logits, cache = sampler.prefill(prompt_inputs, rollout_spec.group_size)
  rows = len(prompts["input_ids"]) * rollout_spec.group_size
  assert logits.shape[0] == rows and cache.k.shape[1] == rows and cache.valid.shape[0] == rows
  out = sampler.generate(prompt_inputs, jax.random.key(rollout_spec.seed), group_size=rollout_spec.group_size)
  np.testing.assert_array_equal(out.tokens, shared_rollout.tokens)
  np.testing.assert_allclose(out.policy_logprobs, shared_rollout.policy_logprobs, rtol=0,
                             atol=reference_roundoff.pairwise(reference_roundoff.policy_logprob))


def test_a_one_device_mesh_decodes_with_the_packed_step(checkpoint_dir, make_config, rollout_spec, prompt_inputs,
                                                        shared_rollout, reference_roundoff):
  """The trainer hands its mesh to the sampler; on one device (a one-core host) there is nothing to lay out,
  so the loop takes the packed CPU step, as without a mesh: the same packed copy decodes, the same samples."""
  mesh = make_mesh((1, 1, 1), jax.devices()[:1])
  sampler = Sampler(load_pretrained(checkpoint_dir, mesh=mesh), make_config(method=rollout_spec.method), mesh=mesh)
  assert sampler.packed_decoder() is not None
  state = nnx.state(sampler.model)
  assert all(a is b for a, b in zip(jax.tree.leaves(sampler.decode_state()), jax.tree.leaves(state)))
  out = sampler.generate(prompt_inputs, jax.random.key(rollout_spec.seed), group_size=rollout_spec.group_size)
  np.testing.assert_array_equal(out.tokens, shared_rollout.tokens)
  np.testing.assert_allclose(out.policy_logprobs, shared_rollout.policy_logprobs, rtol=0,
                             atol=reference_roundoff.pairwise(reference_roundoff.policy_logprob))
