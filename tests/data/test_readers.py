"""Readers on synthetic files in the official formats: the records are exactly what was generated."""

import hashlib
import os

import numpy as np
import pytest

from mmrag_jax.data import DataError, decode_image, read_mmqa, read_webqa
from mmrag_jax.data.synthetic import (COLORS, MINI_WEBQA_DEFECTS, MMQA_PLANTABLE, READER_DEFECTS, WEBQA_PLANTABLE,
                                      draw_scene, generate_mmqa, generate_webqa)


def _assert_matches(question, expected):
  assert question.qid == expected.qid
  assert question.question == expected.question
  assert list(question.answers) == expected.answers
  assert question.category == expected.category
  assert list(question.modalities) == expected.modalities
  assert [c.id for c in question.candidates] == expected.candidate_ids
  assert (None if question.gold_ids is None else list(question.gold_ids)) == expected.gold_ids


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_webqa_reader_returns_exactly_the_generated_questions(webqa_planted, split):
  data_dir, manifest = webqa_planted
  questions = read_webqa(data_dir, split, image_check="decode", verbose=False).questions
  assert [q.qid for q in questions] == manifest.split_ids(split)
  for q in questions:
    _assert_matches(q, manifest.questions[q.qid])
    assert q.split == split and q.dataset == "webqa"


def test_webqa_test_split_has_no_gold(webqa_planted):
  data_dir, _ = webqa_planted
  questions = read_webqa(data_dir, "test", verbose=False).questions
  assert questions and all(q.gold_ids is None and q.answers == () and not q.is_labeled for q in questions)
  with pytest.raises(ValueError, match="no gold labels"):
    questions[0].candidate_labels()


def test_webqa_candidates_carry_facts_and_captions(webqa_planted):
  data_dir, _ = webqa_planted
  q = read_webqa(data_dir, "val", verbose=False).questions[0]
  for c in q.candidates:
    if c.kind == "image":
      assert c.image_ref == c.id and int(c.id) >= 30_000_000 and c.text == f"A photo of {c.title}."
    else:
      assert c.image_ref is None and c.title in c.text


def test_webqa_image_bytes_decode_to_the_drawn_scenes(webqa_planted):
  data_dir, manifest = webqa_planted
  store = read_webqa(data_dir, "val", verbose=False).images
  assert len(manifest.scenes) >= 8
  for image_id, scene in manifest.scenes.items():
    image = np.asarray(decode_image(store.read_bytes(image_id)), np.int32)
    drawn = np.asarray(draw_scene(scene), np.int32)
    assert image.shape == (scene.height, scene.width, 3)
    error = np.abs(image - drawn).mean()
    assert error == 0 if scene.image_format == "PNG" else error < 3
    # Independent of the drawing code: the centre of every shape has the named color.
    for x0, y0, x1, y1 in scene.boxes():
      centre = image[(y0 + y1) // 2, (x0 + x1) // 2]
      assert np.abs(centre - np.array(COLORS[scene.color])).max() <= 24


def test_webqa_bad_inputs_are_skipped_and_counted_per_reason(webqa_planted):
  data_dir, manifest = webqa_planted
  data = read_webqa(data_dir, "train", image_check="decode", verbose=False)
  expected = {kind: ids for kind, ids in manifest.planted.items() if kind in READER_DEFECTS}
  assert data.skipped.as_dict() == {kind: len(ids) for kind, ids in expected.items()}
  assert data.skipped.keys == expected
  kept = {q.qid for q in data.questions}
  for kind in MINI_WEBQA_DEFECTS + ("truncated_image",):
    assert set(manifest.planted[kind]) <= kept  # readers keep what only the Mini-WebQA rules remove


def test_webqa_exists_check_cannot_see_undecodable_images(webqa_planted):
  data_dir, manifest = webqa_planted
  data = read_webqa(data_dir, "train", image_check="exists", verbose=False)
  assert "undecodable_image" not in data.skipped.counts
  assert manifest.planted["undecodable_image"][0] in {q.qid for q in data.questions}
  assert data.skipped.counts["missing_image"] == 1


def test_truncated_jpeg_still_decodes(webqa_planted):
  data_dir, manifest = webqa_planted
  data = read_webqa(data_dir, "train", verbose=False)
  question = next(q for q in data.questions if q.qid == manifest.planted["truncated_image"][0])
  truncated = [c for c in question.candidates if c.kind == "image" and c.id not in manifest.scenes]
  assert len(truncated) == 1
  assert decode_image(data.images.read_bytes(truncated[0].image_ref)).size[0] > 0


def test_skip_summary_is_printed_and_returned(webqa_planted, capsys):
  data_dir, _ = webqa_planted
  data = read_webqa(data_dir, "train", image_check="decode")
  printed = capsys.readouterr().out
  assert "webqa/train: skipped 6" in printed and "no_gold: 1" in printed and "duplicate_id: 1" in printed
  assert data.skipped.summary() in printed


@pytest.mark.parametrize("kind", [k for k in WEBQA_PLANTABLE if k in READER_DEFECTS])
def test_webqa_strict_mode_raises_naming_file_and_guid(tmp_path, kind):
  manifest = generate_webqa(str(tmp_path), num_train=2, num_val=0, num_test=0, plant={kind: 1})
  guid = manifest.planted[kind][0]
  assert len(read_webqa(str(tmp_path), "train", image_check="decode", verbose=False).questions) == 2
  with pytest.raises(DataError, match=f"WebQA_train_val.json Guid {guid}: {kind}"):
    read_webqa(str(tmp_path), "train", image_check="decode", strict=True, verbose=False)


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_mmqa_reader_returns_exactly_the_generated_questions(mmqa_planted, split):
  data_dir, manifest = mmqa_planted
  data = read_mmqa(data_dir, split, image_check="decode", verbose=False)
  assert [q.qid for q in data.questions] == manifest.split_ids(split)
  for q in data.questions:
    _assert_matches(q, manifest.questions[q.qid])
    assert "table" not in q.modalities
  tables = [e for e in manifest.table_questions.values() if e.split == split]
  assert data.skipped.counts["table_question"] == len(tables) > 0
  if split == "test":
    assert all(q.gold_ids is None and q.answers == () for q in data.questions)


def test_mmqa_categories_cover_text_image_and_mixed_questions(mmqa_planted):
  data_dir, _ = mmqa_planted
  questions = read_mmqa(data_dir, "train", verbose=False).questions
  assert {q.modalities for q in questions} == {("text",), ("image",), ("image", "text")}
  for q in questions:
    assert len([c for c in q.candidates if c.kind == "text"]) == 10
    assert len(q.answer_modalities) == len(q.answers)


def test_mmqa_include_tables_adds_the_table_candidate(mmqa_planted):
  data_dir, manifest = mmqa_planted
  questions = read_mmqa(data_dir, "dev", include_tables=True, verbose=False).questions
  by_id = {q.qid: q for q in questions}
  tables = [e for e in manifest.table_questions.values() if e.split == "dev"]
  for expected in tables:
    _assert_matches(by_id[expected.qid], expected)
    table = by_id[expected.qid].candidates[10]
    assert table.kind == "text" and table.text.startswith("Landmarks and their cities. Name | City | Founded")


def test_mmqa_image_files_decode_to_the_drawn_scenes(mmqa_planted):
  data_dir, manifest = mmqa_planted
  store = read_mmqa(data_dir, "dev", verbose=False).images
  for path, scene in manifest.scenes.items():
    image = np.asarray(decode_image(store.read_bytes(path)), np.int32)
    error = np.abs(image - np.asarray(draw_scene(scene), np.int32)).mean()
    assert error == 0 if scene.image_format == "PNG" else error < 3


def test_mmqa_bad_inputs_are_skipped_and_counted_per_reason(mmqa_planted):
  data_dir, manifest = mmqa_planted
  data = read_mmqa(data_dir, "train", image_check="decode", verbose=False)
  counts = dict(data.skipped.counts)
  assert counts.pop("table_question") >= 1
  assert counts == {kind: len(ids) for kind, ids in manifest.planted.items()}
  for kind, ids in manifest.planted.items():
    if kind != "malformed":  # an unparseable line has no qid to report
      assert data.skipped.keys[kind] == ids


@pytest.mark.parametrize("kind", MMQA_PLANTABLE)
def test_mmqa_strict_mode_raises_naming_file_and_line(tmp_path, kind):
  generate_mmqa(str(tmp_path), num_train=2, num_dev=0, num_test=0, plant={kind: 1}, table_fraction=0)
  with pytest.raises(DataError, match=rf"MMQA_train.jsonl.gz line 3.*: {kind}"):
    read_mmqa(str(tmp_path), "train", image_check="decode", strict=True, verbose=False)


def test_table_subset_filter_never_raises_in_strict_mode(mmqa_planted):
  data_dir, _ = mmqa_planted
  data = read_mmqa(data_dir, "dev", strict=True, verbose=False)
  assert data.skipped.counts["table_question"] >= 1


def _digest(folder):
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(folder)):
    for name in sorted(files):
      with open(os.path.join(root, name), "rb") as f:
        h.update(name.encode() + f.read())
  return h.hexdigest()


def test_generators_are_deterministic_given_a_seed(tmp_path):
  for name, generate, kwargs in (("webqa", generate_webqa, dict(num_val=2)), ("mmqa", generate_mmqa, dict(num_dev=2))):
    digests = []
    for run, seed in (("a", 7), ("b", 7), ("c", 8)):
      out = str(tmp_path / f"{name}_{run}")
      generate(out, num_train=6, num_test=2, seed=seed, plant={"malformed": 1}, **kwargs)
      digests.append(_digest(out))
    assert digests[0] == digests[1] != digests[2]
