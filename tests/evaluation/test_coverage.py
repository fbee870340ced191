"""Prediction files that cover none or part of the gold: the report and the log say so."""

import json
import logging

import pytest

from mmrag_jax.evaluation.cli import main
from mmrag_jax.evaluation.mmqa_eval import MMQAGold, evaluate_mmqa
from mmrag_jax.evaluation.predictions import Prediction, PredictionFileError, read_predictions
from mmrag_jax.evaluation.webqa_eval import WebQAGold, evaluate_webqa

GOLDS = [MMQAGold(q, ("Paris",), "TextQ", "text") for q in ("m1", "m2", "m3", "m4")]


@pytest.mark.parametrize("name, content", [("p.jsonl", ""), ("p.json", ""), ("p.json", "{}"), ("p.json", " \n")])
def test_empty_prediction_files_hold_no_predictions(tmp_path, name, content):
  path = tmp_path / name
  path.write_text(content)
  assert read_predictions(path) == {}


def test_no_prediction_at_all_is_a_warning_in_report_and_log(caplog):
  with caplog.at_level(logging.WARNING):
    report = evaluate_mmqa(GOLDS, {})
  warning = "0 of 4 questions have a prediction: no predictions were given (an empty file or {}); every score is 0"
  assert report["warnings"] == [warning] and warning in caplog.text
  assert (report["num_answered"], report["num_predictions"], report["em"]) == (0, 0, 0.0)


def test_predictions_of_another_split_are_a_warning():
  report = evaluate_webqa([WebQAGold("c", "color", ("red",), ())], {"x": Prediction("x", "red"),
                                                                    "y": Prediction("y", "red")})
  assert report["warnings"] == ["0 of 1 questions have a prediction: none of its 2 predictions names a question "
                                "of this split (another split or dataset?); every score is 0"]


def test_partial_coverage_names_missing_and_unmatched_questions():
  report = evaluate_mmqa(GOLDS, {q: Prediction(q, "Paris") for q in ("m1", "m3", "other")})
  assert report["warnings"] == [
      "2 of 4 questions have a prediction; 2 without one score 0 (e.g. m2, m4)",
      "1 predictions name no question of this split and are ignored (e.g. other)"]
  assert (report["num_answered"], report["num_predictions"], report["num_unmatched_predictions"]) == (2, 3, 1)


def test_full_coverage_has_no_warning():
  assert evaluate_mmqa(GOLDS, {g.qid: Prediction(g.qid, "Paris") for g in GOLDS})["warnings"] == []


def test_repeated_gold_qid_is_named():
  with pytest.raises(ValueError, match="repeated qid: m2"):
    evaluate_mmqa(GOLDS + [GOLDS[1]], {})
  with pytest.raises(ValueError, match="repeated qid: c"):
    evaluate_webqa([WebQAGold("c", "color", ("red",), ())] * 2, {})


def test_cli_with_an_empty_prediction_file_warns(tmp_path, gold_files, caplog):
  data_dir = gold_files.write_mmqa_dir(str(tmp_path / "mmqa"), [gold_files.mmqa_line("m1", "TextQ", [("Paris", "text")])])
  predictions = tmp_path / "empty.json"
  predictions.write_text("{}")
  output = tmp_path / "metrics.json"
  with caplog.at_level(logging.WARNING):
    assert main(["--dataset=mmqa", f"--data_dir={data_dir}", "--split=dev", f"--predictions={predictions}",
                 f"--output={output}"]) == 0
  report = json.loads(output.read_text())
  assert report["warnings"][0].startswith("0 of 1 questions have a prediction") and report["em"] == 0.0
  assert "0 of 1 questions have a prediction" in caplog.text


def test_a_key_repeated_in_a_json_prediction_file_is_named(tmp_path):
  path = tmp_path / "mmqa_predictions.json"
  path.write_text('{"m1": "Paris", "m2": "Rome", "m1": "London"}')
  with pytest.raises(PredictionFileError, match="key 'm1': duplicate prediction for question 'm1'"):
    read_predictions(path)


def test_non_utf8_prediction_files_name_the_byte_offset(tmp_path):
  jsonl = tmp_path / "p.jsonl"
  jsonl.write_bytes(b'{"qid": "a", "answer": "x"}\n{"qid": "b", "answer": "\xe9"}\n')
  with pytest.raises(PredictionFileError, match=r"p.jsonl line 2: not UTF-8 text: byte 0xe9 at byte offset 52"):
    read_predictions(jsonl)
  submission = tmp_path / "p.json"
  submission.write_bytes(b'{"a": "caf\xe9"}')
  with pytest.raises(PredictionFileError, match=r"p.json: not UTF-8 text: byte 0xe9 at byte offset 10"):
    read_predictions(submission)


def test_report_page_shows_the_warnings(tmp_path):
  from mmrag_jax.evaluation.report import write_report

  path = write_report(str(tmp_path / "report.html"), [], {"em": 0.0, "warnings": ["0 of 4 questions have <none>"]},
                      images=None)
  with open(path, encoding="utf-8") as f:
    html = f.read()
  assert '<ul class="warnings" id="metrics-warnings"><li>0 of 4 questions have &lt;none&gt;</li></ul>' in html
