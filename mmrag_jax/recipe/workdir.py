"""The run's workdir: checked writable before any work, and locked so that two runs never share it.

`prepare_workdir(path)` creates the directory and writes (then removes) a probe file, so a read-only or
misplaced workdir stops the run now rather than at its first checkpoint. `workdir_lock(path)` holds an
exclusive `fcntl.flock` on WORKDIR/.lock for the whole run; the file records the holder (pid, host, start
time) so that a second run refuses naming it. The kernel drops a flock when its process dies, so a file
left behind by a killed run is no lock: the next run takes it over.

Multi-host runs: only process 0 locks. All hosts of one run write checkpoints into the same workdir
(shared storage), so per-host locks would shut the run's own hosts out; a refused run's other hosts stop
when its process 0 leaves the coordination service. flock needs a file system that implements it across
clients (local disks, NFSv4); where it is not implemented the run goes on unlocked, with a warning.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator

from mmrag_jax.errors import RunError

__all__ = ["LOCK_FILE", "WorkdirError", "WorkdirInUse", "holder", "prepare_workdir", "workdir_lock"]

_log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_held: dict[str, int] = {}  # lock path -> depth: a nested run in the same workdir is the same run


class WorkdirError(RunError):
  """The workdir cannot hold a run's files: it is a file, or not writable."""


class WorkdirInUse(RunError):
  """Another live run holds the workdir's lock."""


def prepare_workdir(path: str) -> str:
  """Creates `path` (and its parents) and proves it writable with a probe file; returns its absolute path."""
  path = os.path.abspath(path)
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".probe-{socket.gethostname()}-{os.getpid()}")  # per host: shared storage
    with open(probe, "w", encoding="utf-8") as f:
      f.write("probe\n")
    os.remove(probe)
  except (FileExistsError, NotADirectoryError):
    blocker = _file_in_the_way(path)
    where = f"workdir {path} is" if blocker == path else f"workdir {path}: {blocker} is"
    raise WorkdirError(f"{where} a file, not a directory; choose another --workdir") from None
  except OSError as e:
    raise WorkdirError(f"workdir {path} is not writable ({e.strerror or e}); choose another --workdir") from None
  return path


def _file_in_the_way(path: str) -> str:
  """The path itself or the first of its ancestors that exists and is not a directory."""
  parts = path.split(os.sep)
  for depth in range(2, len(parts) + 1):
    prefix = os.sep.join(parts[:depth])
    if os.path.exists(prefix) and not os.path.isdir(prefix):
      return prefix
  return path


def holder(path: str) -> dict[str, object]:
  """The {pid, host, started} the lock file of workdir `path` records ({} when empty or unreadable)."""
  try:
    with open(os.path.join(path, LOCK_FILE), encoding="utf-8") as f:
      return json.loads(f.read() or "{}")
  except (OSError, ValueError):
    return {}


@contextlib.contextmanager
def workdir_lock(path: str) -> Iterator[None]:
  """Holds WORKDIR/.lock exclusively for the `with` block; raises WorkdirInUse naming a live holder."""
  lock_path = os.path.join(os.path.abspath(path), LOCK_FILE)
  if lock_path in _held:  # this process holds it already (stage 2 running its stage 1 in the same workdir)
    _held[lock_path] += 1
    try:
      yield
    finally:
      _held[lock_path] -= 1
    return
  # Opened without truncating: until we hold the lock, the file names the holder.
  fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    if _flock(fd, lock_path):
      started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}) + "\n")
                .encode(), 0)
    _held[lock_path] = 1
    try:
      yield
    finally:
      del _held[lock_path]
      os.ftruncate(fd, 0)  # a finished run names no holder; the file stays (unlinking it races a waiting run)
  finally:
    os.close(fd)  # releases the flock


def _flock(fd: int, lock_path: str) -> bool:
  """Takes the lock (True), or False where the file system has no flock; WorkdirInUse when another holds it."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except BlockingIOError:
    raise WorkdirInUse(_in_use_message(os.path.dirname(lock_path))) from None
  except OSError as e:
    if e.errno not in _UNSUPPORTED:
      raise
    _log.warning("the file system of %s has no flock (%s): running without the workdir lock", lock_path, e.strerror)
    return False


def _in_use_message(workdir: str) -> str:
  info: dict[str, object] = {}
  for _ in range(20):  # the holder writes its details just after locking
    info = holder(workdir)
    if info:
      break
    time.sleep(0.05)
  who = (f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}" if info
         else "a process that has not written its details")
  return (f"workdir {workdir} is in use by another run ({who}); wait for it to finish or choose another --workdir "
          f"(its lock: {os.path.join(workdir, LOCK_FILE)})")
