"""The training part shared by both stages: optional supervised format warm-up, then the GRPO loop, then
the Hugging Face export of the policy."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from flax import nnx

from mmrag_jax.model import Qwen25VL
from mmrag_jax.recipe.context import RunContext
from mmrag_jax.rl.metrics_log import MetricsWriter, ProgressBar
from mmrag_jax.rl.rollout import RewardFn
from mmrag_jax.rl.trainer import GRPOTrainer
from mmrag_jax.rl.warmup import TargetFn, WarmupConfig, supervised_warmup

_log = logging.getLogger(__name__)

WARMUP_DIR = "warmup"


@dataclasses.dataclass
class TrainResult:
  """The trained policy, its export directory ('' when not exported) and the loop's metric rows."""

  model: Qwen25VL
  export_dir: str
  history: list[dict[str, float]]
  warmup_history: list[dict[str, float]]


def _warmup(ctx: RunContext, model: Qwen25VL, processor: Any, data: Iterator[Mapping[str, Any]],
            target_fn: TargetFn) -> tuple[nnx.Module, list[dict[str, float]]]:
  c = ctx.config
  config = WarmupConfig(steps=c.warmup.steps, learning_rate=c.warmup.learning_rate,
                        max_new_tokens=c.rl.max_new_tokens, length_buckets=tuple(c.sampler.length_buckets),
                        patch_buckets=tuple(c.sampler.patch_buckets),
                        logprob_chunk_size=c.rl.logprob_chunk_size, group_size=c.rl.group_size)
  writer = MetricsWriter(ctx.path(WARMUP_DIR), tensorboard=False)
  bar = ProgressBar(config.steps, enabled=None if c.train.progress_bar else False)
  rows: list[dict[str, float]] = []

  def on_step(step: int, metrics: dict[str, float]) -> None:
    writer.write(step, metrics)
    bar.update({})
    rows.append({"step": step, **metrics})

  tokenize = lambda text: processor.tokenizer.encode(text, add_special_tokens=False)
  _log.info("format warm-up: %d supervised steps", config.steps)
  try:
    model = supervised_warmup(model, data, target_fn, tokenize, config, mesh=ctx.mesh,
                              stop_id=model.config.eos_token_id, base=ctx.grpo_config(), on_step=on_step)
  finally:
    bar.close()
    writer.close()
  if rows:
    _log.info("format warm-up: token NLL %.3f -> %.3f", rows[0]["nll"], rows[-1]["nll"])
  return model, rows


def train_policy(ctx: RunContext, model: Qwen25VL, model_dir: str, processor: Any, *,
                 data: Iterator[Mapping[str, Any]], reward_fn: RewardFn,
                 warmup_data: Iterator[Mapping[str, Any]] | None, target_fn: TargetFn) -> TrainResult:
  """Warm-up (skipped when resuming), GRPO for `train.num_steps` loop steps, export.

  model_dir: the checkpoint the model came from (its tokenizer and processor files go into the export).
  """
  c = ctx.config
  resuming = os.path.isdir(ctx.path("checkpoints")) and os.listdir(ctx.path("checkpoints"))
  warmup_rows: list[dict[str, float]] = []
  if c.warmup.steps and not resuming and warmup_data is not None:
    model, warmup_rows = _warmup(ctx, model, processor, warmup_data, target_fn)
  grpo = ctx.grpo_config()
  trainer = GRPOTrainer(model, grpo, ctx.sampler_config(max_new_tokens=grpo.max_new_tokens), ctx.trainer_config(),
                        mesh=ctx.mesh, workdir=ctx.workdir, data=data, reward_fn=reward_fn,
                        detokenize=processor.decode)
  if trainer.step:
    _log.info("resuming GRPO from loop step %d", trainer.step)
  history = trainer.run()
  model = trainer.model()
  export_dir = ctx.export(model, model_dir) if c.train.export else ""
  return TrainResult(model=model, export_dir=export_dir, history=history, warmup_history=warmup_rows)
