"""MultimodalQA evaluation over a split: official list EM / F1 (x100) with breakdowns.

Each gold question's whole answer list is one multi-span reference (the official protocol; RAMQA's
variant takes the max over individual gold strings instead: not reported here). A question without a
prediction scores 0. Breakdowns: by question type (`metadata.type`, key `by_category`), by answer
modality and by single- vs multi-hop. When the predictions cite sources and the gold carries
supporting documents, the per-question source F1 of `retrieval_f1` is reported as well (not an
official MultimodalQA metric).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from mmrag_jax.evaluation.coverage import check_unique_qids, coverage_counts, coverage_warnings, log_warnings
from mmrag_jax.evaluation.mmqa_metrics import hop_type, list_em, list_f1
from mmrag_jax.evaluation.predictions import Prediction
from mmrag_jax.evaluation.webqa_metrics import retrieval_f1

__all__ = ["MMQAGold", "MMQAScores", "evaluate_mmqa", "score_mmqa"]

_PROTOCOL = "official list EM/F1: the answer list is one multi-span reference; scores x100"


@dataclasses.dataclass(frozen=True)
class MMQAGold:
  """What MultimodalQA scoring needs of one gold question."""

  qid: str
  answers: tuple[str, ...]
  question_type: str
  answer_modality: str
  gold_sources: tuple[str, ...] | None = None

  def __post_init__(self):
    if not self.answers:
      raise ValueError(f"question {self.qid}: no gold answer")


@dataclasses.dataclass(frozen=True)
class MMQAScores:
  """Per-question scores in [0, 1] (list_f1 already rounded to 2 decimals, as officially)."""

  qid: str
  answered: bool
  em: float
  f1: float
  retrieval_f1: float | None


def score_mmqa(golds: Sequence[MMQAGold], predictions: Mapping[str, Prediction]) -> list[MMQAScores]:
  """Scores every gold question; missing predictions score 0."""
  scores = []
  for gold in golds:
    prediction = predictions.get(gold.qid)
    has_sources = gold.gold_sources is not None
    if prediction is None:
      scores.append(MMQAScores(gold.qid, False, 0.0, 0.0, 0.0 if has_sources else None))
      continue
    spans = prediction.answer_spans
    scores.append(MMQAScores(
        qid=gold.qid, answered=True, em=list_em(spans, gold.answers), f1=list_f1(spans, gold.answers),
        retrieval_f1=retrieval_f1(prediction.sources, gold.gold_sources) if has_sources else None))
  return scores


def _columns(scores: Sequence[MMQAScores], with_retrieval: bool) -> dict[str, float | int | None]:
  columns: dict[str, float | int | None] = {
      "count": len(scores),
      "em": float(np.mean([s.em for s in scores]) * 100),
      "f1": float(np.mean([s.f1 for s in scores]) * 100),
  }
  if with_retrieval:
    columns["retrieval_f1"] = float(np.mean([s.retrieval_f1 for s in scores]))
  return columns


def _breakdown(scores: Sequence[MMQAScores], keys: Mapping[str, str], with_retrieval: bool) -> dict:
  groups: dict[str, list[MMQAScores]] = {}
  for s in scores:
    groups.setdefault(keys[s.qid], []).append(s)
  return {key: _columns(groups[key], with_retrieval) for key in sorted(groups)}


def evaluate_mmqa(golds: Sequence[MMQAGold], predictions: Mapping[str, Prediction]) -> dict[str, object]:
  """The metrics report: em, f1 (x100), breakdowns by question type / answer modality / hop, the
  prediction counts and `warnings` about missing or unmatched predictions (also logged)."""
  if not golds:
    raise ValueError("no gold questions to evaluate")
  qids = [g.qid for g in golds]
  check_unique_qids(qids)
  scores = score_mmqa(golds, predictions)
  cites_sources = any(p.sources for p in predictions.values())
  with_retrieval = cites_sources and all(s.retrieval_f1 is not None for s in scores)
  report: dict[str, object] = {
      "dataset": "mmqa",
      "mode": "official_list",
      "mode_description": _PROTOCOL,
      **coverage_counts(qids, predictions),
      "warnings": coverage_warnings(qids, predictions),
  }
  log_warnings(report["warnings"])
  report.update({k: v for k, v in _columns(scores, with_retrieval).items() if k != "count"})
  report["by_category"] = _breakdown(scores, {g.qid: g.question_type for g in golds}, with_retrieval)
  report["by_answer_modality"] = _breakdown(scores, {g.qid: g.answer_modality for g in golds}, with_retrieval)
  report["by_hop"] = _breakdown(scores, {g.qid: hop_type(g.question_type) for g in golds}, with_retrieval)
  return report
