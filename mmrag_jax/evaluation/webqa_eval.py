"""WebQA evaluation over a split: Retrieval F1, QA-FL, QA-Acc, QA with per-category breakdowns.

Every column is a per-question mean over ALL gold questions; a question without a prediction scores 0
everywhere. QA is the mean of per-question FL x Acc (not mean FL x mean Acc).

Acc target: the question's `Keywords_A` when the gold data has it (the official test protocol),
otherwise its first answer sentence `A` (the usual val approximation, harsh on choose / Others / text,
whose Acc is recall). The metrics report says which ("acc_target" and the per-target counts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mmrag_jax.evaluation import lemmatizer
from mmrag_jax.evaluation.coverage import check_unique_qids, coverage_counts, coverage_warnings, log_warnings
from mmrag_jax.evaluation.predictions import Prediction
from mmrag_jax.evaluation.webqa_metrics import IMAGE_QCATES, QCATES, retrieval_f1, webqa_keyword_accuracy

__all__ = ["FluencyFn", "WebQAGold", "WebQAScores", "evaluate_webqa", "score_webqa"]

# candidates [N], references [N][m] -> FL [N] in [0, 1]; e.g. `BartScorer.fluency`.
FluencyFn = Callable[[Sequence[str], Sequence[Sequence[str]]], np.ndarray]

_KEYWORDS = "keywords"
_ANSWER_SENTENCE = "answer_sentence"
# The split protocol each Acc target corresponds to.
_MODES = {_KEYWORDS: "test", _ANSWER_SENTENCE: "val", "mixed": "mixed"}
_ACC_TARGET_DESCRIPTIONS = {
    _KEYWORDS: "QA-Acc against Keywords_A (official test protocol)",
    _ANSWER_SENTENCE: "QA-Acc against the answer sentence A (val approximation)",
    "mixed": "QA-Acc against Keywords_A where present, else the answer sentence A",
}


@dataclasses.dataclass(frozen=True)
class WebQAGold:
  """What WebQA scoring needs of one gold question.

  gold_sources is None on splits without source labels (retrieval is then unavailable); keywords is
  `Keywords_A` when the annotations have it.
  """

  qid: str
  qcate: str
  answers: tuple[str, ...]
  gold_sources: tuple[str, ...] | None
  keywords: str | None = None

  def __post_init__(self):
    if self.qcate not in QCATES:
      raise ValueError(f"question {self.qid}: unknown Qcate {self.qcate!r}; expected one of {QCATES}")
    if self.keywords is None and not self.answers:
      raise ValueError(f"question {self.qid}: neither Keywords_A nor an answer sentence to score against")

  @property
  def acc_target(self) -> str:
    return _KEYWORDS if self.keywords is not None else _ANSWER_SENTENCE

  @property
  def query_modality(self) -> str:
    return "image" if self.qcate in IMAGE_QCATES else "text"


@dataclasses.dataclass(frozen=True)
class WebQAScores:
  """Per-question scores in [0, 1]; None where a metric is unavailable (no gold sources / no BART)."""

  qid: str
  qcate: str
  answered: bool
  retrieval_f1: float | None
  qa_acc: float
  qa_fl: float | None

  @property
  def qa(self) -> float | None:
    return None if self.qa_fl is None else self.qa_fl * self.qa_acc


def score_webqa(golds: Sequence[WebQAGold], predictions: Mapping[str, Prediction],
                fluency_fn: FluencyFn | None = None) -> list[WebQAScores]:
  """Scores every gold question (missing predictions score 0); FL is None without `fluency_fn`."""
  answered = [g for g in golds if g.qid in predictions]
  fluency: dict[str, float] = {}
  if fluency_fn is not None and answered:
    values = fluency_fn([predictions[g.qid].first_answer for g in answered], [list(g.answers) for g in answered])
    fluency = {g.qid: float(v) for g, v in zip(answered, values)}
  scores = []
  for gold in golds:
    prediction = predictions.get(gold.qid)
    target = gold.keywords if gold.keywords is not None else gold.answers[0]
    has_sources = gold.gold_sources is not None
    if prediction is None:
      scores.append(WebQAScores(gold.qid, gold.qcate, False, 0.0 if has_sources else None, 0.0,
                                None if fluency_fn is None else 0.0))
      continue
    scores.append(WebQAScores(
        qid=gold.qid, qcate=gold.qcate, answered=True,
        retrieval_f1=retrieval_f1(prediction.sources, gold.gold_sources) if has_sources else None,
        qa_acc=webqa_keyword_accuracy(prediction.first_answer, target, gold.qcate),
        qa_fl=fluency.get(gold.qid)))
  return scores


def _mean_or_none(values: list[float | None]) -> float | None:
  if not values or any(v is None for v in values):
    return None
  return float(np.mean(values))


def _columns(scores: Sequence[WebQAScores]) -> dict[str, float | int | None]:
  return {
      "count": len(scores),
      "retrieval_f1": _mean_or_none([s.retrieval_f1 for s in scores]),
      "qa_fl": _mean_or_none([s.qa_fl for s in scores]),
      "qa_acc": _mean_or_none([s.qa_acc for s in scores]),
      "qa": _mean_or_none([s.qa for s in scores]),
  }


def _summarize_webqa(golds: Sequence[WebQAGold], scores: Sequence[WebQAScores],
                     predictions: Mapping[str, Prediction], fluency_info: Mapping[str, object]) -> dict[str, object]:
  """The metrics report: overall columns, `by_category` (Qcate), `by_query_modality` (image/text), the
  prediction counts and `warnings` about missing or unmatched predictions (also logged)."""
  targets = {_KEYWORDS: 0, _ANSWER_SENTENCE: 0}
  for gold in golds:
    targets[gold.acc_target] += 1
  if targets[_KEYWORDS] and targets[_ANSWER_SENTENCE]:
    acc_target = "mixed"
  else:
    acc_target = _KEYWORDS if targets[_KEYWORDS] else _ANSWER_SENTENCE
  qids = [g.qid for g in golds]
  report: dict[str, object] = {
      "dataset": "webqa",
      "mode": _MODES[acc_target],
      "acc_target": acc_target,
      "acc_target_description": _ACC_TARGET_DESCRIPTIONS[acc_target],
      "acc_target_counts": targets,
      "lemmatizer": lemmatizer.lemmatizer_name(),
      "fluency": dict(fluency_info),
      **coverage_counts(qids, predictions),
      "warnings": coverage_warnings(qids, predictions),
  }
  log_warnings(report["warnings"])
  report.update({k: v for k, v in _columns(scores).items() if k != "count"})
  report["by_category"] = {qcate: _columns([s for s in scores if s.qcate == qcate])
                           for qcate in QCATES if any(s.qcate == qcate for s in scores)}
  modality = {g.qid: g.query_modality for g in golds}
  report["by_query_modality"] = {m: _columns([s for s in scores if modality[s.qid] == m])
                                 for m in ("image", "text") if any(modality[s.qid] == m for s in scores)}
  return report


def evaluate_webqa(golds: Sequence[WebQAGold], predictions: Mapping[str, Prediction],
                   fluency_fn: FluencyFn | None = None,
                   fluency_info: Mapping[str, object] | None = None) -> dict[str, object]:
  """Scores and summarizes a WebQA split. Without `fluency_fn`, qa_fl and qa are None (unavailable)."""
  check_unique_qids(g.qid for g in golds)
  if fluency_info is None:
    fluency_info = {"available": fluency_fn is not None}
  scores = score_webqa(golds, predictions, fluency_fn)
  return _summarize_webqa(golds, scores, predictions, fluency_info)
