"""Stage-1 recall@k and the report of candidates the judge could not score."""

import pytest

from mmrag_jax.data.records import Candidate, Question
from mmrag_jax.evaluation.ranking import UNSCORED_POLICY, describe_unscored, recall_at_k, unscored_summary


def _question(qid, ids, gold):
  candidates = tuple(Candidate(id=i, kind="text", title="t", text="x") for i in ids)
  return Question(qid=qid, question="?", answers=("a",), category="text", modalities=("text",),
                  candidates=candidates, gold_ids=tuple(gold), split="val", dataset="webqa")


QUESTIONS = [_question("q1", ["a", "b", "c", "d"], ["c"]), _question("q2", ["e", "f", "g"], ["e", "f"])]
# q1's gold "c" and q2's "g" have unreadable images: score 0.
SCORES = {"q1": {"a": 0.9, "b": 0.2, "c": 0.0, "d": 0.1}, "q2": {"e": 0.8, "f": 0.0, "g": 0.0}}
UNSCORED = {"q1": {"c": "undecodable_image"}, "q2": {"f": "prompt_too_long", "g": "undecodable_image"}}


def test_unscored_gold_stays_in_the_recall_denominator_as_a_miss():
  recall = recall_at_k(QUESTIONS, SCORES, (1, 2, 3))
  # q1: "c" ranks last -> 0 at k <= 3; q2: "e" first, unscored "f" ties "g" at 0 and wins by pool order.
  assert recall == {"recall@1": pytest.approx(0.25), "recall@2": pytest.approx(0.5),
                    "recall@3": pytest.approx(0.5)}


def test_unscored_candidates_are_counted_per_reason_with_the_questions_they_cost():
  summary = unscored_summary(QUESTIONS, UNSCORED)
  assert summary == {"unscored": 3, "unscored_by_reason": {"prompt_too_long": 1, "undecodable_image": 2},
                     "unscored_gold": 2, "questions_with_unscored_gold": 2, "unscored_policy": UNSCORED_POLICY}
  assert describe_unscored(summary, 7) == (
      "3 / 7 candidates unscored (prompt_too_long 1, undecodable_image 2); 2 questions have an unscored gold "
      "source (score 0, kept in the recall denominator)")


def test_nothing_unscored():
  summary = unscored_summary(QUESTIONS, {})
  assert (summary["unscored"], summary["unscored_by_reason"], summary["questions_with_unscored_gold"]) == (0, {}, 0)
  assert describe_unscored(summary, 7) == "all 7 candidates scored"
