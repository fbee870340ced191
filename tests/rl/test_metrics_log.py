"""metrics.jsonl: a resumed writer drops the rows it will re-run and a line cut short by a crash."""

import json

import pytest

from mmrag_jax.rl.metrics_log import MetricsWriter, read_metrics


def _write_lines(workdir, lines):
  (workdir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_resumed_writer_drops_later_rows_and_a_line_cut_by_a_crash(tmp_path):
  _write_lines(tmp_path, [json.dumps({"step": 1, "reward/total": 0.25}), json.dumps({"step": 2, "reward/total": 0.5}),
                          json.dumps({"step": 3, "reward/total": 0.75}), '{"step": 4, "reward/to'])
  writer = MetricsWriter(str(tmp_path), enabled=True, tensorboard=False, after_step=2)
  writer.write(3, {"reward/total": 1.0})
  writer.close()
  assert read_metrics(str(tmp_path)) == [{"step": 1, "reward/total": 0.25}, {"step": 2, "reward/total": 0.5},
                                         {"step": 3, "reward/total": 1.0}]


def test_resumed_writer_leaves_a_file_with_nothing_to_drop_as_it_is(tmp_path):
  text = '{"step": 1, "reward/total": 0.1}\n\n{"step": 2, "reward/total": null}\n'
  (tmp_path / "metrics.jsonl").write_text(text, encoding="utf-8")
  MetricsWriter(str(tmp_path), enabled=True, tensorboard=False, after_step=2).close()
  assert (tmp_path / "metrics.jsonl").read_text(encoding="utf-8") == text


def test_read_metrics_names_the_file_and_line_of_a_bad_line(tmp_path):
  _write_lines(tmp_path, [json.dumps({"step": 1}), "", '{"step": 2,'])
  with pytest.raises(ValueError, match=r"metrics.jsonl line 3: invalid JSON"):
    read_metrics(str(tmp_path))
