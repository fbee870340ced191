"""The training part shared by both stages: optional supervised format warm-up, then the GRPO loop, then
the Hugging Face export of the policy."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

from flax import nnx

from mmrag_jax.model import Qwen25VL
from mmrag_jax.recipe.context import EXPORT_DIR, RunDir, export_policy
from mmrag_jax.recipe.settings import Settings
from mmrag_jax.rl.checkpointing import latest_committed_step
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.interrupts import NonFiniteTraining, StopSignals, TrainingInterrupted, signal_name
from mmrag_jax.rl.metrics_log import MetricsWriter, ProgressBar, read_metrics
from mmrag_jax.rl.rollout import RewardFn
from mmrag_jax.rl.trainer import EvalFn, GRPOTrainer
from mmrag_jax.rl.warmup import TargetFn, WarmupConfig, supervised_warmup

__all__ = ["TrainResult", "train_policy"]

_log = logging.getLogger(__name__)

_WARMUP_DIR = "warmup"


@dataclasses.dataclass
class TrainResult:
  """The trained policy, its export directory ('' when not exported) and the loop's metric rows."""

  model: Qwen25VL
  export_dir: str
  history: list[dict[str, float]]
  warmup_history: list[dict[str, float]]


def _warmup(model: Qwen25VL, processor: Any, data: Iterator[Mapping[str, Any]], target_fn: TargetFn,
            stop: StopSignals, *, config: WarmupConfig, grpo: GRPOConfig, run: RunDir, progress_bar: bool
            ) -> tuple[nnx.Module, list[dict[str, float]]]:
  """`config.steps` supervised steps on `target_fn`'s completions, with the loss settings of `grpo`."""
  # A fresh file: its rows describe the warm-up that produced this run's model, not an abandoned one.
  writer = MetricsWriter(run.path(_WARMUP_DIR), tensorboard=False, after_step=0)
  bar = ProgressBar(config.steps, enabled=None if progress_bar else False)
  rows: list[dict[str, float]] = []

  def on_step(step: int, metrics: dict[str, float]) -> None:
    writer.write(step, metrics)
    bar.update({})
    rows.append({"step": step, **metrics})
    if not all(math.isfinite(v) for v in metrics.values()):
      raise NonFiniteTraining(f"format warm-up step {step}: {metrics}; stopped before GRPO. Lower "
                              f"warmup.learning_rate or check the targets")
    signum = stop.agreed()
    if signum is not None:
      raise TrainingInterrupted(f"stopped by {signal_name(signum)} during the format warm-up (step {step} of "
                                f"{config.steps}); the warm-up keeps no checkpoint, so a rerun starts it again",
                                signum)

  tokenize = lambda text: processor.tokenizer.encode(text, add_special_tokens=False)
  _log.info("format warm-up: %d supervised steps", config.steps)
  try:
    model = supervised_warmup(model, data, target_fn, tokenize, config, mesh=run.mesh,
                              stop_id=model.config.eos_token_id, base=grpo, on_step=on_step)
  finally:
    bar.close()
    writer.close()
  if rows:
    _log.info("format warm-up: token NLL %.3f -> %.3f", rows[0]["nll"], rows[-1]["nll"])
  return model, rows


def train_policy(model: Qwen25VL, model_dir: str, processor: Any, s: Settings, run: RunDir, *,
                 data: Iterator[Mapping[str, Any]], reward_fn: RewardFn,
                 warmup_data: Iterator[Mapping[str, Any]] | None, target_fn: TargetFn,
                 eval_fn: EvalFn | None = None) -> TrainResult:
  """Warm-up (skipped when resuming), GRPO for `train.num_steps` loop steps, export into run's export/.

  Resuming means a committed checkpoint exists: the checkpoint holds the warmed-up policy, its optimizer
  state and the KL reference, so the warm-up is not run again. A run killed before its first checkpoint
  committed starts over, warm-up included. SIGTERM / SIGINT stop the run at a step boundary
  (`TrainingInterrupted`, see `rl/interrupts.py`).
  model_dir: the checkpoint the model came from (its tokenizer and processor files go into the export).
  eval_fn: the periodic evaluation, run every `train.eval_every` loop steps and logged as 'eval/...'.
  """
  resuming = latest_committed_step(run.path("checkpoints")) is not None
  warmup_rows: list[dict[str, float]] = []
  with StopSignals() as stop:
    if s.warmup.steps and not resuming and warmup_data is not None:
      model, warmup_rows = _warmup(model, processor, warmup_data, target_fn, stop, config=s.warmup, grpo=s.grpo,
                                   run=run, progress_bar=s.trainer.progress_bar)
    trainer = GRPOTrainer(model, s.grpo, s.rollout, s.trainer, mesh=run.mesh, workdir=run.workdir, data=data,
                          reward_fn=reward_fn, detokenize=processor.decode, eval_fn=eval_fn)
    if trainer.step:
      _log.info("resuming GRPO from loop step %d", trainer.step)
    trainer.run(stop)
    model = trainer.model()
    export_dir = export_policy(model, model_dir, run.path(EXPORT_DIR)) if s.export else ""
  signum = stop.agreed()
  if signum is not None:
    raise TrainingInterrupted(f"stopped by {signal_name(signum)} after training finished"
                              f"{' and the export' if export_dir else ''}; rerun the same command for the rest of "
                              f"the run", signum)
  # Every step of the run, those of earlier (resumed) attempts included.
  history = read_metrics(run.workdir) if os.path.exists(run.path("metrics.jsonl")) else []
  return TrainResult(model=model, export_dir=export_dir, history=history, warmup_history=warmup_rows)
