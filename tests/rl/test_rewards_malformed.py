"""Each malformed-completion kind gives its documented flags and rewards (mmrag_jax/formats: tags.py, parse.py)."""

import numpy as np
import pytest

from mmrag_jax.formats.parse import parse_stage1, parse_stage2
from mmrag_jax.formats.tags import MALFORMED_NAMES
from mmrag_jax.rl.rewards import (Stage1RewardConfig, Stage2Reference, Stage2RewardConfig, WebQAAnswer, stage1_rewards,
                                  stage2_rewards)

# Official WebQA F1 of a perfect single-keyword match: 2PR / (P + R + 1e-5) with P = R = 1.
PERFECT_KEYWORD_F1 = 2.0 / (2.0 + 1e-5)
RED_REFERENCE = Stage2Reference(num_candidates=3, gold_numbers=(2,), answer=WebQAAnswer("red", "color"))


def _flagged(counts):
  return {name for name in MALFORMED_NAMES if counts[name]}


# (completion, malformed kinds, set_f1, ndcg, answer) for 3 candidates, gold [2], color answer "red".
STAGE2_CASES = {
    "well_formed": ("<think>The flag is red.</think>\n<evidence>[2]</evidence>\n<answer>red</answer>",
                    set(), 1.0, 1.0, PERFECT_KEYWORD_F1),
    "missing_evidence": ("<think>r</think><answer>red</answer>", {"missing_tag"}, 0.0, 0.0,
                         PERFECT_KEYWORD_F1),
    "missing_think": ("<evidence>[2]</evidence><answer>red</answer>", {"missing_tag"}, 1.0, 1.0,
                      PERFECT_KEYWORD_F1),
    "unterminated_answer": ("<think>r</think><evidence>[2]</evidence><answer>red", {"unterminated_tag"},
                            1.0, 1.0, 0.0),
    "closing_before_opening": ("<think>r</think></evidence>[2]<evidence><answer>red</answer>",
                               {"unterminated_tag"}, 0.0, 0.0, PERFECT_KEYWORD_F1),
    "repeated_answer": ("<think>r</think><evidence>[2]</evidence><answer>blue</answer><answer>red</answer>",
                        {"repeated_tag"}, 1.0, 1.0, 0.0),
    "wrong_order": ("<evidence>[2]</evidence><think>r</think><answer>red</answer>", {"wrong_order"},
                    1.0, 1.0, PERFECT_KEYWORD_F1),
    "nested_blocks": ("<think>r<evidence>[2]</evidence></think><answer>red</answer>", {"wrong_order"},
                      1.0, 1.0, PERFECT_KEYWORD_F1),
    "text_before": ("Sure! <think>r</think><evidence>[2]</evidence><answer>red</answer>",
                    {"text_outside_tags"}, 1.0, 1.0, PERFECT_KEYWORD_F1),
    "text_after": ("<think>r</think><evidence>[2]</evidence><answer>red</answer> Hope this helps.",
                   {"text_outside_tags"}, 1.0, 1.0, PERFECT_KEYWORD_F1),
    "empty_think": ("<think>  </think><evidence>[2]</evidence><answer>red</answer>", {"empty_block"},
                    1.0, 1.0, PERFECT_KEYWORD_F1),
    "empty_answer": ("<think>r</think><evidence>[2]</evidence><answer> \n</answer>", {"empty_block"},
                     1.0, 1.0, 0.0),
    "evidence_not_a_list": ("<think>r</think><evidence>candidate 2</evidence><answer>red</answer>",
                            {"bad_evidence_syntax"}, 0.0, 0.0, PERFECT_KEYWORD_F1),
    # [7] names no candidate: one wrong citation after the right one.
    "evidence_out_of_range": ("<think>r</think><evidence>[2], [7]</evidence><answer>red</answer>",
                              {"evidence_out_of_range"}, 2 / 3, 1.0, PERFECT_KEYWORD_F1),
    "evidence_zero": ("<think>r</think><evidence>[0] [2]</evidence><answer>red</answer>",
                      {"evidence_out_of_range"}, 2 / 3, 1 / np.log2(3), PERFECT_KEYWORD_F1),
    # Repeats count once at their first rank: the list is [2], [1].
    "evidence_repeated": ("<think>r</think><evidence>[2],[2], [1]</evidence><answer>red</answer>",
                          {"evidence_repeated"}, 2 / 3, 1.0, PERFECT_KEYWORD_F1),
    "evidence_empty": ("<think>r</think><evidence> </evidence><answer>red</answer>", set(), 0.0, 0.0,
                       PERFECT_KEYWORD_F1),
    "capitalized_tag_is_text": ("<think>r</think><evidence>[2]</evidence><Answer>red</Answer>",
                                {"missing_tag", "text_outside_tags"}, 1.0, 1.0, 0.0),
    "empty_completion": ("", {"missing_tag"}, 0.0, 0.0, 0.0),
}


def _kinds(parse):
  return {kind.name.lower() for kind in parse.malformed}


@pytest.fixture(scope="module")
def stage2_table():
  """case name -> {component: value} with every case scored in ONE batch (one kernel compile)."""
  names = sorted(STAGE2_CASES)
  result = stage2_rewards([STAGE2_CASES[name][0] for name in names], [RED_REFERENCE] * len(names))
  return {name: {key: float(value[row]) for key, value in result.components.items()}
          | {"total": float(result.total[row])} for row, name in enumerate(names)}


@pytest.mark.parametrize("case", sorted(STAGE2_CASES))
def test_stage2_malformed_kind_gives_documented_rewards(case, stage2_table):
  completion, kinds, set_f1, ndcg, answer = STAGE2_CASES[case]
  assert _kinds(parse_stage2(completion, num_candidates=3, think="required")) == kinds
  components = stage2_table[case]
  assert components["format"] == (0.0 if kinds else 1.0)
  np.testing.assert_allclose(components["set_f1"], set_f1, atol=1e-6)
  np.testing.assert_allclose(components["ndcg"], ndcg, atol=1e-6)
  np.testing.assert_allclose(components["ranking"], 0.5 * set_f1 + 0.5 * ndcg, atol=1e-6)
  np.testing.assert_allclose(components["answer"], answer, atol=1e-6)
  np.testing.assert_allclose(components["total"],
                             0.5 * components["format"] + components["ranking"] + components["answer"],
                             atol=1e-6)


def test_stage2_counts_tally_each_kind_over_the_batch():
  cases = [STAGE2_CASES[name] for name in sorted(STAGE2_CASES)]
  result = stage2_rewards([c[0] for c in cases], [RED_REFERENCE] * len(cases))
  expected_counts = {name: sum(name in c[1] for c in cases) for name in MALFORMED_NAMES}
  assert {name: result.counts[name] for name in MALFORMED_NAMES} == expected_counts
  assert result.counts["non_ascii"] == 0


def test_stage2_citing_nothing_is_right_when_no_gold_candidate_was_shown():
  no_gold = Stage2Reference(num_candidates=3, gold_numbers=(), answer=WebQAAnswer("red", "color"))
  completions = ["<think>r</think><evidence></evidence><answer>red</answer>",
                 "<think>r</think><evidence>[1]</evidence><answer>red</answer>"]
  ranking = stage2_rewards(completions, [no_gold, no_gold]).components["ranking"]
  np.testing.assert_array_equal(ranking, [1.0, 0.0])


def test_stage2_gate_on_format_zeroes_content_of_malformed_completions():
  completion = STAGE2_CASES["text_after"][0]
  gated = stage2_rewards([completion], [RED_REFERENCE], Stage2RewardConfig(gate_on_format=True))
  assert float(gated.components["ranking"][0]) == 0.0
  assert float(gated.components["answer"][0]) == 0.0
  assert float(gated.total[0]) == 0.0


def test_non_ascii_text_is_counted_but_not_penalized():
  result = stage2_rewards(["<think>Le drapeau est rouge — red.</think><evidence>[2]</evidence>"
                           "<answer>red 红</answer>"], [RED_REFERENCE])
  assert result.counts["non_ascii"] == 1
  assert float(result.components["format"][0]) == 1.0
  # "红" is one more predicted token that is not a color: the color filter drops it.
  np.testing.assert_allclose(float(result.components["answer"][0]), PERFECT_KEYWORD_F1, atol=1e-6)


def test_evidence_parser_handles_long_malformed_lists_quickly():
  # A separator regex with two adjacent optional-whitespace runs backtracks exponentially here.
  completion = "<think>r</think><evidence>" + "[1] " * 5000 + "x</evidence><answer>red</answer>"
  result = stage2_rewards([completion], [RED_REFERENCE])
  assert result.counts["bad_evidence_syntax"] == 1


# (completion, malformed kinds, relevance) for gold label "yes" under think='optional'.
STAGE1_CASES = {
    "answer_only": ("<answer>yes</answer>", set(), 1.0),
    "think_then_answer": ("<think>The bridge is red.</think>\n<answer>yes</answer>", set(), 1.0),
    "wrong_label": ("<answer>no</answer>", set(), 0.0),
    "capitalized_label": ("<answer>Yes</answer>", {"bad_label"}, 0.0),
    "padded_label": ("<answer> yes </answer>", {"bad_label"}, 0.0),
    "other_label": ("<answer>maybe</answer>", {"bad_label"}, 0.0),
    "unterminated": ("<think>hmm</think><answer>yes", {"unterminated_tag"}, 0.0),
    "unterminated_think": ("<think>hmm <answer>yes</answer>", {"unterminated_tag"}, 1.0),
    "repeated": ("<answer>yes</answer><answer>no</answer>", {"repeated_tag"}, 0.0),
    "wrong_order": ("<answer>yes</answer><think>why</think>", {"wrong_order"}, 1.0),
    "text_outside": ("I think <answer>yes</answer>", {"text_outside_tags"}, 1.0),
    "bare_label": ("yes", {"missing_tag", "text_outside_tags"}, 0.0),
    "empty_think": ("<think></think><answer>yes</answer>", {"empty_block"}, 1.0),
    "empty": ("", {"missing_tag"}, 0.0),
}


@pytest.fixture(scope="module")
def stage1_table():
  names = sorted(STAGE1_CASES)
  result = stage1_rewards([STAGE1_CASES[name][0] for name in names], [True] * len(names))
  return {name: {key: float(value[row]) for key, value in result.components.items()}
          for row, name in enumerate(names)}


@pytest.mark.parametrize("case", sorted(STAGE1_CASES))
def test_stage1_malformed_kind_gives_documented_rewards(case, stage1_table):
  completion, kinds, relevance = STAGE1_CASES[case]
  assert _kinds(parse_stage1(completion, think="optional")) == kinds
  assert stage1_table[case]["format"] == (0.0 if kinds else 1.0)
  assert stage1_table[case]["relevance"] == relevance


@pytest.mark.parametrize("think, completion, kinds", [
    ("required", "<answer>yes</answer>", {"missing_tag"}),
    ("required", "<think>x</think><answer>yes</answer>", set()),
    ("forbidden", "<think>x</think><answer>yes</answer>", {"think_not_allowed"}),
    ("forbidden", "<answer>yes</answer>", set()),
])
def test_stage1_think_policy(think, completion, kinds):
  result = stage1_rewards([completion], [True], Stage1RewardConfig(think=think))
  assert _flagged(result.counts) == kinds
  assert float(result.components["relevance"][0]) == 1.0
