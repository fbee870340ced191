"""Training curves: one small plot per metric of the trainer's `metrics.jsonl`, saved as one PNG.

The file holds one JSON object per loop step, `{"step": 12, "reward/total": 0.41, ...}`, with null for
non-finite values; eval metrics ("eval/*") appear only on eval steps. A resumed run appends the steps
after its checkpoint again, so the last row of a step wins.

matplotlib is imported only when plotting, and drawn with its Agg canvas on a bare `Figure` (no pyplot,
no screen, no process-wide backend switch).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from mmrag_jax.data.files import iter_json_lines
from mmrag_jax.data.records import DataError
from mmrag_jax.validation import is_finite_number, is_int

__all__ = ["default_curve_keys", "metric_series", "plot_training_curves", "read_metrics_jsonl"]

_SUBPLOT_COLUMNS = 3
_SUBPLOT_SIZE_IN = (4.0, 2.6)  # width, height of one subplot in inches (100 dpi)
_MARKER_MAX_POINTS = 40  # sparse series (eval/*, short runs) get a marker per point


def read_metrics_jsonl(path: str) -> list[dict[str, object]]:
  """The rows of a metrics.jsonl in file order (blank lines skipped).

  Raises `DataError` (a ValueError) naming the file and line for a line that is not a JSON object with an
  integer "step".
  """
  rows = []
  for _, where, row in iter_json_lines(path):
    step = row.get("step")
    if not is_int(step):
      raise DataError(f"{where}: 'step' must be an integer, got {step!r}")
    rows.append(row)
  return rows


def default_curve_keys(rows: Sequence[dict[str, object]]) -> list[str]:
  """The keys worth a curve, in display order: reward/total, the other reward/*, completion_length,
  update/loss, then eval/*; only those with at least one finite value."""
  present = {key for row in rows for key, value in row.items() if key != "step" and is_finite_number(value)}
  rewards = sorted(k for k in present if k.startswith("reward/") and k != "reward/total")
  evals = sorted(k for k in present if k.startswith("eval/"))
  ordered = ["reward/total", *rewards, "completion_length", "update/loss", *evals]
  return [k for k in ordered if k in present]


def metric_series(rows: Sequence[dict[str, object]], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps [T] int64, values [T] float64) of one metric, sorted by step; the last row of a step wins and
  steps whose value is null / non-finite / absent are left out."""
  by_step: dict[int, float | None] = {}
  for row in rows:
    if key in row:
      value = row[key]
      by_step[int(row["step"])] = float(value) if is_finite_number(value) else None
  points = sorted((s, v) for s, v in by_step.items() if v is not None)
  steps = np.array([s for s, _ in points], dtype=np.int64)
  values = np.array([v for _, v in points], dtype=np.float64)
  return steps, values


def plot_training_curves(metrics_jsonl: str, out_png: str, keys: Sequence[str] | None = None) -> str | None:
  """Plots the chosen metrics of `metrics_jsonl` against the loop step, one subplot per key, into `out_png`.

  keys: None picks `default_curve_keys`; explicit keys must each have a finite value somewhere.
  Returns `out_png`, or None (writing nothing) when the file has no rows or no default key is present.
  """
  rows = read_metrics_jsonl(metrics_jsonl)
  if not rows:
    return None
  if keys is None:
    keys = default_curve_keys(rows)
    if not keys:
      return None
  else:
    keys = list(keys)
    if not keys:
      raise ValueError("keys is empty: pass None for the default curves or name at least one metric")
    missing = [k for k in keys if metric_series(rows, k)[0].size == 0]
    if missing:
      available = sorted({k for row in rows for k, v in row.items() if k != "step" and is_finite_number(v)})
      raise ValueError(f"{metrics_jsonl}: no finite values for {missing}; metrics present: {available}")

  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  columns = min(_SUBPLOT_COLUMNS, len(keys))
  num_rows = math.ceil(len(keys) / columns)
  figure = Figure(figsize=(_SUBPLOT_SIZE_IN[0] * columns, _SUBPLOT_SIZE_IN[1] * num_rows), dpi=100,
                  layout="constrained")
  FigureCanvasAgg(figure)
  for index, key in enumerate(keys):
    steps, values = metric_series(rows, key)
    axes = figure.add_subplot(num_rows, columns, index + 1)
    marker = "o" if steps.size <= _MARKER_MAX_POINTS else None
    axes.plot(steps, values, marker=marker, markersize=3, linewidth=1.4)
    axes.set_title(key, fontsize=10)
    axes.set_xlabel("step", fontsize=8)
    axes.tick_params(labelsize=8)
    axes.grid(alpha=0.3)
  directory = os.path.dirname(os.path.abspath(out_png))
  os.makedirs(directory, exist_ok=True)
  figure.savefig(out_png, format="png")
  return out_png
