"""Which gold questions a prediction file covers, and the warnings a metrics report carries about it.

Every split-level score is a mean over ALL gold questions, a missing prediction scoring 0, so a file
that predicts nothing (empty, `{}`, or keyed by the ids of another split) scores exactly 0 everywhere.
That is never silent: the report's `warnings` say "0 of N questions have a prediction", and they are
logged as well.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["check_unique_qids", "coverage_counts", "coverage_warnings", "log_warnings"]

_log = logging.getLogger(__name__)
_SHOWN_IDS = 5  # ids quoted in one warning


def _some(ids: Sequence[str]) -> str:
  more = f", ... ({len(ids) - _SHOWN_IDS} more)" if len(ids) > _SHOWN_IDS else ""
  return ", ".join(ids[:_SHOWN_IDS]) + more


def check_unique_qids(qids: Iterable[str]) -> None:
  """Raises ValueError naming the qids that occur more than once among the gold questions."""
  repeated = [qid for qid, n in collections.Counter(qids).items() if n > 1]
  if repeated:
    raise ValueError(f"gold questions contain a repeated qid: {_some(repeated)}")


def coverage_counts(gold_qids: Sequence[str], predictions: Mapping[str, object]) -> dict[str, int]:
  """num_questions, num_answered (gold questions with a prediction), num_missing_predictions,
  num_predictions and num_unmatched_predictions (predictions for no gold question)."""
  answered = sum(qid in predictions for qid in gold_qids)
  return {"num_questions": len(gold_qids), "num_answered": answered,
          "num_missing_predictions": len(gold_qids) - answered, "num_predictions": len(predictions),
          "num_unmatched_predictions": len(predictions) - answered}


def coverage_warnings(gold_qids: Sequence[str], predictions: Mapping[str, object]) -> list[str]:
  """The warnings about missing and unmatched predictions (none when every question has exactly one)."""
  counts = coverage_counts(gold_qids, predictions)
  n, answered = counts["num_questions"], counts["num_answered"]
  warnings = []
  if answered == 0:
    why = ("no predictions were given (an empty file or {})" if not predictions else
           f"none of its {len(predictions)} predictions names a question of this split (another split or dataset?)")
    warnings.append(f"0 of {n} questions have a prediction: {why}; every score is 0")
  elif answered < n:
    missing = [qid for qid in gold_qids if qid not in predictions]
    warnings.append(f"{answered} of {n} questions have a prediction; {len(missing)} without one score 0 "
                    f"(e.g. {_some(missing)})")
  if answered and counts["num_unmatched_predictions"]:
    gold = set(gold_qids)
    unmatched = [qid for qid in predictions if qid not in gold]
    warnings.append(f"{len(unmatched)} predictions name no question of this split and are ignored "
                    f"(e.g. {_some(unmatched)})")
  return warnings


def log_warnings(warnings: Iterable[str]) -> None:
  for warning in warnings:
    _log.warning("%s", warning)
