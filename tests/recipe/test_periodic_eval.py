"""train.eval_every: every that many loop steps the policy is scored on the eval split, logged as eval/* rows
of metrics.jsonl; the last step's row equals the final evaluation of the same policy."""

from __future__ import annotations

import json
import math
import os

import pytest

from mmrag_jax.recipe.run import run
from mmrag_jax.rl.metrics_log import read_metrics
from tests.recipe.conftest import small_demo_config


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
  """(workdir, summary) of the small demo, both stages with train.eval_every=1 (2 loop steps each)."""
  c = small_demo_config()
  c.train.eval_every = 1
  c.stage1.train.eval_every = 1
  workdir = str(tmp_path_factory.mktemp("eval_every"))
  return workdir, run(c, workdir)


def _eval_rows(workdir):
  return [{k: v for k, v in row.items() if k.startswith("eval/")} for row in read_metrics(workdir)]


def test_stage1_logs_recall_on_the_eval_split_every_step(eval_run):
  workdir, _ = eval_run
  stage1 = os.path.join(workdir, "stage1")
  rows = _eval_rows(stage1)
  ks = small_demo_config().stage1.scorer.recall_ks
  assert [sorted(row) for row in rows] == [sorted(f"eval/recall@{k}" for k in ks)] * 2
  assert all(0.0 <= v <= 1.0 for row in rows for v in row.values())
  with open(os.path.join(stage1, "summary.json"), encoding="utf-8") as f:
    final = json.load(f)["metrics"]
  assert rows[-1] == {f"eval/recall@{k}": final[f"stage1/val/recall@{k}"] for k in ks}


def test_stage2_logs_the_answer_metrics_on_the_eval_split_every_step(eval_run):
  workdir, summary = eval_run
  rows = _eval_rows(workdir)
  assert [sorted(row) for row in rows] == [["eval/qa_acc", "eval/retrieval_f1"]] * 2  # qa_fl, qa: no BART
  assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for row in rows for v in row.values())
  assert rows[-1] == {"eval/qa_acc": summary["metrics"]["qa_acc"],
                      "eval/retrieval_f1": summary["metrics"]["retrieval_f1"]}
