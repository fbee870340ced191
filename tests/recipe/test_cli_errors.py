"""`python -m mmrag_jax.main` as a user types it: a known failure is one line `error: <cause>`, no traceback.

Every command line runs once, all of them side by side, in one module fixture (each process pays for
its imports); the tests then read their results.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from mmrag_jax.recipe.workdir import holder
from tests.recipe.conftest import REPO
from tests.recipe.test_workdir_lock import HOLDER

DEMO = "--config=configs/stage2.py:demo"
# name -> (arguments after `python -m mmrag_jax.main`; {tmp} is the case's own directory)
COMMANDS = {
    "unknown preset": ["--config=configs/stage2.py:huge", "--workdir={tmp}/run"],
    "config file missing": ["--config=configs/stage3.py", "--workdir={tmp}/run", "--config.train.num_steps=2"],
    "wrong-typed override": [DEMO, "--workdir={tmp}/run", "--config.train.num_steps=abc"],
    "wrong-typed bool": [DEMO, "--workdir={tmp}/run", "--config.train.export=maybe"],
    "missing field": ["--config", "configs/stage1.py:demo", "--workdir={tmp}/run", "--config.rl.group_size=4",
                      "--config.train.batchsize=8"],
    "unknown flag": [DEMO, "--wrkdir={tmp}/run"],
    "nan learning rate": [DEMO, "--workdir={tmp}/run", "--config.rl.learning_rate=nan"],
    "real recipe without a checkpoint": ["--config=configs/stage1.py", "--workdir={tmp}/run",
                                         "--config.rl.group_size=4"],
    "workdir is a file": [DEMO, "--workdir={tmp}/file"],
    "workdir held by another run": [DEMO, "--workdir={tmp}/held"],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """{name: (returncode, stderr, case dir, holder pid)} of every command line in COMMANDS."""
  root = tmp_path_factory.mktemp("cli")
  dirs = {name: root / f"case{i}" for i, name in enumerate(COMMANDS)}
  for d in dirs.values():
    d.mkdir()
    (d / "file").write_text("not a directory\n")
    (d / "held").mkdir()
  holder_dir = dirs["workdir held by another run"] / "held"
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(holder_dir)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    runs = {name: subprocess.Popen([sys.executable, "-m", "mmrag_jax.main",
                                    *(a.format(tmp=dirs[name]) for a in args)],
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name, args in COMMANDS.items()}
    out = {}
    for name, process in runs.items():
      _, stderr = process.communicate(timeout=300)
      out[name] = (process.returncode, stderr, dirs[name], holder.pid)
  finally:
    holder.communicate(input="", timeout=60)
  return out


def _error_line(results, name: str, code: int) -> str:
  returncode, stderr, _, _ = results[name]
  assert returncode == code, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, stderr[-3000:]
  return lines[0]


def test_unknown_preset_is_named_with_the_known_ones(results):
  line = _error_line(results, "unknown preset", 2)
  assert "unknown preset 'huge'" in line and "('demo', 'toy', '3b', '7b')" in line, line


def test_missing_config_file_names_its_path(results):
  line = _error_line(results, "config file missing", 2)
  assert "no config file 'configs/stage3.py'" in line, line


def test_wrong_typed_override_names_field_type_and_value(results):
  assert _error_line(results, "wrong-typed override", 2) == "error: config.train.num_steps: expected int, got 'abc'"
  assert _error_line(results, "wrong-typed bool", 2) == "error: config.train.export: expected bool, got 'maybe'"


def test_override_of_a_missing_field_names_it_and_its_siblings(results):
  line = _error_line(results, "missing field", 2)
  assert "'train.batchsize': train has no field 'batchsize'" in line and "'batch_size'" in line, line
  assert "rl.group_size" not in line
  assert not os.path.exists(results["missing field"][2] / "run")  # nothing ran


def test_unknown_flag_is_one_line(results):
  assert "Unknown command line flag 'wrkdir'" in _error_line(results, "unknown flag", 2)


def test_non_finite_setting_names_the_field(results):
  line = _error_line(results, "nan learning rate", 2)
  assert line == "error: config.rl.learning_rate: must be a finite number, got nan", line
  assert not os.path.exists(results["nan learning rate"][2] / "run"), "validation comes before the workdir"


def test_missing_checkpoint_names_the_flag_and_the_demo(results):
  line = _error_line(results, "real recipe without a checkpoint", 2)
  assert "config.model.path: is empty" in line and "configs/stage2.py:demo" in line, line


def test_workdir_that_is_a_file_is_named(results):
  case = results["workdir is a file"][2]
  assert _error_line(results, "workdir is a file", 1) == (
      f"error: workdir {case}/file is a file, not a directory; choose another --workdir")


def test_workdir_held_by_another_run_names_its_pid_and_host(results):
  line = _error_line(results, "workdir held by another run", 1)
  holder_pid = results["workdir held by another run"][3]
  assert f"in use by another run (pid {holder_pid} on host {socket.gethostname()}, started " in line, line
  assert os.listdir(results["workdir held by another run"][2] / "held") == [".lock"], "the refused run did no work"


def _popen_with_sigint_handled(args, **kwargs):
  """`subprocess.Popen` whose child starts with SIGINT not ignored. A test runner started in the background of a
  non-interactive shell (`cmd &`) ignores SIGINT, an ignored signal stays ignored across exec, and a Python
  that starts with SIGINT ignored installs no KeyboardInterrupt handler: Ctrl-C would then do nothing."""
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    return subprocess.Popen(args, **kwargs)
  finally:
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_before_training_exits_130_without_a_traceback(tmp_path):
  process = _popen_with_sigint_handled([sys.executable, "-m", "mmrag_jax.main", DEMO, f"--workdir={tmp_path}"],
                                       cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  seen = []
  for line in process.stderr:  # the demo's inputs are written once the workdir is locked
    seen.append(line)
    if "writing a synthetic WebQA" in line:
      process.send_signal(signal.SIGINT)
      break
  _, rest = process.communicate(timeout=120)
  stderr = "".join(seen) + rest
  assert process.returncode == 130, stderr[-3000:]
  assert "Traceback" not in stderr and stderr.rstrip().endswith("interrupted"), stderr[-3000:]
  assert holder(str(tmp_path)) == {}, "the lock is released"
