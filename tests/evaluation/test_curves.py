"""Training curves: the PNG is real and shows the data; bad metrics files fail with the file and line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from mmrag_jax.evaluation.curves import default_curve_keys, metric_series, plot_training_curves, read_metrics_jsonl

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LINE_COLOR = np.array([31, 119, 180])  # matplotlib's first colour cycle entry, "#1f77b4"


def _write_lines(path, lines: list[str]) -> str:
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return str(path)


def _training_rows(num_steps: int = 20, eval_every: int = 5) -> list[dict]:
  rows = []
  for step in range(1, num_steps + 1):
    row = {"step": step, "reward/total": 0.2 + 0.03 * step, "reward/format": 0.5 + 0.02 * step,
           "reward/answer": 0.1 * math.sin(step), "completion_length": 100.0 + 3 * step,
           "update/loss": 1.0 / step, "update/kl": 0.01 * step, "time/step": 2.0}
    if step % eval_every == 0:
      row["eval/qa_acc"] = 0.1 * step / eval_every
    rows.append(row)
  return rows


@pytest.fixture
def metrics_file(tmp_path) -> str:
  return _write_lines(tmp_path / "metrics.jsonl", [json.dumps(r) for r in _training_rows()])


def _line_pixels(png_path: str) -> int:
  pixels = np.asarray(Image.open(png_path).convert("RGB")).astype(int)
  return int((np.abs(pixels - LINE_COLOR).max(axis=-1) < 30).sum())


def test_default_keys_follow_the_display_order():
  rows = _training_rows() + [{"step": 21, "reward/unused": None, "eval/zzz": 0.5}]
  assert default_curve_keys(rows) == ["reward/total", "reward/answer", "reward/format", "completion_length",
                                      "update/loss", "eval/qa_acc", "eval/zzz"]


def test_plot_writes_a_nonblank_png(metrics_file, tmp_path):
  out = str(tmp_path / "plots" / "curves.png")
  assert plot_training_curves(metrics_file, out) == out
  with open(out, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  image = Image.open(out)
  assert image.format == "PNG"
  width, height = image.size
  assert 600 <= width <= 2400 and 200 <= height <= 1600
  pixels = np.asarray(image.convert("RGB")).astype(float)
  assert pixels.std() > 10
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
  assert _line_pixels(out) > 500  # the curves themselves are drawn, not only axes and titles


def test_explicit_keys_choose_the_panels(metrics_file, tmp_path):
  one = plot_training_curves(metrics_file, str(tmp_path / "one.png"), keys=["time/step"])
  all_default = plot_training_curves(metrics_file, str(tmp_path / "all.png"))
  one_size, all_size = Image.open(one).size, Image.open(all_default).size
  # 1 panel vs 7 panels (3 columns x 3 rows): narrower and shorter.
  assert one_size[0] < all_size[0] and one_size[1] < all_size[1]
  assert _line_pixels(one) > 100


def test_explicit_key_without_values_is_an_error(metrics_file, tmp_path):
  out = tmp_path / "x.png"
  with pytest.raises(ValueError, match=r"no finite values for \['reward/missing'\]"):
    plot_training_curves(metrics_file, str(out), keys=["reward/total", "reward/missing"])
  assert not out.exists()


def test_metric_series_sorts_steps_skips_nulls_and_keeps_the_last_row_of_a_step():
  rows = [{"step": 1, "m": 1.0}, {"step": 2, "m": 2.0}, {"step": 3, "m": None}, {"step": 4, "other": 0.0},
          # a resumed run repeats steps 2..3 after its checkpoint
          {"step": 2, "m": 20.0}, {"step": 3, "m": 30.0}, {"step": 5, "m": "text"}]
  steps, values = metric_series(rows, "m")
  np.testing.assert_array_equal(steps, [1, 2, 3])
  np.testing.assert_array_equal(values, [1.0, 20.0, 30.0])


@pytest.mark.parametrize("lines", [[], ["", "   "]], ids=["empty", "blank_lines"])
def test_file_without_rows_gives_none_and_writes_nothing(tmp_path, lines):
  path = _write_lines(tmp_path / "metrics.jsonl", lines)
  out = tmp_path / "curves.png"
  assert plot_training_curves(path, str(out)) is None
  assert not out.exists()


def test_rows_without_default_metrics_give_none(tmp_path):
  path = _write_lines(tmp_path / "metrics.jsonl", [json.dumps({"step": 1, "time/step": 1.0})])
  assert plot_training_curves(path, str(tmp_path / "curves.png")) is None
  assert not (tmp_path / "curves.png").exists()


@pytest.mark.parametrize("bad_line, message", [
    ('{"step": 3, "reward/total": 0.5', "invalid JSON"),
    ('[1, 2]', "expected an object"),
    ('{"reward/total": 0.5}', "'step' must be an integer"),
    ('{"step": "3", "reward/total": 0.5}', "'step' must be an integer"),
], ids=["truncated", "not_an_object", "no_step", "string_step"])
def test_malformed_line_error_names_file_and_line(tmp_path, bad_line, message):
  good = [json.dumps(r) for r in _training_rows(num_steps=2)]
  path = _write_lines(tmp_path / "metrics.jsonl", [good[0], "", bad_line, good[1]])
  with pytest.raises(ValueError, match=rf"metrics\.jsonl line 3: {message}"):
    read_metrics_jsonl(path)
  with pytest.raises(ValueError, match=r"metrics\.jsonl line 3"):
    plot_training_curves(path, str(tmp_path / "curves.png"))
