"""Gold references of a stage-2 example, and the answer token bags the answer reward compares.

Normalization is the official metrics' own (`mmrag_jax.evaluation`): WebQA bags come from
`webqa_keyword_bags` (normalized, category-filtered, repeats kept: a multiset), MultimodalQA bags from
`answer_token_bags` (one token set per answer span). The kernels only count overlaps.
"""

from __future__ import annotations

import dataclasses
import numbers

from mmrag_jax.evaluation import mmqa_metrics, webqa_metrics
from mmrag_jax.formats.parse import split_mmqa_answer

__all__ = ["AnswerBags", "MMQAAnswer", "Stage2Reference", "WebQAAnswer", "answer_bags"]


@dataclasses.dataclass(frozen=True)
class WebQAAnswer:
  """target: Keywords_A when available, else the answer sentence A (the val approximation);
  qcate: the question category, one of webqa_metrics.QCATES."""

  target: str
  qcate: str

  def __post_init__(self) -> None:
    if self.qcate not in webqa_metrics.QCATES:
      raise ValueError(f"WebQAAnswer.qcate must be one of {webqa_metrics.QCATES}, got {self.qcate!r}")


@dataclasses.dataclass(frozen=True)
class MMQAAnswer:
  """spans: the whole gold `answers` list of the question (one multi-span reference)."""

  spans: tuple[str, ...]

  def __post_init__(self) -> None:
    if not self.spans or not all(isinstance(span, str) for span in self.spans):
      raise ValueError(f"MMQAAnswer.spans must be a non-empty tuple of strings, got {self.spans!r}")


@dataclasses.dataclass(frozen=True)
class Stage2Reference:
  """Gold data of one stage-2 prompt.

  num_candidates: k, the candidates shown in the prompt, numbered 1..k.
  gold_numbers: the gold candidates among them, as the 1-based numbers shown (may be empty).
  answer: the answer reference, which also selects the dataset's answer metric.
  """

  num_candidates: int
  gold_numbers: tuple[int, ...]
  answer: WebQAAnswer | MMQAAnswer

  def __post_init__(self) -> None:
    if not isinstance(self.num_candidates, numbers.Integral) or self.num_candidates < 1:
      raise ValueError(f"Stage2Reference.num_candidates must be a positive int, got {self.num_candidates!r}")
    bad = [n for n in self.gold_numbers
           if not isinstance(n, numbers.Integral) or not 1 <= n <= self.num_candidates]
    if bad or len(set(self.gold_numbers)) != len(self.gold_numbers):
      raise ValueError(f"Stage2Reference.gold_numbers must be distinct ints in 1..{self.num_candidates}, "
                       f"got {self.gold_numbers!r}")
    if not isinstance(self.answer, (WebQAAnswer, MMQAAnswer)):
      raise ValueError(f"Stage2Reference.answer must be a WebQAAnswer or MMQAAnswer, got {self.answer!r}")


@dataclasses.dataclass(frozen=True)
class AnswerBags:
  """Token bags of one prediction and its reference, per answer span.

  pred_spans / gold_spans: normalized span strings (compared whole by list EM);
  pred_bags / gold_bags: tokens of each span (a multiset for WebQA, a set for MultimodalQA);
  gold_numbers: for each gold span, which of its tokens are numbers (list F1's number rule).
  """

  pred_spans: tuple[str, ...]
  pred_bags: tuple[tuple[str, ...], ...]
  gold_spans: tuple[str, ...]
  gold_bags: tuple[tuple[str, ...], ...]
  gold_numbers: tuple[tuple[bool, ...], ...]


def answer_bags(prediction: str, reference: WebQAAnswer | MMQAAnswer,
                mmqa_span_separator: str | None = None) -> AnswerBags:
  """Normalized token bags of `prediction` (the answer block text) against its reference."""
  if isinstance(reference, WebQAAnswer):
    pred_tokens, target_tokens = webqa_metrics.webqa_keyword_bags(prediction, reference.target,
                                                                  reference.qcate)
    return AnswerBags((prediction,), (tuple(pred_tokens),), (reference.target,), (tuple(target_tokens),),
                      (tuple(False for _ in target_tokens),))
  pred_spans, pred_sets = mmqa_metrics.answer_token_bags(split_mmqa_answer(prediction, mmqa_span_separator))
  gold_spans, gold_sets = mmqa_metrics.answer_token_bags(list(reference.spans))
  gold_bags = tuple(tuple(sorted(bag)) for bag in gold_sets)
  return AnswerBags(tuple(pred_spans), tuple(tuple(sorted(bag)) for bag in pred_sets), tuple(gold_spans),
                    gold_bags, tuple(tuple(mmqa_metrics.is_number(token) for token in bag) for bag in gold_bags))

