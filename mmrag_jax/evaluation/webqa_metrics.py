"""WebQA per-question metrics: keyword accuracy (QA-Acc) and retrieval F1, as defined by the benchmark.

Behaviour follows the official evaluation script (WebQnA/WebQA_Baseline `vlp/eval_1022.py`):

  normalize_text: lowercase; drop punctuation except "."; drop "." unless a digit follows (decimal
  point); drop the articles a/an/the; number words -> digits (word2number, the word "point" excepted);
  lemmatize. A one-character input is only lowercased and number-converted; a one-word input keeps
  its articles.

  Keyword accuracy for one question: both strings are normalized and split into token bags, which are
  then filtered by question category (`Qcate`): color / shape / YesNo keep the *distinct* tokens that
  belong to the published set, number keeps the tokens that parse as int, choose / Others / text keep
  everything. With overlap = |multiset intersection|, P = overlap / |pred|, R = overlap / |target| and
  F1 = 2PR / (P + R + 1e-5); no overlap scores 0. Acc = F1 for color, shape, number, YesNo and
  Acc = R for choose, Others, text.

Deviation: lemmas come from spaCy only when `en_core_web_sm` is installed, otherwise from simplemma
(see `lemmatizer.py`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
import string
from collections.abc import Iterable, Sequence

from word2number import w2n

from mmrag_jax.evaluation import lemmatizer

__all__ = [
    "COLOR_SET", "F1_QCATES", "IMAGE_QCATES", "KeywordScores", "QCATES", "SHAPE_SET", "normalize_text", "retrieval_f1",
    "webqa_keyword_accuracy", "webqa_keyword_bags", "webqa_keyword_scores",
]

COLOR_SET = frozenset({
    "orangebrown", "spot", "yellow", "blue", "rainbow", "ivory", "brown", "gray", "teal", "bluewhite",
    "orangepurple", "black", "white", "gold", "redorange", "pink", "blonde", "tan", "turquoise", "grey",
    "beige", "golden", "orange", "bronze", "maroon", "purple", "bluere", "red", "rust", "violet",
    "transparent", "yes", "silver", "chrome", "green", "aqua",
})

SHAPE_SET = frozenset({
    "globular", "octogon", "ring", "hoop", "octagon", "concave", "flat", "wavy", "shamrock", "cross",
    "cylinder", "cylindrical", "pentagon", "point", "pyramidal", "crescent", "rectangular", "hook", "tube",
    "cone", "bell", "spiral", "ball", "convex", "square", "arch", "h", "cuboid", "step", "rectangle", "dot",
    "oval", "circle", "star", "crosse", "crest", "octagonal", "cube", "triangle", "semicircle", "domeshape",
    "obelisk", "corkscrew", "curve", "circular", "xs", "slope", "pyramid", "round", "bow", "straight",
    "triangular", "heart", "fork", "teardrop", "fold", "curl", "spherical", "diamond", "keyhole", "conical",
    "dome", "sphere", "bellshaped", "rounded", "hexagon", "flower", "globe", "torus",
})

_YESNO_SET = frozenset({"yes", "no"})

# Question categories (Qcate). "text" questions are answered from text sources, all others from images.
QCATES = ("color", "shape", "number", "YesNo", "choose", "Others", "text")
F1_QCATES = frozenset({"color", "shape", "number", "YesNo"})
IMAGE_QCATES = frozenset(QCATES) - {"text"}

_SET_FILTERS = {"color": COLOR_SET, "shape": SHAPE_SET, "YesNo": _YESNO_SET}
_PUNCTUATION_BUT_PERIOD = frozenset(string.punctuation) - {"."}
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_NON_DECIMAL_PERIOD = re.compile(r"\.(?!\d)")
# The official F1 keeps this epsilon in its denominator, so a perfect match scores 0.999995.
_F1_EPSILON = 1e-5


def _check_qcate(qcate: str) -> None:
  if qcate not in QCATES:
    raise ValueError(f"unknown WebQA Qcate {qcate!r}; expected one of {QCATES}")


def _word_to_digits(word: str) -> str:
  if word == "point":  # word2number reads a lone "point" as 0
    return word
  try:
    return str(w2n.word_to_num(word))
  except Exception:  # word2number raises for anything that is not a number word
    return word


def _fix_whitespace_and_numbers(text: str) -> str:
  return " ".join(_word_to_digits(word) for word in text.split())


def _remove_punctuation(text: str) -> str:
  kept = "".join(ch for ch in text if ch not in _PUNCTUATION_BUT_PERIOD)
  return _NON_DECIMAL_PERIOD.sub("", kept)


def normalize_text(text: str) -> str:
  """Official WebQA answer normalization (see the module docstring); returns space-joined tokens.

  Example: "The Two red Apples." -> "2 red apple"; "3.5 meters." -> "3.5 meter"; "A" -> "a".
  """
  return _normalize_text_with(text, lemmatizer.lemmatizer_name())


# Keyed by backend too, so that switching lemmatizers never serves a stale normalization.
@functools.lru_cache(maxsize=1 << 16)
def _normalize_text_with(text: str, backend: str) -> str:
  lowered = text.lower()
  if len(text.strip()) == 1:
    return _fix_whitespace_and_numbers(lowered)
  no_punctuation = _remove_punctuation(lowered)
  if len(text.strip().split()) == 1:
    return lemmatizer.lemmatize(_fix_whitespace_and_numbers(no_punctuation), backend)
  return lemmatizer.lemmatize(_fix_whitespace_and_numbers(_ARTICLES.sub(" ", no_punctuation)), backend)


def _integer_tokens(tokens: Iterable[str]) -> list[str]:
  kept = []
  for token in tokens:
    try:
      kept.append(str(int(token)))
    except ValueError:
      pass
  return kept


def _filter_tokens_by_qcate(tokens: Sequence[str], qcate: str) -> list[str]:
  """Category filter of the official script: set members (deduplicated), integers, or all tokens."""
  _check_qcate(qcate)
  if qcate in _SET_FILTERS:
    # The official code intersects Python sets, so repeated keywords count once.
    return sorted(_SET_FILTERS[qcate].intersection(tokens))
  if qcate == "number":
    return _integer_tokens(tokens)
  return list(tokens)


def webqa_keyword_bags(prediction: str, target: str, qcate: str) -> tuple[list[str], list[str]]:
  """Normalized, category-filtered token bags (pred_tokens, target_tokens) of one question."""
  _check_qcate(qcate)
  pred_tokens = _filter_tokens_by_qcate(normalize_text(prediction).split(), qcate)
  target_tokens = _filter_tokens_by_qcate(normalize_text(target).split(), qcate)
  return pred_tokens, target_tokens


@dataclasses.dataclass(frozen=True)
class KeywordScores:
  """Bag-overlap scores of one prediction against one keyword target, each in [0, 1]."""

  precision: float
  recall: float
  f1: float


def _keyword_scores_from_bags(pred_tokens: Sequence[str], target_tokens: Sequence[str]) -> KeywordScores:
  """P, R and the official epsilon-F1 of two token bags (multiset overlap); 0 when nothing overlaps."""
  overlap = sum((collections.Counter(pred_tokens) & collections.Counter(target_tokens)).values())
  if overlap == 0:
    return KeywordScores(0.0, 0.0, 0.0)
  precision = overlap / len(pred_tokens)
  recall = overlap / len(target_tokens)
  f1 = 2 * precision * recall / (precision + recall + _F1_EPSILON)
  return KeywordScores(precision, recall, f1)


def webqa_keyword_scores(prediction: str, target: str, qcate: str) -> KeywordScores:
  """Precision, recall and F1 of `prediction` against `target` after normalization and filtering."""
  return _keyword_scores_from_bags(*webqa_keyword_bags(prediction, target, qcate))


def _accuracy_from_scores(scores: KeywordScores, qcate: str) -> float:
  """Official per-category rule: F1 for color / shape / number / YesNo, recall otherwise."""
  _check_qcate(qcate)
  return scores.f1 if qcate in F1_QCATES else scores.recall


def webqa_keyword_accuracy(prediction: str, target: str, qcate: str) -> float:
  """QA-Acc of one question in [0, 1]: `target` is Keywords_A (test) or the answer sentence (val)."""
  return _accuracy_from_scores(webqa_keyword_scores(prediction, target, qcate), qcate)


def retrieval_f1(pred_sources: Iterable[object], gold_sources: Iterable[object]) -> float:
  """Per-question retrieval F1 between predicted and gold source ids (image_id / snippet_id).

  Ids are compared as sets (a repeated prediction counts once) after `str()`, so 30000001 and
  "30000001" match. P = |pred & gold| / |pred|, R = |pred & gold| / |gold|, F1 = 2PR / (P + R);
  an empty prediction, an empty gold list or no overlap scores 0. (The baseline code adds 1e-5 to each
  denominator, which lowers its values by about 1e-5; the leaderboard definition is the exact one.)
  """
  pred = {str(source) for source in pred_sources}
  gold = {str(source) for source in gold_sources}
  hits = len(pred & gold)
  if hits == 0:
    return 0.0
  precision = hits / len(pred)
  recall = hits / len(gold)
  return 2 * precision * recall / (precision + recall)
