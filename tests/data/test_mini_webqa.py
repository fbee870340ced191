"""Mini-WebQA: the rules remove exactly the planted bad questions; the report says which rule removed what."""

import json
import os

from mmrag_jax.data import Question, read_webqa
from mmrag_jax.data.mini_webqa import (QUALITY_RULES, READER_RULES, REPORT_FILE, MiniWebQAConfig, build_mini_webqa,
                                       normalize_question, stratified_subsample)
from mmrag_jax.data.synthetic import MINI_WEBQA_DEFECTS, READER_DEFECTS


def test_rules_remove_exactly_the_planted_questions(webqa_planted, tmp_path):
  data_dir, manifest = webqa_planted
  logged = []
  reports = build_mini_webqa(data_dir, str(tmp_path), MiniWebQAConfig(), log=logged.append)
  train = reports["train"]
  planted = {kind: ids for kind, ids in manifest.planted.items() if kind in READER_DEFECTS + MINI_WEBQA_DEFECTS}
  assert {rule: ids for rule, ids in train.removed.items() if ids} == planted
  assert list(train.removed) == list(READER_RULES + QUALITY_RULES)
  clean_train = manifest.split_ids("train")
  # A duplicate_id plant repeats a valid question's Guid: that first entry stays.
  expected_kept = [q for q in clean_train if not any(q in ids for kind, ids in planted.items() if kind != "duplicate_id")]
  assert train.kept == expected_kept
  assert train.input_questions == len(clean_train) + sum(len(planted[kind]) for kind in READER_DEFECTS
                                                         if kind in planted)
  assert reports["val"].kept == manifest.split_ids("val") and not any(reports["val"].removed.values())
  assert "duplicate_question         1" in logged[0]


def test_output_folder_reads_like_webqa(webqa_planted, tmp_path):
  data_dir, _ = webqa_planted
  reports = build_mini_webqa(data_dir, str(tmp_path), MiniWebQAConfig(), log=lambda _: None)
  for split in ("train", "val"):
    data = read_webqa(str(tmp_path), split, image_check="decode", verbose=False)
    assert [q.qid for q in data.questions] == reports[split].kept and data.skipped.total == 0
  assert len(read_webqa(str(tmp_path), "test", verbose=False).questions) == 5
  with open(os.path.join(tmp_path, REPORT_FILE)) as f:
    saved = json.load(f)
  assert saved["splits"]["train"]["removed"]["long_answer"] == reports["train"].removed["long_answer"]


def _q(qid, category):
  return Question(qid=qid, question=qid, answers=("a",), category=category, modalities=("image",), candidates=(),
                  gold_ids=(), split="train", dataset="webqa")


def test_stratified_subsample_keeps_category_shares_by_largest_remainder():
  questions = [_q(f"a{i}", "a") for i in range(6)] + [_q(f"b{i}", "b") for i in range(3)] + [_q("c0", "c")]
  # target 5 of 10: exact shares a 3.0, b 1.5, c 0.5 -> floors 3, 1, 0; the one spare slot goes to the
  # first of the tied remainders (b).
  chosen = stratified_subsample(questions, 5, seed=0)
  assert [q.category for q in chosen].count("a") == 3
  assert [q.category for q in chosen].count("b") == 2
  assert [q.category for q in chosen].count("c") == 0
  assert chosen == sorted(chosen, key=questions.index)  # file order kept
  assert stratified_subsample(questions, 5, seed=0) == chosen
  assert stratified_subsample(questions, 20, seed=0) == questions


def test_subsample_to_target_size_in_the_build(webqa_planted, tmp_path):
  data_dir, _ = webqa_planted
  reports = build_mini_webqa(data_dir, str(tmp_path), MiniWebQAConfig(target_size=7, seed=1), log=lambda _: None)
  assert len(reports["train"].kept) == 7 and reports["train"].kept_after_rules > 7
  # 15 survivors: color 3 (with the kept truncated-image question), the six other Qcates 2 each; shares
  # of 7 are 1.4 and 0.93 -> floors 1 and 0, the six spare slots go to the larger remainders.
  assert reports["train"].qcate_after == {cate: 1 for cate in reports["train"].qcate_after}
  assert len(reports["train"].qcate_after) == 7


def test_normalize_question_ignores_case_punctuation_and_spacing():
  assert normalize_question('What  color is the "Roof"?') == normalize_question("what color is the roof")
