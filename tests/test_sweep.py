"""mmrag_jax.sweep: grid parsing and run names, table collection, and the real launch path (subprocesses of
a small main module that reads its config with ml_collections' config flags, as mmrag_jax.main does)."""

import csv
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from mmrag_jax.sweep import (collect, expand_grid, parse_grid, parse_value, plan_sweep, run_name, run_sweep,
                             split_values, write_tables)

# -- Grid ------------------------------------------------------------------------------------------


def test_values_are_typed_as_written():
  cases = {"3": 3, "-1": -1, "0.5": 0.5, "1e-6": 1e-6, "true": True, "False": False, "(1,-1,1)": (1, -1, 1),
           "(2, 4)": (2, 4), "bfloat16": "bfloat16", "'3'": "3", "a/b": "a/b", "None": None}
  for text, expected in cases.items():
    value = parse_value(text)
    assert value == expected and type(value) is type(expected), (text, value)


def test_commas_inside_parentheses_and_quotes_do_not_split():
  assert split_values("3, (1,-1,1),'a,b',x") == ["3", "(1,-1,1)", "'a,b'", "x"]
  with pytest.raises(ValueError, match="unbalanced"):
    split_values("(1,2")


def test_grid_expands_to_the_cartesian_product_last_field_fastest():
  grid = parse_grid(["stage2.k=3,5", "rl.group_size=4,8", "mesh.shape=(1,-1,1)"])
  assert grid == [("stage2.k", [3, 5]), ("rl.group_size", [4, 8]), ("mesh.shape", [(1, -1, 1)])]
  points = expand_grid(grid)
  assert [(p["stage2.k"], p["rl.group_size"]) for p in points] == [(3, 4), (3, 8), (5, 4), (5, 8)]
  assert all(p["mesh.shape"] == (1, -1, 1) for p in points)
  assert expand_grid([]) == [{}]


def test_run_names_are_readable_filesystem_safe_and_distinct():
  assert run_name({"stage2.k": 3, "rl.group_size": 4}) == "stage2.k-3__rl.group_size-4"
  assert run_name({"mesh.shape": (1, -1, 1)}) == "mesh.shape-1_-1_1"
  assert run_name({"rl.learning_rate": 1e-6, "model.dtype": "bf16"}) == "rl.learning_rate-1e-06__model.dtype-bf16"
  assert run_name({}) == "base"
  odd = run_name({"data.path": "/data/web qa*?"})
  assert odd == "data.path-data_web_qa"
  long_a, long_b = (run_name({"x": "a" * 300 + tail}) for tail in ("1", "2"))
  assert long_a != long_b and len(long_a) <= 120 and len(long_b) <= 120


@pytest.mark.parametrize("arg, message", [("stage2.k", "FIELD=VALUE"), ("=3", "FIELD=VALUE"),
                                          ("stage2.k=", "FIELD=VALUE"), ("stage2.k=3,,5", "empty value")])
def test_bad_grid_arguments_are_rejected_naming_the_flag(arg, message):
  with pytest.raises(ValueError, match=message):
    parse_grid([arg])
  with pytest.raises(ValueError, match="twice"):
    parse_grid(["a=1", "a=2"])


# -- Collection ------------------------------------------------------------------------------------

COST = {"train_steps": 10, "completion_tokens": 12800.0, "prompt_tokens": 40960.0, "mean_step_time_s": 1.25,
        "train_time_s": 12.5, "total_time_s": 20.0, "num_devices": 8, "num_params": 3754622976}


def _write(path: pathlib.Path, content) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(content if isinstance(content, str) else json.dumps(content))


@pytest.fixture
def finished_sweep(tmp_path):
  """Three runs written by hand: two done (one lacks a metric, one has a null), one failed, plus clutter."""
  names = ["k-3", "k-5", "k-7"]
  for index, (name, k) in enumerate(zip(names, (3, 5, 7))):
    status = "failed" if k == 7 else "ok"
    grid = {"stage2.k": k, "mesh.shape": [1, -1, 1]}
    _write(tmp_path / name / "run.json", {"name": name, "index": index, "grid": grid, "status": status,
                                          "returncode": 2 if k == 7 else 0})
    _write(tmp_path / name / "log.txt", "...")
  _write(tmp_path / "k-3" / "summary.json", {"stage": 2, "mode": "train", "preset": "demo",
                                             "metrics": {"retrieval_f1": 0.25, "qa_acc": 0.5}, "cost": COST})
  _write(tmp_path / "k-5" / "summary.json", {"stage": 2, "mode": "train", "preset": "demo",
                                             "metrics": {"qa_acc": None}, "cost": {**COST, "mean_step_time_s": None}})
  _write(tmp_path / "notes" / "readme.txt", "not a run")
  _write(tmp_path / "stray.json", "{}")
  return tmp_path


def test_collect_reads_every_run_with_its_grid_status_metrics_and_cost(finished_sweep):
  rows = collect(str(finished_sweep))
  cost = {f"cost/{k}": v for k, v in COST.items()}
  grid = {"config.mesh.shape": (1, -1, 1)}
  assert rows == [
      {"run": "k-3", "config.stage2.k": 3, **grid, "status": "ok", "stage": 2, "mode": "train", "preset": "demo",
       "retrieval_f1": 0.25, "qa_acc": 0.5, **cost, "log": "k-3/log.txt"},
      {"run": "k-5", "config.stage2.k": 5, **grid, "status": "ok", "stage": 2, "mode": "train", "preset": "demo",
       "qa_acc": None, **cost, "cost/mean_step_time_s": None, "log": "k-5/log.txt"},
      {"run": "k-7", "config.stage2.k": 7, **grid, "status": "failed", "log": "k-7/log.txt", "error": "exit code 2"},
  ]


def test_tables_hold_one_row_per_run_with_blank_missing_cells(finished_sweep):
  markdown = write_tables(collect(str(finished_sweep)), str(finished_sweep))
  columns = (["run", "config.stage2.k", "config.mesh.shape", "status", "stage", "mode", "preset",
              "retrieval_f1", "qa_acc"] + [f"cost/{k}" for k in COST] + ["log", "error"])  # metrics in summary order
  with open(finished_sweep / "sweep.csv", newline="") as f:
    reader = csv.DictReader(f)
    assert reader.fieldnames == columns
    table = list(reader)
  assert [r["run"] for r in table] == ["k-3", "k-5", "k-7"]
  assert table[0]["qa_acc"] == "0.5" and table[0]["cost/num_params"] == "3754622976"
  assert table[0]["config.mesh.shape"] == "(1, -1, 1)"
  assert table[1]["retrieval_f1"] == "" and table[1]["qa_acc"] == "" and table[1]["cost/mean_step_time_s"] == ""
  assert table[2]["status"] == "failed" and table[2]["log"] == "k-7/log.txt" and table[2]["qa_acc"] == ""
  lines = markdown.splitlines()
  assert lines[0] == "| " + " | ".join(columns) + " |" and lines[1] == "|" + "---|" * len(columns)
  assert lines[2] == ("| k-3 | 3 | (1, -1, 1) | ok | 2 | train | demo | 0.25 | 0.5 | 10 | 12800 | 40960 | 1.25 | "
                      "12.5 | 20 | 8 | 3754622976 | k-3/log.txt |  |")
  assert lines[4] == "| k-7 | 7 | (1, -1, 1) | failed |" + "  |" * 13 + " k-7/log.txt | exit code 2 |"
  assert (finished_sweep / "sweep.md").read_text() == markdown


def test_an_unreadable_summary_is_reported_in_the_row_not_raised(tmp_path):
  _write(tmp_path / "broken" / "summary.json", '{"metrics": ')
  _write(tmp_path / "no_cost" / "summary.json", {"metrics": {}})
  broken, no_cost = collect(str(tmp_path))
  assert broken["status"] == "invalid" and "broken/summary.json" in broken["error"]
  assert no_cost["status"] == "invalid" and "'cost' is missing" in no_cost["error"]


# -- Launching runs --------------------------------------------------------------------------------

CONFIG = '''
from ml_collections import ConfigDict

def get_config(preset="base"):
  return ConfigDict({"preset": preset, "fail_k": -1, "stage2": {"k": 3}, "mesh": {"shape": (1, -1, 1)},
                     "rl": {"group_size": 4, "learning_rate": 1e-6}, "model": {"dtype": "float32"}})
'''

# Reads its config like mmrag_jax.main, writes what it received and a summary; fails when k == fail_k.
FAKE_MAIN = '''
import json, os, sys
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config")
_WORKDIR = flags.DEFINE_string("workdir", None, "")

def main(argv):
  config, workdir = _CONFIG.value, _WORKDIR.value
  with open(os.environ["FAKE_MAIN_CALLS"], "a") as f:
    f.write(os.path.basename(workdir) + "\\n")
  print(f"fake main: k={config.stage2.k} group_size={config.rl.group_size}", flush=True)
  if config.stage2.k == config.fail_k:
    print("fake main: k is refused", file=sys.stderr)
    return 3
  received = {field: [type(value).__name__, value] for field, value in [
      ("k", config.stage2.k), ("group_size", config.rl.group_size), ("shape", config.mesh.shape),
      ("dtype", config.model.dtype), ("learning_rate", config.rl.learning_rate), ("preset", config.preset)]}
  with open(os.path.join(workdir, "received.json"), "w") as f:
    json.dump(received, f)
  metrics = {"score": config.stage2.k * config.rl.group_size / 100}
  cost = {"train_steps": config.stage2.k, "num_params": 1000 * config.rl.group_size}
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({"stage": 2, "mode": "train", "preset": config.preset, "metrics": metrics, "cost": cost}, f)

app.run(main)
'''


@pytest.fixture
def fake_project(tmp_path, monkeypatch):
  """A config file, a `fake_main` module on PYTHONPATH, and a file that logs each invocation."""
  (tmp_path / "config.py").write_text(CONFIG)
  (tmp_path / "modules").mkdir()
  (tmp_path / "modules" / "fake_main.py").write_text(textwrap.dedent(FAKE_MAIN))
  paths = [str(tmp_path / "modules"), os.environ.get("PYTHONPATH", "")]
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
  monkeypatch.setenv("FAKE_MAIN_CALLS", str(tmp_path / "calls.txt"))
  return tmp_path


def _calls(project) -> list[str]:
  return (project / "calls.txt").read_text().split()


def test_sweep_runs_each_point_resumes_and_records_failures(fake_project):
  root = fake_project / "sweep"
  config = f"{fake_project / 'config.py'}:demo"
  grid = ["stage2.k=3,5", "rl.group_size=4,8", "mesh.shape=(2,-1,1)", "model.dtype=bfloat16",
          "rl.learning_rate=1e-5"]
  runs = plan_sweep(config, str(root), grid, ["fail_k=5"], main_module="fake_main")
  names = [run.name for run in runs]
  assert names == [f"stage2.k-{k}__rl.group_size-{g}__mesh.shape-2_-1_1__model.dtype-bfloat16__rl.learning_rate-1e-05"
                   for k in (3, 5) for g in (4, 8)]
  assert runs[0].command[1:] == ("-m", "fake_main", f"--config={config}", f"--workdir={root / names[0]}",
                                 "--config.stage2.k=3", "--config.rl.group_size=4", "--config.mesh.shape=(2, -1, 1)",
                                 "--config.model.dtype=bfloat16", "--config.rl.learning_rate=1e-05",
                                 "--config.fail_k=5")

  statuses = run_sweep(runs, echo=False)
  assert list(statuses.values()) == ["ok", "ok", "failed", "failed"]
  assert _calls(fake_project) == names
  received = json.loads((root / names[1] / "received.json").read_text())
  assert received == {"k": ["int", 3], "group_size": ["int", 8], "shape": ["tuple", [2, -1, 1]],
                      "dtype": ["str", "bfloat16"], "learning_rate": ["float", 1e-5], "preset": ["str", "demo"]}
  assert "fake main: k=3 group_size=8" in (root / names[1] / "log.txt").read_text()
  failed_log = (root / names[2] / "log.txt").read_text()
  assert "fake main: k=5 group_size=4" in failed_log and "fake main: k is refused" in failed_log
  record = json.loads((root / names[2] / "run.json").read_text())
  assert (record["status"], record["returncode"], record["log"]) == ("failed", 3, str(root / names[2] / "log.txt"))

  # Resuming skips the finished runs and retries the failed ones.
  assert list(run_sweep(runs, echo=False).values()) == ["skipped", "skipped", "failed", "failed"]
  assert _calls(fake_project) == names + names[2:]

  rows = collect(str(root))
  assert [(r["config.stage2.k"], r["config.rl.group_size"], r["status"]) for r in rows] == [
      (3, 4, "ok"), (3, 8, "ok"), (5, 4, "failed"), (5, 8, "failed")]
  assert [r.get("score") for r in rows] == [3 * 4 / 100, 3 * 8 / 100, None, None]
  assert [r.get("cost/num_params") for r in rows] == [4000, 8000, None, None]


def test_plan_checks_fields_and_types_against_the_config(fake_project):
  config = f"{fake_project / 'config.py'}:demo"
  with pytest.raises(ValueError, match=r"stage2 has no field 'kk' \(it has \['k'\]\)"):
    plan_sweep(config, "root", ["stage2.kk=3"])
  with pytest.raises(ValueError, match="rl.group_size='eight'"):
    plan_sweep(config, "root", ["rl.group_size=eight"])
  with pytest.raises(ValueError, match="--set field 'rl.beta'"):
    plan_sweep(config, "root", ["stage2.k=3"], ["rl.beta=0.1"])
  with pytest.raises(ValueError, match="both in --grid and --set"):
    plan_sweep(config, "root", ["stage2.k=3"], ["stage2.k=5"])
  with pytest.raises(ValueError, match="no config file"):
    plan_sweep(str(fake_project / "missing.py"), "root", ["stage2.k=3"])


def test_command_line_dry_run_and_collect_only(fake_project):
  root = fake_project / "sweep"
  config = f"{fake_project / 'config.py'}:demo"
  sweep = [sys.executable, "-m", "mmrag_jax.sweep", f"--root={root}"]
  full = subprocess.run(sweep + [f"--config={config}", "--grid=stage2.k=3,5", "--set=fail_k=5",
                                 "--main_module=fake_main", "--noecho"], capture_output=True, text=True, timeout=120)
  assert full.returncode == 1, full.stderr  # one run failed
  assert full.stdout.count("fake main:") == 0  # --noecho keeps run output in the logs only
  assert (root / "sweep.md").read_text() in full.stdout

  dry = subprocess.run(sweep + [f"--config={config}", "--grid=stage2.k=3,5", "--main_module=fake_main", "--dry_run"],
                       capture_output=True, text=True, timeout=120)
  assert dry.returncode == 0, dry.stderr
  first, second = dry.stdout.splitlines()
  assert first.startswith("# done, skipped: ") and first.endswith("--config.stage2.k=3")
  assert not second.startswith("#") and second.endswith("--config.stage2.k=5")

  collected = subprocess.run(sweep + ["--collect_only"], capture_output=True, text=True, timeout=120)
  assert collected.returncode == 0, collected.stderr
  assert collected.stdout == (root / "sweep.md").read_text()
  assert "| stage2.k-3 | 3 | ok |" in collected.stdout and "| stage2.k-5 | 5 | failed |" in collected.stdout
  assert _calls(fake_project) == ["stage2.k-3", "stage2.k-5"]


def test_other_hosts_of_a_multi_host_sweep_keep_their_own_logs_and_no_records(fake_project, capsys):
  root = fake_project / "sweep"
  runs = plan_sweep(f"{fake_project / 'config.py'}", str(root), ["stage2.k=3,5"], ["fail_k=5"],
                    main_module="fake_main")
  assert run_sweep(runs, echo=True, process_index=1) == {"stage2.k-3": "ok", "stage2.k-5": "failed"}
  echoed = capsys.readouterr().out
  assert "fake main: k=3 group_size=4" in echoed and "fake main: k is refused" in echoed
  for run in runs:
    written = ["log.1.txt", "received.json", "summary.json"] if run.grid["stage2.k"] == 3 else ["log.1.txt"]
    assert sorted(os.listdir(run.workdir)) == written
    assert f"fake main: k={run.grid['stage2.k']}" in (pathlib.Path(run.workdir) / "log.1.txt").read_text()
