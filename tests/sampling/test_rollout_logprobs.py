"""Top-p rollouts of G samples per prompt: prefix sharing, returned log-probs, RNG scheme."""

from __future__ import annotations

import jax
import numpy as np
import scipy.special
import torch
from flax import nnx

from mmrag_jax.model import chunked_logprobs, prepare_inputs
from mmrag_jax.sampling import Sampler
from mmrag_jax.sampling.host_batch import completion_batch, select_rows
from tests.sampling.conftest import bucketed


def numpy_top_p_logprobs(logits: np.ndarray, tokens: np.ndarray, *, p: float, temperature: float,
                         suppressed: list[int]) -> np.ndarray:
  """log q(token) of the nucleus distribution, written independently in numpy. logits [..., V]."""
  scaled = logits.astype(np.float64) / temperature
  scaled[..., suppressed] = -np.inf
  order = np.argsort(-scaled, axis=-1, kind="stable")
  probs = np.take_along_axis(scipy.special.softmax(scaled, axis=-1), order, axis=-1)
  before = np.cumsum(probs, axis=-1) - probs
  keep_sorted = before < p
  keep = np.zeros_like(keep_sorted)
  np.put_along_axis(keep, order, keep_sorted, axis=-1)
  nucleus = np.where(keep, scaled, -np.inf)
  logq = scipy.special.log_softmax(nucleus, axis=-1)
  return np.take_along_axis(logq, tokens[..., None], axis=-1)[..., 0]


def test_group_shared_prefill_equals_separate_prefills(model, prompt_inputs, make_config, rollout_spec, shared_rollout,
                                                       reference_roundoff):
  """Same tokens; log-probs equal up to float32 round-off (the separate prefill runs G copies of every image
  through the vision tower with a larger patch budget, so its reductions have other shapes)."""
  separate = Sampler(model, make_config(method=rollout_spec.method, share_prefix=False)).generate(
      prompt_inputs, jax.random.key(rollout_spec.seed), group_size=rollout_spec.group_size)
  np.testing.assert_array_equal(separate.tokens, shared_rollout.tokens)
  np.testing.assert_array_equal(separate.lengths, shared_rollout.lengths)
  # Tempering divides the logits, and so their round-off, by T.
  units = dict(policy_logprobs=reference_roundoff.policy_logprob,
               sampling_logprobs=reference_roundoff.policy_logprob / rollout_spec.method.temperature)
  for name, unit in units.items():
    error = np.abs(getattr(separate, name) - getattr(shared_rollout, name)).max()
    print(f"shared vs separate prefill, max |{name} difference|: {error:.2e} (unit {unit:.2e})")
    assert error <= reference_roundoff.pairwise(unit)


def test_samples_of_a_group_differ(rollout_spec, shared_rollout):
  tokens = shared_rollout.tokens.reshape(-1, rollout_spec.group_size, shared_rollout.tokens.shape[1])
  assert all(not np.array_equal(group[0], group[1]) for group in tokens)


def completion_slice(per_position: np.ndarray, prompt_length: int, steps: int) -> np.ndarray:
  """Values at the positions predicting completion tokens 0 .. steps - 1: [N, steps, ...]."""
  return per_position[:, prompt_length - 1:prompt_length - 1 + steps]


@nnx.jit
def full_forward_logprobs(model, inputs, targets):
  """[B, L] log-probs of `targets` from a plain forward of the whole sequences."""
  logprobs, _ = chunked_logprobs(model.hidden_states(inputs), model.head_weight(), targets)
  return logprobs


def test_policy_logprobs_equal_full_forward_logprobs(model, prompts, config, rollout_spec, shared_rollout,
                                                     reference_roundoff):
  """A full forward of prompt + completion (`chunked_logprobs`, the trainer's head) gives the returned log-probs."""
  sequences = completion_batch(prompts, shared_rollout.tokens, rollout_spec.group_size, config)
  recomputed = full_forward_logprobs(model, prepare_inputs(sequences, config), sequences["targets"])
  at_completion = completion_slice(np.asarray(recomputed), prompts["input_ids"].shape[1],
                                   shared_rollout.tokens.shape[1])
  mask = shared_rollout.completion_mask
  error = np.abs(at_completion - shared_rollout.policy_logprobs)[mask].max()
  print(f"max |sampler - full forward| policy log-prob: {error:.2e} (unit {reference_roundoff.policy_logprob:.2e})")
  assert error <= reference_roundoff.pairwise(reference_roundoff.policy_logprob)
  np.testing.assert_array_equal(shared_rollout.policy_logprobs[~mask], 0.0)


def test_sampling_logprobs_are_those_of_the_processed_distribution(hf_model, prompts, config, rollout_spec,
                                                                   shared_rollout, torch_inputs):
  """Against the transformers model's logits on prompt + completion, put through numpy top-p."""
  sequences = completion_batch(prompts, shared_rollout.tokens, rollout_spec.group_size, config)
  with torch.no_grad():
    logits = hf_model(**torch_inputs(sequences)).logits.numpy()
  at_completion = completion_slice(logits, prompts["input_ids"].shape[1], shared_rollout.tokens.shape[1])
  suppressed = [config.image_token_id, config.video_token_id, config.vision_start_token_id,
                config.vision_end_token_id]
  method = rollout_spec.method
  expected = numpy_top_p_logprobs(at_completion, shared_rollout.tokens, p=method.p,
                                  temperature=method.temperature, suppressed=suppressed)
  mask = shared_rollout.completion_mask
  np.testing.assert_allclose(shared_rollout.sampling_logprobs[mask], expected[mask], rtol=0, atol=1e-4)
  assert not np.isin(shared_rollout.tokens, suppressed).any()


def test_samples_follow_prompt_ids_not_row_positions(model, prompts, config, make_config, rollout_spec,
                                                    shared_rollout, reference_roundoff):
  """Reordered prompts with the same prompt ids get the same samples (log-probs up to float rounding:
  the images reach the vision tower in another order)."""
  group = rollout_spec.group_size
  reverse = np.arange(len(prompts["input_ids"]))[::-1]
  out = Sampler(model, make_config(method=rollout_spec.method)).generate(
      bucketed(select_rows(prompts, reverse, config), config), jax.random.key(rollout_spec.seed), group_size=group,
      prompt_ids=reverse)
  rows = (reverse[:, None] * group + np.arange(group)).reshape(-1)  # where each output row was before
  np.testing.assert_array_equal(out.tokens, shared_rollout.tokens[rows])
  np.testing.assert_allclose(out.policy_logprobs, shared_rollout.policy_logprobs[rows], rtol=0,
                             atol=reference_roundoff.pairwise(reference_roundoff.policy_logprob))


def test_same_key_reproduces_and_another_key_differs(model, prompt_inputs, make_config, rollout_spec, shared_rollout):
  sampler = Sampler(model, make_config(method=rollout_spec.method))
  again = sampler.generate(prompt_inputs, jax.random.key(rollout_spec.seed), group_size=rollout_spec.group_size)
  np.testing.assert_array_equal(again.tokens, shared_rollout.tokens)
  np.testing.assert_array_equal(again.policy_logprobs, shared_rollout.policy_logprobs)
  other = sampler.generate(prompt_inputs, jax.random.key(rollout_spec.seed + 1), group_size=rollout_spec.group_size)
  assert not np.array_equal(other.tokens, shared_rollout.tokens)
