"""Sampling on an emulated (data=2, fsdp=2, tensor=2) mesh of 8 CPU devices."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmrag_jax.model import load_pretrained
from mmrag_jax.parallel import make_mesh
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
