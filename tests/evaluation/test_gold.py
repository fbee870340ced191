"""Gold loading scores every annotated question of the split, as the official scripts count them."""

import gzip
import json
import logging
import os
import types

import pytest

from mmrag_jax.data import read_mmqa, read_webqa
from mmrag_jax.data.synthetic import MMQA_PLANTABLE, READER_DEFECTS, WEBQA_PLANTABLE, generate_mmqa, generate_webqa
from mmrag_jax.evaluation.cli import main
from mmrag_jax.evaluation.gold import load_mmqa_gold, load_webqa_gold
from mmrag_jax.evaluation.mmqa_eval import evaluate_mmqa, score_mmqa
from mmrag_jax.evaluation.predictions import Prediction
from mmrag_jax.evaluation.webqa_eval import evaluate_webqa, score_webqa

# Questions a training reader skips although their annotations are fine.
POOL_DEFECTS = ("missing_image", "undecodable_image", "no_candidates", "no_gold", "missing_document")


@pytest.fixture(scope="module")
def mmqa_dev(tmp_path_factory):
  """MMQA whose dev split carries one question of every reader defect: (folder, manifest)."""
  out = str(tmp_path_factory.mktemp("mmqa_dev_planted"))
  return out, generate_mmqa(out, num_train=2, num_dev=6, num_test=0, seed=8, plant_split="dev",
                            plant={kind: 1 for kind in MMQA_PLANTABLE})


@pytest.fixture(scope="module")
def webqa_val(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("webqa_val_planted"))
  return out, generate_webqa(out, num_train=2, num_val=7, num_test=0, seed=9, plant_split="val",
                             plant={kind: 1 for kind in WEBQA_PLANTABLE if kind in READER_DEFECTS})


def official_mmqa_count(data_dir, split):
  """What allenai/multimodalqa's evaluate.py counts: annotated lines, by qid (the no-table subset here)."""
  golds = {}
  with gzip.open(os.path.join(data_dir, f"MMQA_{split}.jsonl.gz"), "rt", encoding="utf-8") as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue  # the official script would stop here; the planted broken line is not a question
      if row.get("answers") and "table" not in row["metadata"]["modalities"]:
        golds[row["qid"]] = row["answers"]
  return len(golds)


def official_webqa_count(data_dir, split):
  """The leaderboard's denominator: every question of the split in the JSON file, by Guid."""
  with open(os.path.join(data_dir, "WebQA_train_val.json"), encoding="utf-8") as f:
    return sum(entry["split"] == split for entry in json.load(f).values())


def test_mmqa_gold_counts_questions_the_reader_cannot_retrieve_for(mmqa_dev):
  data_dir, manifest = mmqa_dev
  golds, skipped = load_mmqa_gold(data_dir, "dev")
  assert len(golds) == official_mmqa_count(data_dir, "dev") == 6 + len(POOL_DEFECTS)
  assert {kind: qids[0] in {g.qid for g in golds} for kind, qids in manifest.planted.items()} == {
      kind: kind in POOL_DEFECTS or kind == "duplicate_id" for kind in MMQA_PLANTABLE}
  assert skipped.as_dict() == {"duplicate_id": 1, "malformed": 1, "table_question": 1}
  read = read_mmqa(data_dir, "dev", verbose=False)
  assert len(read.questions) < len(golds) and "no_gold" in read.skipped.counts


def test_mmqa_question_without_gold_in_its_pool_scores_zero(mmqa_dev):
  data_dir, manifest = mmqa_dev
  golds, _ = load_mmqa_gold(data_dir, "dev")
  read = read_mmqa(data_dir, "dev", verbose=False).questions
  perfect = {q.qid: Prediction(q.qid, q.answers, q.gold_ids) for q in read}
  report = evaluate_mmqa(golds, perfect)
  assert report["num_questions"] == len(golds) and report["num_answered"] == len(read)
  assert report["em"] == pytest.approx(100 * len(read) / len(golds))
  no_gold = manifest.planted["no_gold"][0]
  assert [(s.answered, s.em, s.f1) for s in score_mmqa(golds, perfect) if s.qid == no_gold] == [(False, 0.0, 0.0)]
  assert f"{len(read)} of {len(golds)} questions have a prediction" in report["warnings"][0]


def test_mmqa_gold_sources_are_all_supporting_docs(mmqa_dev):
  data_dir, manifest = mmqa_dev
  golds = {g.qid: g for g in load_mmqa_gold(data_dir, "dev")[0]}
  assert len(golds[manifest.planted["no_gold"][0]].gold_sources) == 1  # a doc outside the pool
  for qid, expected in manifest.questions.items():
    if expected.split == "dev":
      assert list(golds[qid].gold_sources) == expected.gold_ids


def test_webqa_gold_counts_every_entry_of_the_split(webqa_val):
  data_dir, manifest = webqa_val
  golds, skipped = load_webqa_gold(data_dir, "val")
  # A malformed entry here lacks its question text, which scoring does not need: it is scored.
  assert len(golds) == official_webqa_count(data_dir, "val") == 7 + len(manifest.planted) - 1
  assert skipped.as_dict() == {"duplicate_id": 1}
  read = read_webqa(data_dir, "val", verbose=False).questions
  perfect = {q.qid: Prediction(q.qid, q.answers[0], q.gold_ids) for q in read}
  scores = {s.qid: s for s in score_webqa(golds, perfect)}
  for kind in ("no_gold", "no_candidates", "missing_image", "malformed"):
    lost = scores[manifest.planted[kind][0]]
    assert (lost.answered, lost.retrieval_f1, lost.qa_acc) == (False, 0.0, 0.0)
  report = evaluate_webqa(golds, perfect)
  assert report["num_questions"] == len(golds) and report["num_missing_predictions"] == len(golds) - len(read)


def test_repeated_gold_qid_is_named_and_scored_once(mmqa_dev, webqa_val, caplog):
  for (data_dir, manifest), load, split, what in ((mmqa_dev, load_mmqa_gold, "dev", "qid"),
                                                  (webqa_val, load_webqa_gold, "val", "Guid")):
    qid = manifest.planted["duplicate_id"][0]
    with caplog.at_level(logging.WARNING):
      golds, skipped = load(data_dir, split)
    assert [g.qid for g in golds].count(qid) == 1 and skipped.keys["duplicate_id"] == [qid]
    assert f"1 repeated {what}(s), only the first entry of each kept: {qid}" in caplog.text


def test_cli_reports_the_official_denominator_and_its_warnings(mmqa_dev, tmp_path, caplog):
  data_dir, _ = mmqa_dev
  read = read_mmqa(data_dir, "dev", verbose=False).questions
  predictions = tmp_path / "mmqa_predictions.json"
  predictions.write_text(json.dumps({q.qid: list(q.answers) for q in read}))
  output = tmp_path / "metrics.json"
  with caplog.at_level(logging.WARNING):
    assert main(["--dataset=mmqa", f"--data_dir={data_dir}", "--split=dev", f"--predictions={predictions}",
                 f"--output={output}"]) == 0
  report = json.loads(output.read_text())
  assert report["num_questions"] == 6 + len(POOL_DEFECTS) and report["num_predictions"] == len(read)
  assert report["gold_skipped"] == {"duplicate_id": 1, "malformed": 1, "table_question": 1}
  assert report["warnings"][0].startswith(f"{len(read)} of {report['num_questions']} questions have a prediction")
  assert report["warnings"][1].startswith("mmqa/dev gold: 2 of the split's entries not scored "
                                          "(duplicate_id 1, malformed 1); e.g. ")
  assert [r.getMessage() for r in caplog.records if "gold" in r.getMessage() or "prediction" in r.getMessage()
          ] == report["warnings"]


def test_recipe_scores_the_whole_split_unless_its_reading_was_limited():
  from mmrag_jax.recipe.outputs import scored_golds

  golds = [types.SimpleNamespace(qid=q) for q in "abcdef"]
  split = types.SimpleNamespace(questions=[types.SimpleNamespace(qid=q) for q in "ace"])  # b, d, f skipped
  assert [g.qid for g in scored_golds(golds, split, limit=0)] == list("abcdef")
  assert [g.qid for g in scored_golds(golds, split, limit=5)] == list("abcdef")  # the reader reached the end
  assert [g.qid for g in scored_golds(golds, split, limit=3)] == list("abcde")   # it stopped after e
