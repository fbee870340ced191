"""Stage-1 rewards: the relevance reward reads the yes/no label correctly; the total is the weighted sum."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mmrag_jax.rl.rewards import Stage1RewardConfig, stage1_rewards
from mmrag_jax.rl.rewards.stage1 import stage1_kernel

BATCH = 16


def test_relevance_is_one_exactly_when_the_label_matches_gold():
  completions = ["<answer>yes</answer>", "<answer>no</answer>", "<answer>yes</answer>", "<answer>no</answer>"]
  gold = [True, True, False, False]
  result = stage1_rewards(completions, gold)
  np.testing.assert_array_equal(result.components["relevance"], [1.0, 0.0, 0.0, 1.0])
  np.testing.assert_array_equal(result.components["format"], [1.0, 1.0, 1.0, 1.0])
  np.testing.assert_allclose(result.total, [1.5, 0.5, 0.5, 1.5])


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from(["yes", "no"]), st.booleans(), st.booleans(),
                               st.sampled_from(["", " ", "\n"])), min_size=BATCH, max_size=BATCH),
       format_weight=st.floats(0.0, 2.0), relevance_weight=st.floats(0.0, 2.0))
def test_well_formed_judgments_score_label_agreement(rows, format_weight, relevance_weight):
  completions = [(f"<think>Looking at the caption.</think>{gap}" if with_think else gap)
                 + f"<answer>{label}</answer>" for label, with_think, _, gap in rows]
  gold = [is_relevant for _, _, is_relevant, _ in rows]
  config = Stage1RewardConfig(format_weight=format_weight, relevance_weight=relevance_weight)
  result = stage1_rewards(completions, gold, config)
  expected_relevance = [float((label == "yes") == is_relevant) for label, _, is_relevant, _ in rows]
  np.testing.assert_array_equal(result.components["relevance"], expected_relevance)
  np.testing.assert_array_equal(result.components["format"], 1.0)
  np.testing.assert_allclose(result.total, format_weight + relevance_weight * np.array(expected_relevance),
                             rtol=1e-6, atol=1e-6)


def test_changing_a_weight_does_not_recompile():
  completions, gold = ["<answer>yes</answer>"] * 3, [True, False, True]
  stage1_rewards(completions, gold, Stage1RewardConfig(format_weight=0.1))
  compiled = stage1_kernel._cache_size()
  result = stage1_rewards(completions, gold, Stage1RewardConfig(format_weight=0.7, relevance_weight=3.0))
  assert stage1_kernel._cache_size() == compiled
  np.testing.assert_allclose(result.total, [3.7, 0.7, 3.7], rtol=1e-6)


def test_gate_on_format_zeroes_relevance_of_malformed_judgments():
  completions = ["<answer>yes</answer>", "Sure. <answer>yes</answer>"]
  gated = stage1_rewards(completions, [True, True], Stage1RewardConfig(gate_on_format=True))
  np.testing.assert_array_equal(gated.components["relevance"], [1.0, 0.0])
