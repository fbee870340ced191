"""The demo end to end: both stages train, stage 1 ranks, stage 2 answers, every output is written, and
`mode=predict` from the exported policy reproduces the predictions."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from mmrag_jax.data import read_webqa
from mmrag_jax.data.files import iter_json_lines
from mmrag_jax.data.scores import read_stage1_scores, write_stage1_scores
from mmrag_jax.evaluation import cli
from mmrag_jax.recipe.run import run
from tests.recipe.conftest import small_demo_config


def _records(path):
  return [row for _, _, row in iter_json_lines(path)]


def _top_k(scores: dict[str, float], pool: list[str], k: int) -> list[str]:
  """Independent top-k: descending score, ties by pool order."""
  return [cid for _, _, cid in sorted((-scores[c], i, c) for i, c in enumerate(pool))][:k]


def test_demo_writes_every_output(demo_run):
  workdir, summary = demo_run
  for name in ("predictions.jsonl", "metrics.json", "report.html", "webqa_submission.json", "summary.json",
               "training_curves.png", "export/config.json", "export/model.safetensors", "export/tokenizer.json",
               "stage1/export/config.json", "stage1/ranking_train.jsonl", "stage1/ranking_val.jsonl",
               "stage1/recall_val.json", "warmup/metrics.jsonl"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
  rows = _records(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2]
  assert summary["cost"]["train_steps"] == 2 and summary["cost"]["completion_tokens"] > 0


def test_every_val_question_has_a_prediction_and_a_report_card(demo_run):
  workdir, _ = demo_run
  questions = read_webqa(os.path.join(workdir, "data"), "val", verbose=False).questions
  records = _records(os.path.join(workdir, "predictions.jsonl"))
  assert [r["qid"] for r in records] == [q.qid for q in questions]
  with open(os.path.join(workdir, "report.html"), encoding="utf-8") as f:
    html = f.read()
  for q in questions:
    assert f'data-qid="{q.qid}"' in html
  for record, question in zip(records, questions):
    assert {c["id"] for c in record["candidates"]} == {c.id for c in question.candidates}
    assert sorted(record["gold_ids"]) == sorted(question.gold_ids)


def test_metrics_equal_the_official_evaluation_of_the_written_predictions(demo_run):
  workdir, summary = demo_run
  args = cli.build_parser().parse_args([
      "--dataset=webqa", f"--data_dir={os.path.join(workdir, 'data')}", "--split=val",
      f"--predictions={os.path.join(workdir, 'webqa_submission.json')}"])
  official = cli.run(args)
  with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
    ours = json.load(f)
  for key in ("retrieval_f1", "qa_acc"):
    assert np.isclose(ours[key], official[key]) and np.isclose(summary["metrics"][key], official[key])
  assert ours["mode"] == "val" and ours["qa_fl"] is None


def test_stage2_prompts_hold_the_top_k_of_the_stage1_ranking(demo_run):
  workdir, _ = demo_run
  k = small_demo_config().stage2.k
  ranking = read_stage1_scores(os.path.join(workdir, "stage1", "ranking_val.jsonl"))
  questions = {q.qid: q for q in read_webqa(os.path.join(workdir, "data"), "val", verbose=False).questions}
  for record in _records(os.path.join(workdir, "predictions.jsonl")):
    pool = [c.id for c in questions[record["qid"]].candidates]
    assert record["kept_ids"] == _top_k(ranking[record["qid"]], pool, k)
    kept = [c for c in record["candidates"] if c["kept"]]
    assert sorted(c["number"] for c in kept) == list(range(1, len(record["kept_ids"]) + 1))


def test_predict_reproduces_the_predictions_and_follows_a_changed_ranking(demo_run, tmp_path):
  workdir, _ = demo_run
  before = _records(os.path.join(workdir, "predictions.jsonl"))
  config = small_demo_config()
  config.mode = "predict"
  run(config, workdir)
  assert _records(os.path.join(workdir, "predictions.jsonl")) == before

  # A stage-1 run whose ranking is reversed: the stage-2 prompts must follow it.
  stage1 = str(tmp_path / "stage1")
  shutil.copytree(os.path.join(workdir, "stage1", "export"), os.path.join(stage1, "export"))
  reversed_scores = {qid: {cid: 1.0 - s for cid, s in row.items()}
                     for qid, row in read_stage1_scores(os.path.join(workdir, "stage1", "ranking_val.jsonl")).items()}
  write_stage1_scores(os.path.join(stage1, "ranking_val.jsonl"), reversed_scores)
  config = small_demo_config()
  config.mode = "predict"
  config.data.data_dir = os.path.join(workdir, "data")
  config.model.path = os.path.join(workdir, "tiny_model")
  config.stage2.stage1_workdir = stage1
  config.stage2.run_stage1 = False
  run(config, str(tmp_path / "predict"))
  questions = {q.qid: q for q in read_webqa(config.data.data_dir, "val", verbose=False).questions}
  for record in _records(str(tmp_path / "predict" / "predictions.jsonl")):
    pool = [c.id for c in questions[record["qid"]].candidates]
    assert record["kept_ids"] == _top_k(reversed_scores[record["qid"]], pool, config.stage2.k)


def test_predict_on_the_unlabeled_test_split_ranks_it_with_the_stage1_policy(demo_run, tmp_path):
  workdir, _ = demo_run
  config = small_demo_config()
  config.mode = "predict"
  config.data.data_dir = os.path.join(workdir, "data")
  config.data.eval_split = "test"
  config.model.path = os.path.join(workdir, "tiny_model")
  config.stage2.stage1_workdir = os.path.join(workdir, "stage1")
  config.stage2.run_stage1 = False
  config.stage2.init_from = os.path.join(workdir, "export")
  out = tmp_path / "test_split"
  summary = run(config, str(out))
  questions = read_webqa(config.data.data_dir, "test", verbose=False).questions
  ranking = read_stage1_scores(str(out / "ranking_test.jsonl"))
  assert sorted(ranking) == sorted(q.qid for q in questions)
  with open(out / "webqa_submission.json", encoding="utf-8") as f:
    submission = json.load(f)
  assert sorted(submission) == sorted(q.qid for q in questions)
  assert all(set(v) == {"sources", "answer"} for v in submission.values())
  assert not (out / "metrics.json").exists() and summary["metrics"] == {}
  records = _records(str(out / "predictions.jsonl"))
  assert all(r["correct"] is None and r["gold_ids"] is None for r in records)
