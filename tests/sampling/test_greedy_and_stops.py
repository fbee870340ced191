"""Greedy rollouts against transformers `generate(do_sample=False)`, and per-row stopping."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
import torch
import transformers

from mmrag_jax.sampling import Greedy, Sampler

MAX_NEW_TOKENS = 16


def vision_ids(config) -> list[int]:
  return [config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id]


def hf_greedy(hf_model, batch, config, stop_ids, to_torch) -> np.ndarray:
  """transformers greedy tokens [B, T], padded with the pad id after early stops (T = MAX_NEW_TOKENS).

  The generation config is given in full so no sampling defaults (temperature, top-k/p, repetition
  penalty) of the model's generation_config can apply.
  """
  generation_config = transformers.GenerationConfig(
      do_sample=False, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=0, num_beams=1,
      eos_token_id=list(stop_ids) or None, pad_token_id=config.pad_token_id, suppress_tokens=vision_ids(config),
      temperature=None, top_k=None, top_p=None, repetition_penalty=None)
  with torch.no_grad():
    out = hf_model.generate(**to_torch(batch), generation_config=generation_config).numpy()
  new = out[:, batch["input_ids"].shape[1]:]
  padded = np.full((len(new), MAX_NEW_TOKENS), config.pad_token_id, new.dtype)
  padded[:, :new.shape[1]] = new
  return padded


def greedy_sampler(model, make_config, stop_ids) -> Sampler:
  return Sampler(model, make_config(max_new_tokens=MAX_NEW_TOKENS, method=Greedy(), stop_ids=stop_ids))


def expected_stops(reference: np.ndarray, stop_ids, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tokens, lengths, truncated) of unstopped greedy rows cut after their first stop id (numpy)."""
  tokens = reference.copy()
  lengths = np.full(len(reference), reference.shape[1])
  truncated = np.ones(len(reference), bool)
  for b, row in enumerate(reference):
    hits = np.flatnonzero(np.isin(row, stop_ids))
    if hits.size:
      lengths[b], truncated[b] = hits[0] + 1, False
      tokens[b, hits[0] + 1:] = pad_id
  return tokens, lengths, truncated


@pytest.fixture(scope="module")
def unstopped_reference(hf_model, prompts, config, torch_inputs) -> np.ndarray:
  return hf_greedy(hf_model, prompts, config, (), torch_inputs)


def test_greedy_tokens_equal_transformers_generate(prompt_inputs, model, hf_model, prompts, config, make_config,
                                                   torch_inputs):
  stop_ids = (config.eos_token_id, config.pad_token_id)
  out = greedy_sampler(model, make_config, stop_ids).generate(prompt_inputs, jax.random.key(0))
  np.testing.assert_array_equal(out.tokens, hf_greedy(hf_model, prompts, config, stop_ids, torch_inputs))
  # Greedy samples from a point mass; the policy log-probs are those of the full softmax.
  np.testing.assert_array_equal(out.sampling_logprobs, 0.0)
  assert np.all(out.policy_logprobs[out.completion_mask] < 0)


def test_stop_ids_end_rows_independently(prompt_inputs, model, hf_model, prompts, config, make_config, torch_inputs,
                                         unstopped_reference):
  # Two stop tokens taken from the unstopped greedy rows so that rows end at different steps and at
  # least one row never meets a stop (truncated).
  candidates = sorted(set(unstopped_reference[:2, 1:MAX_NEW_TOKENS - 2].reshape(-1).tolist()))
  for stop_ids in itertools.combinations(candidates, 2):
    tokens, lengths, truncated = expected_stops(unstopped_reference, stop_ids, config.pad_token_id)
    if truncated.any() and len(set(lengths[~truncated].tolist())) >= 2 and lengths.min() > 1:
      break
  else:
    pytest.fail("no pair of stop tokens gives rows of different lengths and a truncated row")

  out = greedy_sampler(model, make_config, stop_ids).generate(prompt_inputs, jax.random.key(0))
  np.testing.assert_array_equal(out.tokens, tokens)
  np.testing.assert_array_equal(out.lengths, lengths)
  np.testing.assert_array_equal(out.truncated, truncated)
  np.testing.assert_array_equal(out.completion_mask, np.arange(MAX_NEW_TOKENS)[None] < lengths[:, None])
  np.testing.assert_array_equal(out.policy_logprobs[~out.completion_mask], 0.0)
  assert np.all(out.policy_logprobs[out.completion_mask] < 0)
  # transformers stops rows the same way.
  np.testing.assert_array_equal(tokens, hf_greedy(hf_model, prompts, config, stop_ids, torch_inputs))


def test_completion_texts_drop_the_stop_token_and_the_padding_after_it():
  from mmrag_jax.sampling import SampleOutput
  tokens = np.array([[5, 6, 2, 0], [7, 8, 9, 4], [2, 0, 0, 0]], np.int32)  # stop ids 2; row 1 truncated
  out = SampleOutput(tokens=tokens, lengths=np.array([3, 4, 1], np.int32), truncated=np.array([False, True, False]),
                     policy_logprobs=np.zeros((3, 4), np.float32), sampling_logprobs=np.zeros((3, 4), np.float32),
                     group_size=1)
  assert out.texts(lambda ids: ",".join(map(str, ids)), stop_ids=[2]) == ["5,6", "7,8,9,4", ""]
