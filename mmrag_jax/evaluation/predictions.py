"""Prediction files: our predictions.jsonl and the two official submission formats.

  predictions.jsonl (ours, one object per line; extra keys such as "explanation" are ignored):
      {"qid": "d5bd...", "answer": "The roof is red.", "sources": ["30000012", "d5bd..._1"]}
    `answer` is a string, or a list of strings for multi-span MultimodalQA answers; `sources` lists
    the cited source ids, most relevant first (may be empty or absent).
  WebQA leaderboard: {guid: {"sources": [image_id | snippet_id, ...], "answer": "..."}}
  MultimodalQA official: {qid: "answer" | ["span", ...]}

`read_predictions` tells the formats apart by extension (.jsonl) and by the JSON value types. An empty
file holds no predictions (every question then scores 0, and the metrics report warns about it).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from typing import Any

from mmrag_jax.data.files import iter_json_lines, load_json_object
from mmrag_jax.data.records import DataError
from mmrag_jax.validation import is_int

__all__ = [
    "FORMATS", "Prediction", "PredictionFileError", "read_predictions", "write_mmqa_predictions",
    "write_predictions_jsonl", "write_webqa_submission",
]

FORMATS = ("auto", "jsonl", "webqa", "mmqa")


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One question's prediction: the answer (string or tuple of spans) and the cited source ids."""

  qid: str
  answer: str | tuple[str, ...]
  sources: tuple[str, ...] = ()

  @property
  def first_answer(self) -> str:
    """The single answer string WebQA scores (the first span of a list answer, "" for none)."""
    if isinstance(self.answer, str):
      return self.answer
    return self.answer[0] if self.answer else ""

  @property
  def answer_spans(self) -> tuple[str, ...]:
    """The answer as a tuple of spans (MultimodalQA)."""
    return (self.answer,) if isinstance(self.answer, str) else self.answer


class PredictionFileError(DataError):
  """A prediction file that cannot be read; the message names the file and the line or key."""


def _parse_answer(value: Any, where: str) -> str | tuple[str, ...]:
  if isinstance(value, str):
    return value
  if isinstance(value, list) and all(isinstance(span, str) for span in value):
    return tuple(value)
  raise PredictionFileError(f"{where}: 'answer' must be a string or a list of strings, got {value!r}")


def _parse_sources(value: Any, where: str) -> tuple[str, ...]:
  if value is None:
    return ()
  if not isinstance(value, list) or not all(isinstance(s, str) or is_int(s) for s in value):
    raise PredictionFileError(f"{where}: 'sources' must be a list of ids (strings or integers), got {value!r}")
  return tuple(str(source) for source in value)


def _add(predictions: dict[str, Prediction], prediction: Prediction, where: str) -> None:
  if prediction.qid in predictions:
    raise PredictionFileError(f"{where}: duplicate prediction for question {prediction.qid!r}")
  predictions[prediction.qid] = prediction


def _read_jsonl(path: str) -> dict[str, Prediction]:
  predictions: dict[str, Prediction] = {}
  for _, where, record in iter_json_lines(path, PredictionFileError):
    for key in ("qid", "answer"):
      if key not in record:
        raise PredictionFileError(f"{where}: missing key {key!r}")
    if not (isinstance(record["qid"], str) or is_int(record["qid"])):
      raise PredictionFileError(f"{where}: 'qid' must be a string, got {record['qid']!r}")
    prediction = Prediction(qid=str(record["qid"]), answer=_parse_answer(record["answer"], where),
                            sources=_parse_sources(record.get("sources"), where))
    _add(predictions, prediction, where)
  return predictions


def _from_webqa_submission(raw: list[tuple[str, Any]], path: str) -> dict[str, Prediction]:
  predictions: dict[str, Prediction] = {}
  for guid, value in raw:
    where = f"{path} key {guid!r}"
    if not isinstance(value, dict) or "answer" not in value:
      raise PredictionFileError(f"{where}: expected {{'sources': [...], 'answer': '...'}}, got {value!r}")
    _add(predictions, Prediction(qid=guid, answer=_parse_answer(value["answer"], where),
                                 sources=_parse_sources(value.get("sources"), where)), where)
  return predictions


def _from_mmqa_predictions(raw: list[tuple[str, Any]], path: str) -> dict[str, Prediction]:
  predictions: dict[str, Prediction] = {}
  for qid, value in raw:
    where = f"{path} key {qid!r}"
    _add(predictions, Prediction(qid=qid, answer=_parse_answer(value, where)), where)
  return predictions


def _is_blank(path: str) -> bool:
  """An empty or whitespace-only file: no predictions rather than a JSON syntax error."""
  if os.path.getsize(path) > 4096:
    return False
  with open(path, "rb") as f:
    return not f.read().strip()


def read_predictions(path: str | os.PathLike[str], file_format: str = "auto") -> dict[str, Prediction]:
  """Reads predictions keyed by question id.

  Args:
    path: the file.
    file_format: "jsonl" (ours), "webqa" (leaderboard submission), "mmqa" (official predictions) or
      "auto": ".jsonl" files are ours; a JSON object whose values are objects is a WebQA submission,
      one whose values are strings or lists is an MMQA prediction file.

  Raises:
    FileNotFoundError; PredictionFileError naming the file and line / key of the first bad entry (a
    question predicted twice included), or the byte offset of a non-UTF-8 byte. An empty file gives {}.
  """
  path = os.fspath(path)
  if file_format not in FORMATS:
    raise ValueError(f"file_format must be one of {FORMATS}, got {file_format!r}")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"prediction file not found: {path}")
  if file_format == "jsonl" or (file_format == "auto" and path.endswith(".jsonl")):
    return _read_jsonl(path)
  if _is_blank(path):
    return {}
  raw = load_json_object(path, "question id", PredictionFileError,
                         hint="; a JSON-lines file needs the .jsonl extension")
  if file_format == "auto":
    file_format = "webqa" if raw and all(isinstance(v, dict) for _, v in raw) else "mmqa"
  if file_format == "webqa":
    return _from_webqa_submission(raw, path)
  return _from_mmqa_predictions(raw, path)


def _write_json(obj: Any, path: str | os.PathLike[str]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, ensure_ascii=False, indent=1)
    f.write("\n")


def write_predictions_jsonl(predictions: Iterable[Prediction], path: str | os.PathLike[str]) -> None:
  """Writes our predictions.jsonl, one {"qid", "answer", "sources"} object per line."""
  with open(path, "w", encoding="utf-8") as f:
    for p in predictions:
      answer = p.answer if isinstance(p.answer, str) else list(p.answer)
      f.write(json.dumps({"qid": p.qid, "answer": answer, "sources": list(p.sources)}, ensure_ascii=False))
      f.write("\n")


def _webqa_source_id(source: str) -> str | int:
  # The leaderboard file lists image ids as integers and snippet ids as strings.
  return int(source) if source.isdigit() else source


def write_webqa_submission(predictions: Iterable[Prediction], path: str | os.PathLike[str]) -> None:
  """Writes the WebQA leaderboard file {guid: {"sources": [...], "answer": "..."}}."""
  _write_json({p.qid: {"sources": [_webqa_source_id(s) for s in p.sources], "answer": p.first_answer}
               for p in predictions}, path)


def write_mmqa_predictions(predictions: Iterable[Prediction], path: str | os.PathLike[str]) -> None:
  """Writes the official MultimodalQA file {qid: answer} (a list for multi-span answers)."""
  _write_json({p.qid: p.answer if isinstance(p.answer, str) else list(p.answer) for p in predictions}, path)
