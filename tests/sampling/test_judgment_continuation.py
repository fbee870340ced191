"""Scoring at the token where the two judgment completions part: the continuation's ids re-encode the
completions, continued prompts stay left-padded, and P(yes) on them matches the transformers model."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import torch

from mmrag_jax.processing import build_tiny_tokenizer
from mmrag_jax.processing.targets import stage1_target
from mmrag_jax.sampling import Scorer, ScorerConfig, judgment_continuation, prompt_batch
from mmrag_jax.sampling.scorer import with_continuation

# Candidate prompts: images of several sizes, text-only rows, different lengths (left padding).
CANDIDATE_ROWS = ([4, (1, 4, 4), 3], [11], [2, (1, 2, 6), 5], [6, 2])


@pytest.fixture(scope="module")
def tokenizer():
  return build_tiny_tokenizer()


@pytest.mark.parametrize("think", [False, True])
def test_prefix_and_judgment_ids_re_encode_both_completions(tokenizer, think):
  yes_completion, no_completion = stage1_target(1, think=think), stage1_target(0, think=think)
  prefix, yes_id, no_id = judgment_continuation(tokenizer, yes_completion, no_completion)
  yes_ids = tokenizer.encode(yes_completion, add_special_tokens=False)
  no_ids = tokenizer.encode(no_completion, add_special_tokens=False)
  assert yes_id != no_id
  assert yes_ids[:len(prefix) + 1] == prefix + [yes_id]
  assert no_ids[:len(prefix) + 1] == prefix + [no_id]
  # The scored tokens are text the completions start with, not merely ids.
  assert yes_completion.startswith(tokenizer.decode(prefix + [yes_id]))
  assert no_completion.startswith(tokenizer.decode(prefix + [no_id]))


def test_plain_judgment_parts_at_the_answer_word(tokenizer):
  prefix, yes_id, no_id = judgment_continuation(tokenizer, stage1_target(1), stage1_target(0))
  assert tokenizer.decode(prefix) + tokenizer.decode([yes_id]) == "<answer>yes"
  assert tokenizer.decode(prefix) + tokenizer.decode([no_id]) == "<answer>no"


@pytest.mark.parametrize("yes_completion, no_completion", [
    ("<answer>yes</answer>", "<answer>yes</answer>"),
    ("<answer>yes", "<answer>yes</answer>"),  # one is a prefix of the other: no token to score
])
def test_completions_that_do_not_differ_in_a_token_are_rejected(tokenizer, yes_completion, no_completion):
  with pytest.raises(ValueError, match="do not differ in a token"):
    judgment_continuation(tokenizer, yes_completion, no_completion)


def test_with_continuation_appends_the_ids_to_every_row_and_keeps_left_padding(config, make_prompts):
  batch = make_prompts(CANDIDATE_ROWS, config, seed=4)
  original = {key: np.array(value) for key, value in batch.items()}
  continuation = [420, 338, 17]
  continued = with_continuation(batch, continuation)

  rows, length = original["input_ids"].shape
  assert continued["input_ids"].shape == continued["attention_mask"].shape == (rows, length + 3)
  np.testing.assert_array_equal(continued["input_ids"][:, :length], original["input_ids"])
  np.testing.assert_array_equal(continued["input_ids"][:, length:], np.tile(continuation, (rows, 1)))
  np.testing.assert_array_equal(continued["attention_mask"][:, :length], original["attention_mask"])
  np.testing.assert_array_equal(continued["attention_mask"][:, length:], 1)
  # Left-padded: each row's mask is zeros, then ones to the end.
  assert np.all(np.diff(continued["attention_mask"], axis=1) >= 0)
  np.testing.assert_array_equal(continued["pixel_values"], original["pixel_values"])
  np.testing.assert_array_equal(continued["image_grid_thw"], original["image_grid_thw"])
  for key, value in original.items():  # the input batch is left as it was
    np.testing.assert_array_equal(batch[key], value)


def test_scorer_on_continued_prompts_is_the_softmax_of_the_reference_judgment_logits(
    model, hf_model, config, make_prompts, torch_inputs, tokenizer):
  prefix, yes_id, no_id = judgment_continuation(tokenizer, stage1_target(1), stage1_target(0))
  continued = with_continuation(make_prompts(CANDIDATE_ROWS, config, seed=5), prefix)
  scorer = Scorer(model, yes_token_id=yes_id, no_token_id=no_id, config=ScorerConfig(batch_size=4))
  scores = scorer(prompt_batch(continued, config, length_buckets=(32,)))

  # The reference reads int64 ids and needs mm_token_type_ids (1 on image tokens) for its M-RoPE positions.
  input_ids = continued["input_ids"].astype(np.int64)
  reference_batch = dict(continued, input_ids=input_ids, attention_mask=continued["attention_mask"].astype(np.int64),
                         mm_token_type_ids=(input_ids == config.image_token_id).astype(np.int64))
  with torch.no_grad():
    last = hf_model(**torch_inputs(reference_batch)).logits[:, -1].numpy()
  expected = scipy.special.softmax(last[:, [yes_id, no_id]].astype(np.float64), axis=-1)[:, 0]
  np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
  assert scores.std() > 0.05  # the candidates are told apart
