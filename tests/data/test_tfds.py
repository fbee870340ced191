"""TFDS build from the official-format files -> `tfds.data_source` returns the same records."""

import dataclasses
import itertools
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmrag_jax.data import read_mmqa, read_webqa
from mmrag_jax.data.pipeline import stage1_pipeline
from mmrag_jax.data.tfds_builders import build_dataset, tfds_questions
from mmrag_jax.data.tfds_features import example_to_question


def _strip_bytes(question):
  """The record without inline image bytes, for comparison with reader output."""
  return dataclasses.replace(question, candidates=tuple(dataclasses.replace(c, image_bytes=None)
                                                        for c in question.candidates))


@pytest.mark.parametrize("dataset,splits", [("webqa", ("train", "val", "test")), ("mmqa", ("train", "dev", "test"))])
def test_tfds_round_trip_returns_the_reader_records(request, tmp_path, dataset, splits):
  data_dir, _ = request.getfixturevalue(f"{dataset}_planted")
  read = read_webqa if dataset == "webqa" else read_mmqa
  builder = build_dataset(dataset, manual_dir=data_dir, data_dir=str(tmp_path))
  sources = tfds.data_source(dataset, data_dir=str(tmp_path))
  assert set(sources) == set(splits)
  for split in splits:
    expected = read(data_dir, split, image_check="decode", verbose=False)
    records = [example_to_question(sources[split][i]) for i in range(len(sources[split]))]
    assert len(records) == len(expected.questions) > 0
    by_id = {q.qid: q for q in records}
    for q in expected.questions:
      assert _strip_bytes(by_id[q.qid]) == q
      for c in by_id[q.qid].candidates:
        if c.kind == "image":
          assert c.image_bytes == expected.images.read_bytes(c.image_ref)
    # The build skipped what a decoding reader skips, with the same counts.
    assert builder.skip_reports[split].as_dict() == expected.skipped.as_dict()


def test_tfds_questions_gives_random_access_questions(webqa_planted, tmp_path):
  data_dir, manifest = webqa_planted
  build_dataset("webqa", manual_dir=data_dir, data_dir=str(tmp_path))
  questions = tfds_questions("webqa", str(tmp_path), "test")
  assert len(questions) == len(manifest.split_ids("test"))
  assert {questions[i].qid for i in range(len(questions))} == set(manifest.split_ids("test"))
  assert all(questions[i].gold_ids is None for i in range(len(questions)))
  with pytest.raises(IndexError):
    questions[len(questions)]


def test_pipeline_reads_images_inline_from_tfds_records(webqa_planted, tmp_path, pipeline_config):
  data_dir, manifest = webqa_planted
  build_dataset("webqa", manual_dir=data_dir, data_dir=str(tmp_path))
  questions = pickle.loads(pickle.dumps(tfds_questions("webqa", str(tmp_path), "val")))  # as workers get it
  scoring = dataclasses.replace(pipeline_config, num_epochs=1, shuffle=False)
  batches = list(itertools.islice(stage1_pipeline(questions, None, scoring, negatives_per_positive=None), 100))
  rows = [(b.meta["qid"][i], b.meta["candidate_id"][i], b.meta["candidate_kind"][i])
          for b in batches for i in np.flatnonzero(b.prompts.valid)]
  expected = [(qid, cid) for qid in manifest.split_ids("val") for cid in manifest.questions[qid].candidate_ids]
  assert sorted((q, c) for q, c, _ in rows) == sorted(expected)
  assert sum(len(b.prompts.image_grid_thw) for b in batches) == sum(kind == "image" for _, _, kind in rows) > 0
