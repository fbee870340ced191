"""Running a sweep: one `python -m mmrag_jax.main` subprocess per grid point, logs, resume, failures."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from mmrag_jax.sweep.grid import (
  LOG_FILE,
  RUN_FILE,
  SUMMARY_FILE,
  check_field,
  expand_grid,
  format_value,
  load_config,
  parse_assignment,
  parse_grid,
  run_name,
)

__all__ = ["Run", "host_process_index", "launch", "plan_sweep", "run_sweep"]


@dataclasses.dataclass(frozen=True)
class Run:
  """One point of the sweep: its grid values, working directory and full command line."""

  name: str
  index: int
  grid: dict[str, Any]
  workdir: str
  command: tuple[str, ...]

  @property
  def done(self) -> bool:
    return os.path.isfile(os.path.join(self.workdir, SUMMARY_FILE))


def plan_sweep(config: str, root: str, grid_args: Sequence[str] = (), set_args: Sequence[str] = (), *,
               main_module: str = "mmrag_jax.main", validate: bool = True) -> list[Run]:
  """The runs of a sweep, in order, with their commands; checks every field against the config first."""
  grid = parse_grid(grid_args)
  fixed = [parse_assignment(arg, "set") for arg in set_args]
  grid_fields = {field for field, _ in grid}
  for field, _ in fixed:
    if field in grid_fields:
      raise ValueError(f"field {field!r} is both in --grid and --set")
  if validate:
    loaded = load_config(config)
    for field, values in grid:
      for value in values:
        check_field(loaded, field, "grid", value, typed=True)
    for field, _ in fixed:
      check_field(loaded, field, "set")
  runs, seen = [], {}
  for index, point in enumerate(expand_grid(grid)):
    name = run_name(point)
    if name in seen:
      raise ValueError(f"grid points {seen[name]} and {point} both map to the run name {name!r}")
    seen[name] = point
    workdir = os.path.join(root, name)
    command = [sys.executable, "-m", main_module, f"--config={config}", f"--workdir={workdir}"]
    command += [f"--config.{field}={format_value(value)}" for field, value in point.items()]
    command += [f"--config.{field}={text}" for field, text in fixed]
    runs.append(Run(name, index, point, workdir, tuple(command)))
  return runs


def _write_json(path: str, record: Mapping[str, Any]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, path)


def launch(command: Sequence[str], log_path: str, *, echo: bool = True) -> int:
  """Runs `command`, streaming its merged stdout / stderr to `log_path` (and to stdout when `echo`).

  Bytes pass through unchanged, so progress bars redraw in place. Returns the exit code; on
  KeyboardInterrupt the child is terminated before the interrupt propagates.
  """
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log follows the run as it goes
  terminal = getattr(sys.stdout, "buffer", None)
  with open(log_path, "wb") as log:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
      while chunk := proc.stdout.read1(1 << 16):
        log.write(chunk)
        log.flush()
        if echo:
          if terminal is None:
            sys.stdout.write(chunk.decode(errors="replace"))
          else:
            terminal.write(chunk)
          sys.stdout.flush()
      return proc.wait()
    except BaseException:
      proc.terminate()
      proc.wait()
      raise


def host_process_index() -> int:
  """This host's process index in a multi-host launch (JAX_PROCESS_ID, which tpu/launch.sh exports); else 0."""
  return int(os.environ.get("JAX_PROCESS_ID") or 0)


def run_sweep(runs: Sequence[Run], *, echo: bool = True, process_index: int | None = None) -> dict[str, str]:
  """Runs every run not yet done, one after another; returns {run name: 'ok' | 'failed' | 'skipped'}.

  On a multi-host slice every host runs the same sweep (each run is one SPMD program over all hosts).
  Process 0 keeps the records (run.json, log.txt); process i only writes its own log.i.txt, so hosts
  sharing ROOT on a bucket do not overwrite each other.
  """
  process_index = host_process_index() if process_index is None else process_index
  primary = process_index == 0
  statuses: dict[str, str] = {}
  for run in runs:
    if run.done:
      print(f"[sweep] {run.name}: {SUMMARY_FILE} exists, skipped", flush=True)
      statuses[run.name] = "skipped"
      continue
    os.makedirs(run.workdir, exist_ok=True)
    log_path = os.path.join(run.workdir, LOG_FILE if primary else f"log.{process_index}.txt")
    record = {"name": run.name, "index": run.index, "grid": run.grid, "command": list(run.command),
              "status": "running", "returncode": None, "log": log_path}
    record_path = os.path.join(run.workdir, RUN_FILE)
    if primary:
      _write_json(record_path, record)
    print(f"[sweep] {run.name} ({run.index + 1}/{len(runs)}): {shlex.join(run.command)}", flush=True)
    started = time.perf_counter()
    try:
      returncode = launch(run.command, log_path, echo=echo)
    except KeyboardInterrupt:
      if primary:
        _write_json(record_path, {**record, "status": "interrupted"})
      raise
    # Only process 0 judges by summary.json: another host's run may exit before process 0 has written it.
    status = "ok" if returncode == 0 and (run.done or not primary) else "failed"
    record.update(status=status, returncode=returncode, elapsed_s=round(time.perf_counter() - started, 3))
    if returncode == 0 and status == "failed":
      record["error"] = f"exited 0 without writing {SUMMARY_FILE}"
    if primary:
      _write_json(record_path, record)
    if status == "failed":
      print(f"[sweep] {run.name} FAILED (exit code {returncode}); log: {log_path}", flush=True)
    statuses[run.name] = status
  return statuses


# -- Collection ------------------------------------------------------------------------------------
