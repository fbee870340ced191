"""Stage-1 ranking quality: recall@k of the gold sources, and the candidates the judge could not score.

A candidate whose prompt could not be built (its image missing or undecodable, its prompt longer than the
largest length bucket, its images over the batch budget) gets score 0, so it ranks below every scored
candidate (ties by pool order). Recall keeps it: an unscored gold source stays in the denominator and
counts as a miss unless its question's pool is small enough for it to reach the top-k anyway. The report
says how many candidates went unscored, why, and how many questions had an unscored gold source.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence

from mmrag_jax.data.records import Question

__all__ = ["UNSCORED_POLICY", "Unscored", "describe_unscored", "recall_at_k", "unscored_summary"]

UNSCORED_POLICY = ("unscored candidates get score 0 and rank last; an unscored gold source stays in the "
                   "recall denominator and counts as a miss unless it still reaches the top-k")

# {qid: {candidate id: reason}} for the candidates the judge did not score (reasons: batching.DROP_REASONS)
Unscored = Mapping[str, Mapping[str, str]]


def recall_at_k(questions: Sequence[Question], scores: Mapping[str, Mapping[str, float]],
                ks: Sequence[int]) -> dict[str, float]:
  """Mean over labeled questions of |gold in top-k| / |gold| (ties broken by pool order, as stage 2 does)."""
  labeled = [q for q in questions if q.is_labeled and q.gold_ids]
  if not labeled:
    return {}
  hits = {k: 0.0 for k in ks}
  for q in labeled:
    row = scores[q.qid]
    order = sorted(range(len(q.candidates)), key=lambda i: (-row.get(q.candidates[i].id, -math.inf), i))
    ranked = [q.candidates[i].id for i in order]
    gold = set(q.gold_ids)
    for k in ks:
      hits[k] += len(gold & set(ranked[:k])) / len(gold)
  return {f"recall@{k}": hits[k] / len(labeled) for k in ks}


def unscored_summary(questions: Sequence[Question], unscored: Unscored) -> dict[str, object]:
  """How many candidates went unscored and why, and what that means for recall.

  Returns {"unscored": n, "unscored_by_reason": {reason: n}, "unscored_gold": gold candidates unscored,
  "questions_with_unscored_gold": labeled questions with at least one, "unscored_policy": UNSCORED_POLICY}.
  """
  by_reason = collections.Counter(reason for row in unscored.values() for reason in row.values())
  gold_unscored = [sum(cid in unscored.get(q.qid, {}) for cid in q.gold_ids) for q in questions
                   if q.is_labeled and q.gold_ids]
  return {
      "unscored": sum(by_reason.values()),
      "unscored_by_reason": dict(sorted(by_reason.items())),
      "unscored_gold": sum(gold_unscored),
      "questions_with_unscored_gold": sum(n > 0 for n in gold_unscored),
      "unscored_policy": UNSCORED_POLICY,
  }


def describe_unscored(summary: Mapping[str, object], num_candidates: int) -> str:
  """One line for logs: '8 / 10 candidates unscored (undecodable_image 6, prompt_too_long 2); ...'."""
  n = summary["unscored"]
  if not n:
    return f"all {num_candidates} candidates scored"
  reasons = ", ".join(f"{reason} {count}" for reason, count in summary["unscored_by_reason"].items())
  return (f"{n} / {num_candidates} candidates unscored ({reasons}); "
          f"{summary['questions_with_unscored_gold']} questions have an unscored gold source "
          "(score 0, kept in the recall denominator)")
