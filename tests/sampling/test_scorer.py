"""The stage-1 scorer against the transformers model's next-token logits."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import torch

from mmrag_jax.processing import build_tiny_tokenizer
from mmrag_jax.sampling import Scorer, ScorerConfig, prompt_batch
from mmrag_jax.sampling.scorer import judgment_token_ids

# Six candidates (images of several sizes, text-only ones): two chunks of four, the second with filler rows.
CANDIDATE_ROWS = ([4, (1, 4, 4), 3], [11], [2, (1, 2, 6), 5], [6, 2], [1, (1, 8, 4), 1], [3, (1, 2, 2), 9])


@pytest.fixture(scope="module")
def judgment_ids() -> tuple[int, int]:
  return judgment_token_ids(build_tiny_tokenizer())


def test_yes_probability_is_softmax_of_the_reference_logit_pair(model, hf_model, config, make_prompts,
                                                                torch_inputs, judgment_ids):
  candidates = make_prompts(CANDIDATE_ROWS, config, seed=3)
  yes, no = judgment_ids
  scorer = Scorer(model, yes_token_id=yes, no_token_id=no, config=ScorerConfig(batch_size=4))
  scores = scorer(prompt_batch(candidates, config, length_buckets=(32, 64)))

  with torch.no_grad():
    last = hf_model(**torch_inputs(candidates)).logits[:, -1].numpy()
  expected = scipy.special.softmax(last[:, [yes, no]].astype(np.float64), axis=-1)[:, 0]
  assert scores.shape == (len(CANDIDATE_ROWS),)
  np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
  assert 0.05 < scores.std()  # the candidates are told apart, not all scored alike


def test_judgment_words_must_be_single_tokens():
  tokenizer = build_tiny_tokenizer()
  with pytest.raises(ValueError, match="'maybe' encodes to 4 tokens"):
    judgment_token_ids(tokenizer, yes="maybe")


def test_scorer_rejects_ids_outside_the_vocabulary(model):
  with pytest.raises(ValueError, match="no_token_id=512"):
    Scorer(model, yes_token_id=1, no_token_id=512)
