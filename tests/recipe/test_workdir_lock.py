"""One run per workdir: a second one refuses up front naming the first; a dead holder's file is no lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from mmrag_jax.recipe.run import run
from mmrag_jax.recipe.workdir import (LOCK_FILE, WorkdirError, WorkdirInUse, holder, prepare_workdir,
                                      workdir_lock)
from tests.recipe.conftest import REPO, load_config

# Holds the lock of the workdir in argv[1] until its stdin closes.
HOLDER = ("import sys\nfrom mmrag_jax.recipe.workdir import workdir_lock\n"
           "with workdir_lock(sys.argv[1]):\n  print('locked', flush=True)\n  sys.stdin.read()\n")


@pytest.fixture
def other_run(tmp_path):
  """(workdir, process): a second Python process holding the workdir's lock."""
  process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=REPO, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
  assert process.stdout.readline().strip() == "locked"
  yield tmp_path, process
  if process.poll() is None:
    process.communicate(input="", timeout=60)


def test_second_run_refuses_naming_the_holders_pid_host_and_start(other_run):
  workdir, process = other_run
  with pytest.raises(WorkdirInUse) as error:
    with workdir_lock(str(workdir)):
      pass
  message = str(error.value)
  assert f"workdir {workdir} is in use by another run (pid {process.pid} on host {socket.gethostname()}, " \
         "started " in message, message
  assert holder(str(workdir))["pid"] == process.pid  # the refused attempt left the holder's record alone


def test_run_in_a_held_workdir_stops_before_any_work(other_run):
  workdir, process = other_run
  with pytest.raises(WorkdirInUse, match=f"pid {process.pid} "):
    run(load_config("stage2", "demo"), str(workdir))
  assert os.listdir(workdir) == [LOCK_FILE]


def test_lock_of_a_killed_run_is_taken_over(other_run):
  workdir, process = other_run
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=60)
  assert holder(str(workdir))["pid"] == process.pid  # its record stays behind; the kernel dropped its flock
  with workdir_lock(str(workdir)):
    assert holder(str(workdir))["pid"] == os.getpid()


def test_lock_is_released_at_the_end_of_the_run(tmp_path):
  with workdir_lock(str(tmp_path)):
    info = holder(str(tmp_path))
    assert (info["pid"], info["host"]) == (os.getpid(), socket.gethostname())
  assert holder(str(tmp_path)) == {}
  done = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=REPO, input="", capture_output=True,
                        text=True, timeout=60)
  assert done.returncode == 0 and done.stdout.strip() == "locked", done.stderr


def test_nested_run_in_the_same_workdir_shares_the_lock(tmp_path):
  with workdir_lock(str(tmp_path)), workdir_lock(str(tmp_path / ".")):  # stage 2 running its stage 1 there
    pass
  with open(tmp_path / LOCK_FILE, encoding="utf-8") as f:
    assert f.read() == ""


def test_workdir_is_created_and_probed(tmp_path):
  path = prepare_workdir(str(tmp_path / "a" / "b"))
  assert path == str(tmp_path / "a" / "b") and os.listdir(path) == []  # the probe file is gone


def test_workdir_below_a_file_names_the_file(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(WorkdirError, match=f"workdir {tmp_path}/file/run: {tmp_path}/file is a file, not a directory"):
    prepare_workdir(str(tmp_path / "file" / "run"))


def test_read_only_workdir_is_named(tmp_path):
  read_only = tmp_path / "ro"
  read_only.mkdir()
  read_only.chmod(0o555)
  path = str(read_only / "run")
  if os.access(read_only, os.W_OK):  # root ignores modes: try a read-only system directory
    path = "/sys/mmrag_jax_workdir"
    try:
      os.makedirs(path)
    except OSError:
      pass
    else:
      os.rmdir(path)
      pytest.skip("no read-only directory to try")
  with pytest.raises(WorkdirError, match=f"workdir {path} is not writable"):
    prepare_workdir(path)


def test_lock_file_records_the_holder_as_json(tmp_path):
  with workdir_lock(str(tmp_path)):
    with open(tmp_path / LOCK_FILE, encoding="utf-8") as f:
      assert set(json.loads(f.read())) == {"pid", "host", "started"}
