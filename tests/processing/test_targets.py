"""Warm-up targets against the real stage-1 / stage-2 reward functions: built from the gold data, a target
earns the maximum of every reward component."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from mmrag_jax.processing.targets import MMQA_ANSWER_SEPARATOR, stage1_target, stage2_target
from mmrag_jax.rl.reward_fns import stage1_reward_fn, stage2_reward_fn
from mmrag_jax.recipe.stage2 import parse_prediction
from mmrag_jax.rl.rewards import Stage1RewardConfig, Stage2RewardConfig
from tests.recipe.conftest import load_config

# The official WebQA keyword F1 keeps an epsilon in its denominator: P = R = 1 gives 2 / (2 + 1e-5).
WEBQA_PERFECT_F1 = 2.0 / (2.0 + 1e-5)


def stage2_metadata(rows: Sequence[tuple[Sequence[str], str, Sequence[bool]]]) -> dict[str, np.ndarray]:
  """Pipeline-style stage-2 metadata of rows (answers, category, candidate_is_gold); k = len(is_gold)."""
  answers = np.empty(len(rows), object)
  for index, (row_answers, _, _) in enumerate(rows):
    answers[index] = tuple(row_answers)
  return {"answers": answers, "category": np.array([category for _, category, _ in rows], object),
          "num_candidates": np.array([len(is_gold) for _, _, is_gold in rows], np.int32),
          "candidate_is_gold": np.array([is_gold for _, _, is_gold in rows], bool)}


@pytest.mark.parametrize("think, policy", [(False, "optional"), (False, "forbidden"), (True, "optional"),
                                           (True, "required")])
def test_stage1_target_of_the_gold_label_gets_the_maximum_reward(think, policy):
  config = Stage1RewardConfig(think=policy)
  completions = [stage1_target(1, think=think), stage1_target(0, think=think)]
  rewards = stage1_reward_fn(config)(completions, {"label": np.array([1, 0])})
  np.testing.assert_array_equal(rewards["format"], [1.0, 1.0])
  np.testing.assert_array_equal(rewards["relevance"], [1.0, 1.0])
  np.testing.assert_allclose(rewards["total"], config.format_weight + config.relevance_weight)


def test_stage1_target_of_the_wrong_label_is_well_formed_but_not_relevant():
  completions = [stage1_target(0), stage1_target(1), stage1_target(0, think=True), stage1_target(1, think=True)]
  rewards = stage1_reward_fn()(completions, {"label": np.array([1, 0, 1, 0])})
  np.testing.assert_array_equal(rewards["format"], [1.0] * 4)
  np.testing.assert_array_equal(rewards["relevance"], [0.0] * 4)


def test_stage1_think_target_states_the_judgment_of_its_label():
  assert stage1_target(1) == "<answer>yes</answer>"
  assert stage1_target(0, think=True).startswith("<think>The candidate is not relevant")
  assert stage1_target(0, think=True).endswith("</think><answer>no</answer>")


@pytest.mark.parametrize("label", [-1, 2, 0.5, "yes"])
def test_stage1_target_rejects_a_label_other_than_0_or_1(label):
  with pytest.raises(ValueError, match="gold label 0 or 1"):
    stage1_target(label)


def test_stage2_webqa_targets_get_full_format_ranking_and_answer():
  # Gold candidates 2 and 4 of 4, cited in either order; the answer sentence of a color and an Others question.
  is_gold = [False, True, False, True]
  rows = [(["The roof is red."], "color", is_gold), (["The roof is red."], "color", is_gold),
          (["The bridge was built in 1890 by the city."], "Others", is_gold)]
  completions = [stage2_target([2, 4], rows[0][0]), stage2_target([4, 2], rows[1][0]),
                 stage2_target([2, 4], rows[2][0])]
  config = Stage2RewardConfig()
  rewards = stage2_reward_fn(config)(completions, stage2_metadata(rows))
  for name in ("format", "set_f1", "ndcg", "ranking"):
    np.testing.assert_array_equal(rewards[name], [1.0, 1.0, 1.0], err_msg=name)
  # Color answers score the official keyword F1 (its maximum), Others the keyword recall.
  np.testing.assert_allclose(rewards["answer"], [WEBQA_PERFECT_F1, WEBQA_PERFECT_F1, 1.0], rtol=1e-6)
  maximum = config.format_weight + config.ranking_weight + config.answer_weight
  np.testing.assert_allclose(rewards["total"], maximum, rtol=1e-5)


def test_stage2_target_without_gold_candidates_cites_nothing_and_keeps_full_ranking():
  rows = [(["The roof is red."], "Others", [False, False, False])]
  completion = stage2_target([], rows[0][0])
  assert "<evidence></evidence>" in completion
  rewards = stage2_reward_fn()([completion], stage2_metadata(rows))
  for name in ("format", "ranking", "answer"):
    np.testing.assert_array_equal(rewards[name], [1.0], err_msg=name)


def test_stage2_mmqa_target_lists_every_answer_and_gets_full_list_f1_and_em():
  rows = [(["Paris", "London", "1851"], "Compose(TextQ,ImageListQ)", [True, False, True, False]),
          (["Queen Victoria"], "TextQ", [False, False, True, False])]
  completions = [stage2_target([1, 3], rows[0][0], dataset="mmqa"), stage2_target([3], rows[1][0], dataset="mmqa")]
  assert completions[0].endswith("<answer>Paris; London; 1851</answer>")
  config = Stage2RewardConfig(mmqa_span_separator=MMQA_ANSWER_SEPARATOR)
  rewards = stage2_reward_fn(config)(completions, stage2_metadata(rows))
  for name in ("format", "ranking", "answer", "answer_em"):
    np.testing.assert_array_equal(rewards[name], [1.0, 1.0], err_msg=name)


def test_single_answer_mmqa_target_gets_full_answer_without_a_span_separator():
  rows = [(["Queen Victoria"], "TextQ", [False, True])]
  rewards = stage2_reward_fn(Stage2RewardConfig())([stage2_target([2], rows[0][0], dataset="mmqa")],
                                                   stage2_metadata(rows))
  np.testing.assert_array_equal(rewards["answer"], [1.0])
  np.testing.assert_array_equal(rewards["answer_em"], [1.0])


def test_stage2_webqa_target_answers_with_the_first_reference_only():
  completion = stage2_target([1], ["A red roof.", "The roof is blue."])
  assert completion.endswith("<answer>A red roof.</answer>")
  assert stage2_target([1], [], dataset="webqa").endswith("<answer></answer>")



def test_mmqa_answers_holding_commas_round_trip_through_reward_and_prediction():
  """With the stage-2 recipe's separator, answers like "Washington, D.C." stay whole spans."""
  config = load_config("stage2")
  answers = ["Washington, D.C.", "1,000"]
  completion = stage2_target([1], answers, dataset="mmqa")
  reward = Stage2RewardConfig.from_mapping(config.reward)
  rewards = stage2_reward_fn(reward)([completion], stage2_metadata([(answers, "TextQ", [True, False])]))
  np.testing.assert_array_equal(rewards["answer_em"], [1.0])
  parsed = parse_prediction(completion, ["d1", "d2"], "mmqa", config.reward.think, reward.mmqa_span_separator)
  assert parsed["answer"] == answers and parsed["sources"] == ["d1"]
