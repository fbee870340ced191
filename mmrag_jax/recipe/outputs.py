"""Run outputs: the rich predictions.jsonl, the official submission file, metrics.json, report.html, the
training curves and summary.json (what `python -m mmrag_jax.sweep` collects)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from mmrag_jax.data.records import Question
from mmrag_jax.data.scores import Stage1Scores
from mmrag_jax.evaluation.gold import add_gold_notes, load_mmqa_gold, load_webqa_gold
from mmrag_jax.evaluation.mmqa_eval import evaluate_mmqa, score_mmqa
from mmrag_jax.evaluation.predictions import Prediction, write_mmqa_predictions, write_webqa_submission
from mmrag_jax.evaluation.webqa_eval import evaluate_webqa, score_webqa
from mmrag_jax.recipe.context import RunDir, Split, is_main_process, write_json
from mmrag_jax.recipe.settings import DataSettings

__all__ = [
    "SUMMARY_FILE", "as_predictions", "cost_summary", "evaluate_split", "headline_metrics", "scored_golds",
    "write_curves", "write_split_outputs",
]

_log = logging.getLogger(__name__)

_PREDICTIONS_FILE = "predictions.jsonl"
_SUBMISSION_FILES = {"webqa": "webqa_submission.json", "mmqa": "mmqa_predictions.json"}
_METRICS_FILE = "metrics.json"
_REPORT_FILE = "report.html"
_CURVES_FILE = "training_curves.png"
SUMMARY_FILE = "summary.json"
_WEBQA_KEYS = ("retrieval_f1", "qa_fl", "qa_acc", "qa")
_MMQA_KEYS = ("em", "f1", "retrieval_f1")
_CORRECT_THRESHOLD = 0.5  # a question counts as correct in the report when its answer score reaches this


def as_predictions(parsed: Mapping[str, Mapping[str, Any]]) -> dict[str, Prediction]:
  return {qid: Prediction(qid=qid, answer=p["answer"] if isinstance(p["answer"], str) else tuple(p["answer"]),
                          sources=tuple(p["sources"])) for qid, p in parsed.items()}


def _fluency(bart_dir: str):
  if not bart_dir:
    return None, {"available": False, "reason": "no BART checkpoint given (config.predict.bart)"}
  from mmrag_jax.evaluation.bartscore import BartScorer  # needs torch: the optional `fluency` extra

  return BartScorer(bart_dir, progress=True).fluency, {"available": True, "checkpoint": bart_dir}


def scored_golds(golds: Sequence[Any], split: Split, limit: int) -> list[Any]:
  """The gold questions a run is scored on: all of the split (the official denominator, questions the
  reader skipped included, as misses), or, when `limit` cut the reading short, those of the file up
  to the last question read."""
  if not limit or len(split.questions) < limit:
    return list(golds)
  read = {q.qid for q in split.questions}
  last = max((i for i, g in enumerate(golds) if g.qid in read), default=-1)
  return list(golds[:last + 1])


def evaluate_split(split: Split, predictions: Mapping[str, Prediction], data: DataSettings, bart: str
                   ) -> tuple[dict[str, Any] | None, dict[str, float]]:
  """Official metrics of a labeled split and each question's answer score (WebQA QA-Acc / MMQA F1, in
  [0, 1]); (None, {}) on an unlabeled split. Questions of the split the reader skipped (e.g. no gold
  source in the pool) count, with score 0; `data.max_eval_questions` limits them to the part read.
  bart: a BART checkpoint for WebQA's QA-FL ('' = none)."""
  if not any(q.is_labeled for q in split.questions):
    return None, {}
  if data.dataset == "webqa":
    golds, skipped = load_webqa_gold(data.data_dir, split.name)
    golds = scored_golds(golds, split, data.max_eval_questions)
    fluency_fn, fluency_info = _fluency(bart)
    report = evaluate_webqa(golds, predictions, fluency_fn, fluency_info)
    per_question = {s.qid: s.qa_acc for s in score_webqa(golds, predictions)}
  else:
    golds, skipped = load_mmqa_gold(data.data_dir, split.name)
    golds = scored_golds(golds, split, data.max_eval_questions)
    report = evaluate_mmqa(golds, predictions)
    per_question = {s.qid: s.f1 for s in score_mmqa(golds, predictions)}
  return add_gold_notes({"split": split.name, **report}, skipped), per_question


def _question_record(question: Question, scores: Mapping[str, float], parsed: Mapping[str, Any],
                     answer_score: float | None) -> dict[str, Any]:
  """One question's explanation record (the schema `mmrag_jax.evaluation.report` renders)."""
  kept = list(parsed.get("kept_ids", ()))
  number = {cid: i + 1 for i, cid in enumerate(kept)}
  gold = set(question.gold_ids or ())
  order = sorted(range(len(question.candidates)),
                 key=lambda i: (-scores.get(question.candidates[i].id, -math.inf), i))
  candidates = [{
      "id": cand.id, "kind": cand.kind, "title": cand.title, "text": cand.text, "image_ref": cand.image_ref,
      "stage1_score": float(scores.get(cand.id, 0.0)), "kept": cand.id in number, "number": number.get(cand.id),
      "gold": (cand.id in gold) if question.is_labeled else None,
  } for cand in (question.candidates[i] for i in order)]
  return {
      "qid": question.qid, "dataset": question.dataset, "category": question.category,
      "question": question.question, "answer": parsed["answer"], "sources": list(parsed["sources"]),
      "gold_answers": list(question.answers), "gold_ids": list(question.gold_ids) if question.is_labeled else None,
      "candidates": candidates, "kept_ids": kept, "reasoning": parsed["reasoning"],
      "evidence_numbers": list(parsed["evidence_numbers"]), "completion": parsed["completion"],
      "format_ok": bool(parsed["format_ok"]), "answer_score": answer_score,
      "correct": None if answer_score is None else bool(answer_score >= _CORRECT_THRESHOLD),
  }


def _write_jsonl(path: str, records: Sequence[Mapping[str, Any]]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_split_outputs(run: RunDir, split: Split, scores: Stage1Scores, parsed: Mapping[str, Mapping[str, Any]], *,
                        data: DataSettings, bart: str, report_html: bool,
                        extra_metrics: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
  """Scores the split (when labeled) and writes predictions, submission, metrics and (with `report_html`) the
  report, whose metrics table also shows `extra_metrics`, e.g. the stage-1 recall@k.

  Returns the metrics report (None for an unlabeled split).
  """
  predictions = as_predictions(parsed)
  report, per_question = evaluate_split(split, predictions, data, bart)
  records = [_question_record(q, scores.get(q.qid, {}), parsed[q.qid], per_question.get(q.qid))
             for q in split.questions if q.qid in parsed]
  if not is_main_process():
    return report
  _write_jsonl(run.path(_PREDICTIONS_FILE), records)
  writer = write_webqa_submission if data.dataset == "webqa" else write_mmqa_predictions
  writer(predictions.values(), run.path(_SUBMISSION_FILES[data.dataset]))
  if report is not None:
    write_json(run.path(_METRICS_FILE), report)
  if report_html:
    from mmrag_jax.evaluation.report import write_report

    shown = {**(report or {"split": split.name, "labeled": False}), **(extra_metrics or {})}
    write_report(run.path(_REPORT_FILE), records, shown,
                 images=split.images, title=f"MMRAG-RFT {data.dataset} {split.name}")
  return report


def write_curves(run: RunDir) -> str | None:
  """training_curves.png from metrics.jsonl, when the run trained."""
  metrics = run.path("metrics.jsonl")
  if not is_main_process() or not os.path.isfile(metrics):
    return None
  from mmrag_jax.evaluation.curves import plot_training_curves

  return plot_training_curves(metrics, run.path(_CURVES_FILE))


def cost_summary(history: Sequence[Mapping[str, float]], *, total_time_s: float, num_devices: int,
                 num_params: int) -> dict[str, Any]:
  """The cost block of summary.json from the training loop's metric rows."""
  step_times = [row["time/step"] for row in history if row.get("time/step") is not None]
  return {
      "train_steps": len(history),
      "completion_tokens": float(sum(row.get("completion_tokens", 0.0) or 0.0 for row in history)),
      "prompt_tokens": float(sum(row.get("prompt_tokens", 0.0) or 0.0 for row in history)),
      "mean_step_time_s": (sum(step_times) / len(step_times)) if step_times else None,
      "train_time_s": float(sum(step_times)),
      "total_time_s": float(total_time_s),
      "num_devices": int(num_devices),
      "num_params": int(num_params),
  }


def headline_metrics(dataset: str, report: Mapping[str, Any] | None) -> dict[str, float | None]:
  """The dataset's headline metrics of an `evaluate_split` report (WEBQA_KEYS / MMQA_KEYS); {} for None."""
  keys = _WEBQA_KEYS if dataset == "webqa" else _MMQA_KEYS
  return {key: report.get(key) for key in keys if key in report} if report is not None else {}
