"""Stage-1 score files: one JSON line per question with a relevance score per candidate.

  {"qid": "d5bd…", "scores": {"30000012": 0.93, "d5bd…_3": 0.04, …}}

Scores are P("yes") from the stage-1 judge (any monotone relevance score works). Stage 2 reads them to
pick the hardest negatives for training and the top-k candidates at inference.
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

from mmrag_jax.data.files import iter_json_lines
from mmrag_jax.data.records import DataError

__all__ = ["Stage1Scores", "read_stage1_scores", "write_stage1_scores"]

Stage1Scores = Mapping[str, Mapping[str, float]]


def write_stage1_scores(path: str, scores: Stage1Scores) -> None:
  """Writes {qid: {candidate_id: score}} as JSONL (one line per question, qids sorted)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for qid in sorted(scores):
      f.write(json.dumps({"qid": qid, "scores": {k: float(v) for k, v in scores[qid].items()}}) + "\n")


def read_stage1_scores(path: str) -> dict[str, dict[str, float]]:
  """Reads a score file; raises `DataError` naming the line of a malformed or non-UTF-8 line, a repeated
  qid or a NaN score."""
  scores: dict[str, dict[str, float]] = {}
  for _, where, obj in iter_json_lines(path):
    try:
      qid, row = str(obj["qid"]), obj["scores"]
      parsed = {str(k): float(v) for k, v in row.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
      raise DataError(f"{where}: not a {{'qid', 'scores'}} line ({e})") from e
    if qid in scores:
      raise DataError(f"{where}: qid {qid} appears twice")
    if any(math.isnan(v) for v in parsed.values()):
      raise DataError(f"{where}: NaN score for qid {qid}")
    scores[qid] = parsed
  return scores
