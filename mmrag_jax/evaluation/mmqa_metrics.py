"""MultimodalQA list EM / F1, as defined by the benchmark (allenai/multimodalqa `baselines/evaluate.py`,
itself derived from the DROP evaluation).

An answer is a list of spans; the whole gold `answers` list of a question is ONE multi-span reference.
Each span is split on " " or "-"; every piece is lowercased, stripped of punctuation unless it parses
as a float, numbers (digits or number words) are rewritten as str(float(x)), and articles a/an/the are
dropped. Empty pieces vanish.

  list_em: 1 if the normalized predicted and gold spans are equal as sets and equal in count.
  list_f1: each span becomes a set of tokens; predicted and gold bags are aligned one-to-one by the
    Hungarian algorithm on bag F1, where a gold bag holding numbers only scores against a predicted bag
    that shares one of them; the aligned F1s are averaged over max(|gold|, |pred|) slots and rounded to
    2 decimals (numpy rounding).

Scores here are in [0, 1]; the benchmark reports their mean x 100.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Sequence

import numpy as np
from word2number import w2n

__all__ = [
    "Answer", "aligned_bag_f1", "answer_token_bags", "hop_type", "is_number", "list_em", "list_f1", "normalize_answer",
]

# Question types of MultimodalQA (`metadata.type`). Single-hop types read one modality; every other
# type composes, intersects or compares two hops.
_SINGLE_HOP_QUESTION_TYPES = frozenset({"TextQ", "TableQ", "ImageQ", "ImageListQ"})
_MULTI_HOP_QUESTION_TYPES = frozenset({
    "Compose(TableQ,ImageListQ)", "Compose(TextQ,ImageListQ)", "Compose(ImageQ,TableQ)",
    "Compose(ImageQ,TextQ)", "Compose(TextQ,TableQ)", "Compose(TableQ,TextQ)",
    "Intersect(TableQ,TextQ)", "Intersect(ImageListQ,TableQ)", "Intersect(ImageListQ,TextQ)",
    "Compare(Compose(TableQ,ImageQ),TableQ)", "Compare(Compose(TableQ,ImageQ),Compose(TableQ,TextQ))",
    "Compare(TableQ,Compose(TableQ,TextQ))",
})

Answer = str | Sequence[str]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_SPAN_SEPARATOR = re.compile(" |-")


def hop_type(question_type: str) -> str:
  """'single_hop' for TextQ / TableQ / ImageQ / ImageListQ, 'multi_hop' for every other type."""
  return "single_hop" if question_type in _SINGLE_HOP_QUESTION_TYPES else "multi_hop"


def is_number(text: str) -> bool:
  """The MultimodalQA number test: a normalized token is a number iff float() parses it."""
  try:
    float(text)
    return True
  except ValueError:
    return False


def _word_number(text: str) -> int | float | None:
  try:
    return w2n.word_to_num(text)
  # IndexError: word2number fails this way on some tab-separated word runs, where the official
  # script would crash; such a piece is kept as text.
  except (ValueError, IndexError):
    return None


def _normalize_number(text: str) -> str:
  if is_number(text):
    return str(float(text))
  value = _word_number(text)
  return text if value is None else str(float(value))


def _normalize_piece(piece: str) -> str:
  lowered = piece.lower()
  if not is_number(lowered):
    lowered = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", _normalize_number(lowered)).split())


@functools.lru_cache(maxsize=1 << 16)
def normalize_answer(text: str) -> str:
  """Official normalization of one answer span, e.g. "The Forty-two Cats!" -> "40.0 2.0 cats"."""
  pieces = (_normalize_piece(piece) for piece in _SPAN_SEPARATOR.split(text))
  return " ".join(piece for piece in pieces if piece.strip()).strip()


def _as_spans(answer: Answer) -> list[str]:
  if isinstance(answer, str):
    return [answer]
  if not all(isinstance(span, str) for span in answer):
    raise TypeError(f"answer spans must be strings, got {answer!r}")
  return list(answer)


def answer_token_bags(answer: Answer) -> tuple[list[str], list[frozenset[str]]]:
  """(normalized spans, token set per span) of a single answer or a list of answer spans."""
  spans = [normalize_answer(span) for span in _as_spans(answer)]
  return spans, [frozenset(span.split()) for span in spans]


def list_em(predicted: Answer, gold: Answer) -> float:
  """1.0 if the normalized span sets are equal and have the same number of spans, else 0.0."""
  predicted_spans, _ = answer_token_bags(predicted)
  gold_spans, _ = answer_token_bags(gold)
  same = set(predicted_spans) == set(gold_spans) and len(predicted_spans) == len(gold_spans)
  return 1.0 if same else 0.0


def _bag_f1(predicted_bag: frozenset[str], gold_bag: frozenset[str]) -> float:
  overlap = len(predicted_bag & gold_bag)
  precision = overlap / len(predicted_bag) if predicted_bag else 1.0
  recall = overlap / len(gold_bag) if gold_bag else 1.0
  if precision == 0.0 and recall == 0.0:
    return 0.0
  return 2 * precision * recall / (precision + recall)


def _numbers_agree(gold_bag: frozenset[str], predicted_bag: frozenset[str]) -> bool:
  gold_numbers = {token for token in gold_bag if is_number(token)}
  if not gold_numbers:
    return True
  return any(is_number(token) and token in gold_numbers for token in predicted_bag)


def aligned_bag_f1(predicted_bags: Sequence[frozenset[str]],
                   gold_bags: Sequence[frozenset[str]]) -> np.ndarray:
  """F1 per slot after the optimal one-to-one alignment: [max(|gold|, |pred|)], unmatched slots 0."""
  scores = np.zeros([len(gold_bags), len(predicted_bags)])
  for gold_index, gold_bag in enumerate(gold_bags):
    for pred_index, predicted_bag in enumerate(predicted_bags):
      if _numbers_agree(gold_bag, predicted_bag):
        scores[gold_index, pred_index] = _bag_f1(predicted_bag, gold_bag)
  # Imported here: scipy.optimize takes ~0.5 s to import and most users of this module never align.
  from scipy.optimize import linear_sum_assignment

  rows, columns = linear_sum_assignment(-scores)
  slot_scores = np.zeros([max(len(gold_bags), len(predicted_bags))])
  slot_scores[rows] = scores[rows, columns]
  return slot_scores


def list_f1(predicted: Answer, gold: Answer) -> float:
  """Official list F1 in [0, 1], rounded to 2 decimals. Raises ValueError for an empty gold list."""
  _, predicted_bags = answer_token_bags(predicted)
  _, gold_bags = answer_token_bags(gold)
  if not gold_bags:
    raise ValueError("gold answer has no spans")
  slot_scores = aligned_bag_f1(predicted_bags, gold_bags)
  return float(np.round(np.mean(slot_scores), 2))
