"""Training metrics: `metrics.jsonl` plus TensorBoard event files in the workdir, and a progress bar.

Only process 0 writes (every process computes the same replicated metrics). Each JSONL line is one
loop step: {"step": 12, "reward/total": 0.41, "time/rollout": 1.9, ...}. Event files are written with
tensorboardX, which needs no TensorFlow; `tensorboard --logdir <workdir>` reads them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
import tqdm

from mmrag_jax.data.files import iter_json_lines
from mmrag_jax.data.records import SkipReport
from mmrag_jax.validation import is_finite_number

__all__ = ["MetricsWriter", "ProgressBar", "read_metrics"]


class MetricsWriter:
  """Appends metric rows to `<workdir>/metrics.jsonl` and TensorBoard scalars to `<workdir>/`.

  enabled: defaults to `jax.process_index() == 0`. tensorboard: also write event files.
  after_step: the step the run continues from (0 for a fresh run). Rows of later steps, left by an
  earlier attempt that did not checkpoint them, are dropped from the file (and purged from TensorBoard's
  view), so that the steps re-run now appear once, as in an uninterrupted run.
  """

  def __init__(self, workdir: str, *, enabled: bool | None = None, tensorboard: bool = True,
               after_step: int | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = None
    self._events = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if after_step is not None:
      _drop_rows_after(self.path, after_step)
    self._file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter  # imported lazily: only the writing process needs it

      purge = None if after_step is None else after_step + 1
      self._events = SummaryWriter(logdir=workdir, flush_secs=30, purge_step=purge)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    """One row for loop step `step`; non-finite values go to JSON as null and are not sent to TensorBoard."""
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({name: (float(v) if is_finite_number(v) else None) for name, v in metrics.items()})
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._events is not None:
      for name, value in row.items():
        if name != "step" and value is not None:
          self._events.add_scalar(name, value, global_step=int(step))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._events is not None:
      self._events.close()
      self._events = None


def _drop_rows_after(path: str, step: int) -> None:
  """Rewrites a metrics file without the rows of steps after `step` (atomically: a crash keeps the old file).

  A line cut short by a killed process is dropped too. Kept rows are written as `write` wrote them.
  """
  if not os.path.exists(path):
    return
  cut = SkipReport(source=path)
  rows = [row for _, _, row in iter_json_lines(path, skipped=cut)]
  kept = [row for row in rows if row.get("step", 0) <= step]
  if len(kept) == len(rows) and not cut.total:
    return
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(row) + "\n" for row in kept)
  os.replace(tmp, path)


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The rows of `<workdir>/metrics.jsonl` in order; a bad line raises `DataError` naming it."""
  return [row for _, _, row in iter_json_lines(os.path.join(workdir, "metrics.jsonl"))]


class ProgressBar:
  """A tqdm bar over loop steps with ETA, reward and tokens/s; silent on processes other than 0."""

  def __init__(self, total: int, initial: int = 0, *, enabled: bool | None = None):
    enabled = jax.process_index() == 0 if enabled is None else enabled
    self._bar = tqdm.tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)

  def update(self, metrics: Mapping[str, float]) -> None:
    postfix = {}
    if "reward/total" in metrics:
      postfix["reward"] = f"{metrics['reward/total']:.3f}"
    if "throughput/tokens_per_s" in metrics:
      postfix["tok/s"] = f"{metrics['throughput/tokens_per_s']:.0f}"
    self._bar.set_postfix(postfix, refresh=False)
    self._bar.update(1)

  def close(self) -> None:
    self._bar.close()
