"""Broken input files: repeated ids are counted and named, unreadable files raise a DataError naming the place."""

import gzip
import logging
import os

import pytest

from mmrag_jax.data import DataError, read_mmqa, read_stage1_scores, read_webqa
from mmrag_jax.data.synthetic import generate_mmqa, generate_webqa
from mmrag_jax.errors import RunError


@pytest.fixture
def webqa_dir(tmp_path):
  manifest = generate_webqa(str(tmp_path), num_train=3, num_val=2, num_test=1, seed=1)
  return str(tmp_path), manifest


@pytest.fixture
def mmqa_dir(tmp_path):
  manifest = generate_mmqa(str(tmp_path), num_train=3, num_dev=2, num_test=1, seed=2, table_fraction=0)
  return str(tmp_path), manifest


def _rewrite(path, edit):
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(edit(data))


def _rewrite_gz(path, edit):
  with gzip.open(path, "rb") as f:
    data = f.read()
  with gzip.open(path, "wb") as f:
    f.write(edit(data))


def test_data_error_is_a_run_error():
  assert issubclass(DataError, RunError) and issubclass(DataError, ValueError)


def test_webqa_repeated_guid_keeps_the_first_entry_and_names_the_key(tmp_path, caplog):
  manifest = generate_webqa(str(tmp_path), num_train=3, num_val=0, num_test=0, plant={"duplicate_id": 1})
  guid = manifest.planted["duplicate_id"][0]
  with caplog.at_level(logging.WARNING):
    data = read_webqa(str(tmp_path), "train", verbose=False)
  assert [q.qid for q in data.questions] == manifest.split_ids("train")
  first = next(q for q in data.questions if q.qid == guid)
  assert first.question == manifest.questions[guid].question  # not the later entry's question
  assert data.skipped.as_dict() == {"duplicate_id": 1} and data.skipped.keys == {"duplicate_id": [guid]}
  assert guid in caplog.text and "WebQA_train_val.json: 1 repeated Guid(s)" in caplog.text
  with pytest.raises(DataError, match=f"WebQA_train_val.json Guid {guid}: duplicate_id"):
    read_webqa(str(tmp_path), "train", strict=True, verbose=False)


def test_mmqa_repeated_qid_keeps_the_first_line_and_names_the_qid(tmp_path, caplog):
  manifest = generate_mmqa(str(tmp_path), num_train=3, num_dev=0, num_test=0, plant={"duplicate_id": 1},
                           table_fraction=0)
  qid = manifest.planted["duplicate_id"][0]
  with caplog.at_level(logging.WARNING):
    data = read_mmqa(str(tmp_path), "train", verbose=False)
  assert [q.qid for q in data.questions] == manifest.split_ids("train")
  assert data.questions[0].question == manifest.questions[qid].question
  assert data.skipped.keys == {"duplicate_id": [qid]}
  assert f"MMQA_train.jsonl.gz: 1 repeated qid(s), only the first entry of each kept: {qid}" in caplog.text
  with pytest.raises(DataError, match=rf"MMQA_train.jsonl.gz line 4 qid {qid}: duplicate_id \(the qid of line 1"):
    read_mmqa(str(tmp_path), "train", strict=True, verbose=False)


def test_webqa_json_syntax_error_names_file_line_and_column(webqa_dir):
  data_dir, _ = webqa_dir
  path = os.path.join(data_dir, "WebQA_train_val.json")
  _rewrite(path, lambda data: data.replace(b'{"Guid"', b'{"Guid"\n  ,,', 1))
  with pytest.raises(DataError, match=r"WebQA_train_val.json: not valid JSON: Expecting ':' delimiter at line 2 "
                                      r"column 3"):
    read_webqa(data_dir, "train", verbose=False)


def test_webqa_non_utf8_byte_names_file_and_offset(webqa_dir):
  data_dir, _ = webqa_dir
  path = os.path.join(data_dir, "WebQA_train_val.json")
  with open(path, "rb") as f:
    offset = f.read().index(b"Guid")
  _rewrite(path, lambda data: data[:offset] + b"\xff" + data[offset + 1:])
  with pytest.raises(DataError, match=f"WebQA_train_val.json: not UTF-8 text: byte 0xff at byte offset {offset}$"):
    read_webqa(data_dir, "val", verbose=False)


def test_mmqa_non_utf8_line_is_malformed_with_its_byte_offset(mmqa_dir):
  data_dir, manifest = mmqa_dir
  path = os.path.join(data_dir, "MMQA_train.jsonl.gz")
  with gzip.open(path, "rb") as f:
    lines = f.read().splitlines(keepends=True)
  offset = len(lines[0]) + lines[1].index(b"question")
  _rewrite_gz(path, lambda data: data[:offset] + b"\xc3\x28" + data[offset + 2:])
  data = read_mmqa(data_dir, "train", verbose=False)
  ids = manifest.split_ids("train")
  assert [q.qid for q in data.questions] == ids[:1] + ids[2:]
  assert data.skipped.as_dict() == {"malformed": 1}
  assert data.skipped.examples["malformed"] == [
      f"{path} line 2: malformed (not UTF-8 text: byte 0xc3 at byte offset {offset})"]
  with pytest.raises(DataError, match=f"line 2: malformed \\(not UTF-8 text: byte 0xc3 at byte offset {offset}\\)"):
    read_mmqa(data_dir, "train", strict=True, verbose=False)


@pytest.mark.parametrize("name", ["MMQA_train.jsonl.gz", "MMQA_texts.jsonl.gz"])
def test_truncated_gzip_names_the_file(mmqa_dir, name):
  data_dir, _ = mmqa_dir
  path = os.path.join(data_dir, name)
  _rewrite(path, lambda data: data[:len(data) * 2 // 3])
  with pytest.raises(DataError, match=f"{name}: truncated or corrupt gzip data after line"):
    read_mmqa(data_dir, "train", verbose=False)


def test_file_that_is_not_gzip_names_the_file(mmqa_dir):
  data_dir, _ = mmqa_dir
  path = os.path.join(data_dir, "MMQA_dev.jsonl.gz")
  _rewrite(path, lambda data: b'{"qid": "plain text, not gzip"}\n')
  with pytest.raises(DataError, match="MMQA_dev.jsonl.gz: truncated or corrupt gzip data after line 0"):
    read_mmqa(data_dir, "dev", verbose=False)


def test_score_file_non_utf8_line_names_the_line_and_offset(tmp_path):
  path = tmp_path / "ranking_val.jsonl"
  path.write_bytes(b'{"qid": "a", "scores": {"1": 0.5}}\n{"qid": "b\xff", "scores": {}}\n')
  with pytest.raises(DataError, match=r"ranking_val.jsonl line 2: not UTF-8 text: byte 0xff at byte offset 45"):
    read_stage1_scores(str(path))


def test_bad_image_index_line_names_the_file_and_line(webqa_dir):
  data_dir, _ = webqa_dir
  path = os.path.join(data_dir, "imgs.lineidx")
  _rewrite(path, lambda data: b"\n".join(b"\xff" + line if i == 2 else line for i, line in enumerate(data.split(b"\n"))))
  with pytest.raises(DataError, match=r"imgs.lineidx line 3: b'\\xff\d+' is not an integer byte offset"):
    read_webqa(data_dir, "val", verbose=False)
