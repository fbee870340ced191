"""Scaling studies: one `mmrag_jax.main` run per point of a grid of config overrides, then one table.

  python -m mmrag_jax.sweep --config=configs/stage2.py:demo --root=/tmp/sweep \\
      --grid=stage2.k=3,5 --grid=rl.group_size=4,8 [--set=rl.beta=0.04 ...] [--dry_run]

runs the 4 points one after another, each as its own process

  python -m mmrag_jax.main --config=configs/stage2.py:demo --workdir=/tmp/sweep/stage2.k-3__rl.group_size-4 \\
      --config.stage2.k=3 --config.rl.group_size=4 --config.rl.beta=0.04

with its output streamed to `<run>/log.txt`. A run whose `summary.json` exists is skipped, so the same
command resumes an interrupted sweep; a failed run is recorded (status and exit code in `<run>/run.json`)
and the sweep goes on. At the end every run's summary is collected into `ROOT/sweep.csv` and
`ROOT/sweep.md` (one row per run: grid values, status, metrics, cost) and the table is printed.
`--collect_only --root=DIR` only rebuilds the tables.

Grid values are typed as written: `3` int, `0.5` / `1e-6` float, `true` / `False` bool, `(1,-1,1)` tuple,
anything else a string (`'3'` forces the string "3"). Commas inside parentheses or quotes do not split.
`--set` overrides are passed to every run verbatim.

The sweep process itself never starts jax: an accelerator is held by one process at a time, the run.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ml_collections import ConfigDict

SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"
LOG_FILE = "log.txt"
COST_FIELDS = ("train_steps", "completion_tokens", "prompt_tokens", "mean_step_time_s", "train_time_s",
               "total_time_s", "num_devices", "num_params")
_MAX_NAME_LENGTH = 120


# -- Grid ------------------------------------------------------------------------------------------

def split_values(text: str) -> list[str]:
  """Splits 'a,(1,2),"x,y"' at the commas outside brackets and quotes: ['a', '(1,2)', '"x,y"']."""
  parts, depth, quote, start = [], 0, "", 0
  for i, char in enumerate(text):
    if quote:
      quote = "" if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == "," and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  if depth or quote:
    raise ValueError(f"unbalanced brackets or quotes in {text!r}")
  parts.append(text[start:])
  return [p.strip() for p in parts]


def parse_value(text: str) -> Any:
  """A grid value typed as written: int, float, bool, tuple, None, or else the string itself."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    return ast.literal_eval(text)
  except (SyntaxError, ValueError):
    return text


def parse_assignment(arg: str, flag: str) -> tuple[str, str]:
  """'FIELD=TEXT' -> (FIELD, TEXT); `flag` names the command-line flag in errors."""
  field, sep, text = arg.partition("=")
  field = field.strip()
  if not sep or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", field) or not text.strip():
    raise ValueError(f"--{flag}={arg!r}: expected FIELD=VALUE with a dotted config field, e.g. rl.group_size=8")
  return field, text


def parse_grid(args: Sequence[str]) -> list[tuple[str, list[Any]]]:
  """['stage2.k=3,5', 'rl.group_size=4,8'] -> [('stage2.k', [3, 5]), ('rl.group_size', [4, 8])]."""
  grid: list[tuple[str, list[Any]]] = []
  for arg in args:
    field, text = parse_assignment(arg, "grid")
    if any(field == known for known, _ in grid):
      raise ValueError(f"--grid field {field!r} is given twice")
    values = [parse_value(v) for v in split_values(text)]
    if any(v == "" for v in values):
      raise ValueError(f"--grid={arg!r}: empty value")
    grid.append((field, values))
  return grid


def expand_grid(grid: Sequence[tuple[str, Sequence[Any]]]) -> list[dict[str, Any]]:
  """The cartesian product, last field varying fastest: one {field: value} dict per run."""
  fields = [field for field, _ in grid]
  return [dict(zip(fields, combo)) for combo in itertools.product(*(values for _, values in grid))]


def format_value(value: Any) -> str:
  """The command-line text of a typed value, as ml_collections' config flags parse it back."""
  if isinstance(value, str):
    return value
  return repr(value)


def run_name(point: Mapping[str, Any]) -> str:
  """Filesystem-safe name of a grid point.

  >>> run_name({'stage2.k': 3, 'mesh.shape': (1, -1, 1)})
  'stage2.k-3__mesh.shape-1_-1_1'
  """
  if not point:
    return "base"
  parts = []
  for field, value in point.items():
    text = re.sub(r"[^A-Za-z0-9.+-]+", "_", format_value(value)).strip("_") or "_"
    parts.append(f"{field}-{text}")
  name = "__".join(parts)
  if len(name) > _MAX_NAME_LENGTH:  # file names are limited to 255 bytes; keep the name unique with a hash
    name = name[:_MAX_NAME_LENGTH - 9] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
  return name


# -- Config validation -----------------------------------------------------------------------------

def load_config(spec: str) -> ConfigDict:
  """Loads `PATH[:ARG]` the way ml_collections' config flags do: `get_config(ARG)` or `get_config()`."""
  path, sep, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"--config={spec!r}: no config file {path!r}")
  module_spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if sep else module.get_config()


def check_field(config: ConfigDict, field: str, flag: str, value: Any = None, *, typed: bool = False) -> None:
  """Raises ValueError unless `field` exists in `config` (and, when `typed`, accepts `value`)."""
  node: Any = config
  parts = field.split(".")
  for depth, part in enumerate(parts):
    where = ".".join(parts[:depth]) or "the config"
    if not isinstance(node, (ConfigDict, dict)):
      raise ValueError(f"--{flag} field {field!r}: {where} is a value, not a config section")
    if part not in node:
      raise ValueError(f"--{flag} field {field!r}: {where} has no field {part!r} (it has {sorted(node.keys())})")
    if depth < len(parts) - 1:
      node = node[part]
  if typed and isinstance(node, ConfigDict):
    probe = ConfigDict(node)  # a copy with the same field types; the real config stays untouched
    try:
      probe[parts[-1]] = value
    except TypeError as e:
      hint = f" (write '{value}' to pass a string)" if isinstance(node.get(parts[-1]), str) else ""
      raise ValueError(f"--{flag} {field}={value!r}: {e}{hint}") from None


# -- Running ---------------------------------------------------------------------------------------

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

def _as_tuples(value: Any) -> Any:
  """JSON stores tuples as lists; grid values come back as the tuples they were."""
  return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def _read_json(path: str) -> tuple[Any, str | None]:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f), None
  except (OSError, ValueError) as e:
    return None, f"{path}: {e}"


def _summary_fields(summary: Any, path: str) -> tuple[dict[str, Any], str | None]:
  """Row cells of a summary.json: stage, mode, preset, every metric, every cost field ('cost/...')."""
  if not isinstance(summary, dict):
    return {}, f"{path}: expected a JSON object"
  for key in ("metrics", "cost"):
    if not isinstance(summary.get(key), dict):
      return {}, f"{path}: key {key!r} is missing or not an object"
  cells = {key: summary.get(key) for key in ("stage", "mode", "preset")}
  cells.update(summary["metrics"])
  cells.update({f"cost/{key}": value for key, value in summary["cost"].items()})
  return cells, None


def collect(root: str) -> list[dict[str, Any]]:
  """One flat row per run directory under `root` (a directory holding run.json or summary.json).

  Columns: 'run'; 'config.FIELD' per grid field; 'status' ('ok', 'failed', 'interrupted', 'incomplete'
  or 'invalid'); 'stage', 'mode', 'preset'; one column per metric; 'cost/FIELD' per cost field; 'log'
  (relative to `root`) and 'error' where there is one. Rows follow the sweep order.
  """
  rows = []
  for entry in sorted(os.scandir(root), key=lambda e: e.name):
    run_path, summary_path = (os.path.join(entry.path, f) for f in (RUN_FILE, SUMMARY_FILE))
    if not entry.is_dir() or not (os.path.isfile(run_path) or os.path.isfile(summary_path)):
      continue
    record, error = _read_json(run_path) if os.path.isfile(run_path) else ({}, None)
    record = record if isinstance(record, dict) else {}
    row: dict[str, Any] = {"run": entry.name}
    row.update({f"config.{field}": _as_tuples(value) for field, value in record.get("grid", {}).items()})
    recorded = record.get("status")
    if recorded in ("failed", "interrupted"):
      row["status"] = recorded
      error = error or record.get("error") or f"exit code {record.get('returncode')}"
    elif os.path.isfile(summary_path):
      row["status"] = "ok"
    else:
      row["status"] = "incomplete"
    if os.path.isfile(summary_path):
      summary, summary_error = _read_json(summary_path)
      cells, summary_error = _summary_fields(summary, summary_path) if summary_error is None else ({}, summary_error)
      row.update(cells)
      if summary_error:
        row["status"], error = "invalid", summary_error
    if os.path.isfile(os.path.join(entry.path, LOG_FILE)):
      row["log"] = os.path.join(entry.name, LOG_FILE)
    if error:
      row["error"] = error
    rows.append((record.get("index", math.inf), entry.name, row))
  return [row for _, _, row in sorted(rows, key=lambda r: (r[0], r[1]))]


# Column groups: run, grid fields, status..., metrics (in summary order), cost fields, log / error.
_FIXED_COLUMNS = {"run": (0, 0), "status": (2, 0), "stage": (2, 1), "mode": (2, 2), "preset": (2, 3),
                  "log": (5, 0), "error": (5, 1)}


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  first_seen = {key: i for i, key in enumerate(dict.fromkeys(key for row in rows for key in row))}

  def order(key: str) -> tuple[int, Any]:
    if key in _FIXED_COLUMNS:
      return _FIXED_COLUMNS[key]
    if key.startswith("config."):
      return 1, first_seen[key]
    if key.startswith("cost/"):
      name = key[len("cost/"):]
      return 4, (COST_FIELDS.index(name) if name in COST_FIELDS else len(COST_FIELDS), name)
    return 3, first_seen[key]

  return sorted(set(first_seen) | {"run", "status"}, key=order)


def _cell(value: Any) -> str:
  """Markdown text of a value: floats to 4 significant digits, whole floats as integers."""
  if value is None:
    return ""
  if isinstance(value, float):
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
      return str(int(value))
    return f"{value:.4g}"
  return str(value).replace("|", "\\|")


def write_tables(rows: Sequence[Mapping[str, Any]], root: str) -> str:
  """Writes ROOT/sweep.csv (full precision) and ROOT/sweep.md; returns the markdown table."""
  columns = _columns(rows)
  with open(os.path.join(root, "sweep.csv"), "w", encoding="utf-8", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, restval="")
    writer.writeheader()
    for row in rows:
      writer.writerow({key: "" if value is None else value for key, value in row.items()})
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_cell(row.get(key)) for key in columns) + " |" for row in rows]
  markdown = "\n".join(lines) + "\n"
  with open(os.path.join(root, "sweep.md"), "w", encoding="utf-8") as f:
    f.write(markdown)
  return markdown


# -- Command line ----------------------------------------------------------------------------------

def _define_flags() -> None:
  from absl import flags

  flags.DEFINE_string("config", None, "config file passed to every run, PATH[:PRESET]")
  flags.DEFINE_string("root", None, "sweep directory; each run works in ROOT/<run name>", required=True)
  flags.DEFINE_multi_string("grid", [], "FIELD=V1,V2,...: one sweep axis (repeat the flag for more axes)")
  flags.DEFINE_multi_string("set", [], "FIELD=VALUE: an override passed verbatim to every run")
  flags.DEFINE_string("main_module", "mmrag_jax.main", "module each run executes with `python -m`")
  flags.DEFINE_bool("dry_run", False, "print the run commands and exit")
  flags.DEFINE_bool("collect_only", False, "only rebuild ROOT/sweep.csv and ROOT/sweep.md")
  flags.DEFINE_bool("validate", True, "load the config and check every --grid / --set field first")
  flags.DEFINE_bool("echo", True, "also stream each run's output to this terminal")


def main(argv: Sequence[str]) -> int:
  from absl import app, flags

  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
  if FLAGS.collect_only:
    if not os.path.isdir(FLAGS.root):
      raise app.UsageError(f"--root={FLAGS.root!r} is not a directory")
    print(write_tables(collect(FLAGS.root), FLAGS.root), end="")
    return 0
  if not FLAGS.config:
    raise app.UsageError("--config is required (unless --collect_only)")
  try:
    runs = plan_sweep(FLAGS.config, FLAGS.root, FLAGS.grid, FLAGS.set, main_module=FLAGS.main_module,
                      validate=FLAGS.validate)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if FLAGS.dry_run:
    for run in runs:
      print(("# done, skipped: " if run.done else "") + shlex.join(run.command))
    return 0
  statuses = run_sweep(runs, echo=FLAGS.echo)
  failed = sum(status == "failed" for status in statuses.values())
  if host_process_index() == 0:
    print(write_tables(collect(FLAGS.root), FLAGS.root), end="")
  print(f"[sweep] {len(statuses) - failed} of {len(statuses)} runs ok; tables in {FLAGS.root}/sweep.md")
  return 1 if failed else 0


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main)
