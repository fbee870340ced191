"""Example tables for the two stages: which question and which candidates each training row uses.

Tables are small integer arrays (indices into a question sequence and its candidate tuple), so the grain
pipelines shuffle and shard rows without touching text or images.

  stage 1 (point-wise):  [N, 3] int64 rows (question index, candidate index, label); label 1 = gold,
                         0 = negative, -1 = unknown (unlabeled split).
  stage 2 (list-wise):   [N, 1 + k] int64 rows (question index, candidate indices in prompt order, padded
                         with -1 when the pool has fewer than k candidates).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from mmrag_jax.data.records import Question
from mmrag_jax.data.scores import Stage1Scores

__all__ = ["stage1_examples", "stage2_examples"]

_UNKNOWN_LABEL = -1


def stage1_examples(questions: Sequence[Question], *, negatives_per_positive: float | None = 1.0,
                    seed: int = 0) -> np.ndarray:
  """Point-wise rows: every gold candidate, plus sampled negatives.

  Args:
    questions: labeled questions (an unlabeled one yields all its candidates with label -1).
    negatives_per_positive: negatives drawn per question = ceil(ratio * #gold), capped by the pool;
      None keeps every candidate (scoring / inference).
    seed: negative sampling seed; the same seed gives the same rows.

  Returns:
    [N, 3] int64 rows (question index, candidate index, label), grouped by question, candidate order kept.
  """
  if negatives_per_positive is not None and negatives_per_positive < 0:
    raise ValueError(f"negatives_per_positive must be >= 0 or None, got {negatives_per_positive}")
  rng = np.random.default_rng(seed)
  rows: list[tuple[int, int, int]] = []
  for qi, question in enumerate(questions):
    if not question.is_labeled:
      rows.extend((qi, ci, _UNKNOWN_LABEL) for ci in range(len(question.candidates)))
      continue
    labels = question.candidate_labels()
    negatives = [ci for ci, label in enumerate(labels) if not label]
    if negatives_per_positive is not None:
      n_neg = min(len(negatives), math.ceil(negatives_per_positive * sum(labels)))
      negatives = sorted(rng.choice(negatives, size=n_neg, replace=False).tolist()) if n_neg else []
    keep = set(negatives) | {ci for ci, label in enumerate(labels) if label}
    rows.extend((qi, ci, labels[ci]) for ci in sorted(keep))
  return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def _ranked(question: Question, scores: Stage1Scores) -> list[int]:
  """Candidate indices by descending stage-1 score (ties: pool order). Raises if the question is unscored."""
  if question.qid not in scores:
    raise KeyError(f"question {question.qid} has no stage-1 scores")
  row = scores[question.qid]
  missing = [c.id for c in question.candidates if c.id not in row]
  if missing:
    raise KeyError(f"question {question.qid}: no stage-1 score for candidate(s) {missing[:3]}")
  return sorted(range(len(question.candidates)), key=lambda ci: (-row[question.candidates[ci].id], ci))


def _stage2_train_selection(question: Question, k: int, rng: np.random.Generator,
                            scores: Stage1Scores | None = None) -> list[int]:
  """Candidate indices for one training prompt, in shuffled order.

  All gold candidates (a random k of them if there are more), then the hardest negatives by stage-1 score
  (highest scored non-gold) or, without scores, random negatives, up to k in all.
  """
  labels = question.candidate_labels()
  gold = [ci for ci, label in enumerate(labels) if label]
  if len(gold) > k:
    gold = sorted(rng.choice(gold, size=k, replace=False).tolist())
  negatives = [ci for ci, label in enumerate(labels) if not label]
  n_neg = min(len(negatives), k - len(gold))
  if scores is not None:
    ranked = [ci for ci in _ranked(question, scores) if not labels[ci]]
    chosen = ranked[:n_neg]
  else:
    chosen = rng.choice(negatives, size=n_neg, replace=False).tolist() if n_neg else []
  selection = gold + chosen
  return [selection[i] for i in rng.permutation(len(selection))]


def stage2_examples(questions: Sequence[Question], *, k: int, mode: str, scores: Stage1Scores | None = None,
                    seed: int = 0) -> np.ndarray:
  """List-wise rows, one per question.

  Args:
    k: candidates per prompt.
    mode: "train" (gold + hardest/random negatives, shuffled; needs labels) or "inference" (the top-k by
      stage-1 score, best first; needs `scores`).
    scores: {qid: {candidate_id: score}} (see `scores.read_stage1_scores`).

  Returns:
    [N, 1 + k] int64 rows (question index, candidate indices, -1 padding).
  """
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  if mode not in ("train", "inference"):
    raise ValueError(f"mode must be 'train' or 'inference', got {mode!r}")
  if mode == "inference" and scores is None:
    raise ValueError("stage-2 inference selects the top-k by stage-1 scores: pass `scores`")
  rng = np.random.default_rng(seed)
  table = np.full((len(questions), 1 + k), -1, dtype=np.int64)
  for qi, question in enumerate(questions):
    if mode == "train":
      if not question.is_labeled:
        raise ValueError(f"question {question.qid} ({question.split}) has no gold labels: cannot train on it")
      chosen = _stage2_train_selection(question, k, rng, scores)
    else:
      chosen = _ranked(question, scores)[:k]
    table[qi, 0] = qi
    table[qi, 1:1 + len(chosen)] = chosen
  return table
