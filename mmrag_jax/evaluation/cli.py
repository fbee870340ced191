"""`python -m mmrag_jax.evaluation`: score a prediction file with the official WebQA / MMQA metrics.

  python -m mmrag_jax.evaluation --dataset=webqa --data_dir=DIR --split=val \\
      --predictions=workdir/predictions.jsonl [--bart=PATH] [--output=metrics.json]

Prints a table and writes the metrics JSON (`retrieval_f1`, `qa_fl`, `qa_acc`, `qa` for WebQA; `em`,
`f1` for MMQA; `by_category`; `mode`; the prediction counts and `warnings`, also printed to stderr, e.g.
"0 of 4966 questions have a prediction"). Without --bart, WebQA QA-FL and QA are reported as unavailable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from mmrag_jax.data.records import DataError
from mmrag_jax.evaluation import lemmatizer
from mmrag_jax.evaluation.gold import add_gold_notes, load_mmqa_gold, load_webqa_gold
from mmrag_jax.evaluation.mmqa_eval import evaluate_mmqa
from mmrag_jax.evaluation.predictions import (FORMATS, PredictionFileError, read_predictions,
                                              write_mmqa_predictions, write_webqa_submission)
from mmrag_jax.evaluation.webqa_eval import evaluate_webqa

__all__ = ["build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m mmrag_jax.evaluation", description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", required=True, choices=("webqa", "mmqa"))
  parser.add_argument("--data_dir", required=True, help="folder with the benchmark's annotation files")
  parser.add_argument("--split", required=True, help="webqa: train | val | test; mmqa: train | dev | test")
  parser.add_argument("--predictions", required=True,
                      help="predictions.jsonl, a WebQA leaderboard file or an MMQA prediction file")
  parser.add_argument("--prediction_format", default="auto", choices=FORMATS)
  parser.add_argument("--output", default=None, help="where to write the metrics JSON")
  parser.add_argument("--bart", default=None,
                      help="WebQA QA-FL: local BART checkpoint directory (facebook/bart-large-cnn)")
  parser.add_argument("--bart_weights", default=None,
                      help="ParaBank weights (bart.pth); default: BART_DIR/bart.pth when that file exists")
  parser.add_argument("--device", default="cpu", help="torch device for BARTScore, e.g. cuda:0")
  parser.add_argument("--bart_batch_size", type=int, default=16)
  parser.add_argument("--lemmatizer", default="auto", choices=lemmatizer.BACKENDS,
                      help="WebQA normalization lemmatizer; auto = spaCy en_core_web_sm when installed")
  parser.add_argument("--include_tables", action="store_true",
                      help="mmqa: score table questions too (default: the no-table subset)")
  parser.add_argument("--submission", default=None,
                      help="also write the predictions in the benchmark's official submission format here")
  return parser


def _fluency_setup(args: argparse.Namespace):
  """(fluency function or None, description recorded in the report)."""
  if args.bart is None:
    return None, {"available": False, "reason": "no --bart checkpoint given"}
  # Imported only here: torch is an optional dependency that only QA-FL needs.
  from mmrag_jax.evaluation.bartscore import PARABANK_WEIGHTS_FILE, BartScorer

  weights = args.bart_weights
  default_weights = os.path.join(args.bart, PARABANK_WEIGHTS_FILE)
  if weights is None and os.path.isfile(default_weights):
    weights = default_weights
  scorer = BartScorer(args.bart, weights=weights, device=args.device, batch_size=args.bart_batch_size,
                      progress=True)
  return scorer.fluency, {"available": True, "checkpoint": os.path.abspath(args.bart),
                          "weights": None if weights is None else os.path.abspath(weights)}


def _fmt(value: object, scale: str = "{:.4f}") -> str:
  return "n/a" if value is None else scale.format(value)


def _table(rows: Sequence[tuple[str, Mapping[str, object]]], columns: Sequence[tuple[str, str]],
           number_format: str) -> str:
  header = f"{'group':<28}{'count':>7}" + "".join(f"{title:>11}" for title, _ in columns)
  lines = [header, "-" * len(header)]
  for name, values in rows:
    lines.append(f"{name:<28}{values['count']:>7}"
                 + "".join(f"{_fmt(values.get(key), number_format):>11}" for _, key in columns))
  return "\n".join(lines)


def _format_report(report: Mapping[str, object]) -> str:
  """The human-readable table of a metrics report."""
  overall = dict(report, count=report["num_questions"])
  lines = []
  if report["dataset"] == "webqa":
    columns = [("Retrieval", "retrieval_f1"), ("QA-FL", "qa_fl"), ("QA-Acc", "qa_acc"), ("QA", "qa")]
    lines.append(f"WebQA  mode={report['mode']}: {report['acc_target_description']}; "
                 f"lemmatizer={report['lemmatizer']}")
    fluency = report["fluency"]
    if not fluency.get("available"):
      lines.append(f"QA-FL / QA unavailable ({fluency.get('reason', 'no BART checkpoint')})")
    rows = [("all", overall)] + [(f"Qcate {k}", v) for k, v in report["by_category"].items()]
    rows += [(f"{k} queries", v) for k, v in report["by_query_modality"].items()]
    number_format = "{:.4f}"
  else:
    columns = [("EM", "em"), ("F1", "f1")]
    if "retrieval_f1" in report:
      columns.append(("Retrieval", "retrieval_f1"))
    lines.append(f"MultimodalQA  mode={report['mode']}: {report['mode_description']}")
    rows = [("all", overall)] + [(f"type {k}", v) for k, v in report["by_category"].items()]
    rows += [(f"answer {k}", v) for k, v in report["by_answer_modality"].items()]
    rows += [(k.replace("_", "-"), v) for k, v in report["by_hop"].items()]
    number_format = "{:.2f}"
  lines.append(f"questions {report['num_questions']}: answered {report['num_answered']}, "
               f"missing {report['num_missing_predictions']} (scored 0); predictions {report['num_predictions']}, "
               f"unmatched {report['num_unmatched_predictions']}")
  lines.append(_table(rows, columns, number_format))
  return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, object]:
  """Loads gold and predictions, scores them, writes the requested files; returns the report."""
  predictions = read_predictions(args.predictions, args.prediction_format)
  if args.dataset == "webqa":
    lemmatizer.set_lemmatizer(args.lemmatizer)
    golds, skipped = load_webqa_gold(args.data_dir, args.split)
    fluency_fn, fluency_info = _fluency_setup(args)
    report = evaluate_webqa(golds, predictions, fluency_fn, fluency_info)
  else:
    golds, skipped = load_mmqa_gold(args.data_dir, args.split, include_tables=args.include_tables)
    report = evaluate_mmqa(golds, predictions)
    report["subset"] = "all" if args.include_tables else "no_table"
  report = add_gold_notes({"split": args.split, "predictions": os.path.abspath(args.predictions), **report},
                          skipped)
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
      f.write("\n")
  if args.submission:
    writer = write_webqa_submission if args.dataset == "webqa" else write_mmqa_predictions
    writer(predictions.values(), args.submission)
  return report


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  # The report's warnings (missing predictions, unscored gold entries) reach stderr as they happen.
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
  try:
    report = run(args)
  except (FileNotFoundError, DataError, PredictionFileError, ValueError, ImportError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(_format_report(report))
  return 0
