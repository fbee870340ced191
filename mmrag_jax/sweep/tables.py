"""Collecting every run's summary.json into ROOT/sweep.csv and ROOT/sweep.md."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from mmrag_jax.sweep.grid import COST_FIELDS, LOG_FILE, RUN_FILE, SUMMARY_FILE

__all__ = ["collect", "write_tables"]


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
