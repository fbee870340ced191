"""Supervised warm-up: teacher-forced fine-tuning on reference completions with the GRPO update machinery.

A small random model (the demo's) never samples the output format by chance, so GRPO would see zero
advantage everywhere; a few supervised steps on well-formed completions fix that. Real checkpoints follow
the instructions already and skip it (warmup.steps = 0).

No second training step is written for it. With every advantage A = 1 and the ratio taken at the current
parameters (r = pi_theta / stop_grad(pi_theta) = 1, inside the clip range), the token-mean surrogate

    L(theta) = -(1 / |M|) sum_{(n, t) in M} r_nt * A_n

has gradient -(1 / |M|) sum_{(n, t) in M} grad log pi_theta(y_nt | ...), the gradient of the token-mean
negative log-likelihood of the reference tokens (M: their mask). So `PolicyUpdater.optimizer_update`
with `old_logprobs=None` is exactly a supervised step; the NLL it reports is computed from the log-probs
that update returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from mmrag_jax.data.batching import PipelineBatch
from mmrag_jax.model.qwen25vl import Qwen25VL
from mmrag_jax.rl.batch import TrainBatch, build_train_batch
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.update import PolicyUpdater
from mmrag_jax.sampling.inputs import to_host

__all__ = ["TargetFn", "Tokenize", "WarmupConfig", "supervised_warmup", "target_batch"]

# a pipeline batch's metadata ([B] fields) -> one reference completion (text, without the stop token) per row.
TargetFn = Callable[[Mapping[str, Any]], Sequence[str]]
Tokenize = Callable[[str], Sequence[int]]


@dataclasses.dataclass(frozen=True)
class WarmupConfig:
  """steps: optimizer steps (one pipeline batch each); learning_rate: constant AdamW rate;
  max_new_tokens: completion width T (longer targets are cut, and counted); group_size: rows per prompt, each a copy of the prompt's target. Copies do not change the token-mean
  loss; with the GRPO run's group size the warm-up batch has the GRPO batch's exact shapes, so the two
  share one compiled gradient step."""

  steps: int
  learning_rate: float
  max_new_tokens: int
  max_grad_norm: float = 1.0
  logprob_chunk_size: int = 256
  group_size: int = 1

  def grpo_config(self, base: GRPOConfig | None = None) -> GRPOConfig:
    """The update settings: `base` (the GRPO run that follows, whose loss settings the warm-up keeps so
    that both share the compiled gradient step) with a constant learning rate, token-mean aggregation,
    no KL and one update per batch. Its `freeze_vision_tower` is kept too: the warm-up trains exactly
    the parameters GRPO will."""
    base = base or GRPOConfig(group_size=2)  # group_size only matters for advantages, set here directly
    return dataclasses.replace(
        base, learning_rate=self.learning_rate, warmup_steps=0, total_steps=max(self.steps, 1),
        final_lr_fraction=1.0, max_grad_norm=self.max_grad_norm, beta=0.0, aggregation="token-mean",
        num_iterations=1, old_logprobs="trainer", temperature=1.0, max_new_tokens=self.max_new_tokens,
        norm_length=None, logprob_chunk_size=self.logprob_chunk_size)


def target_batch(model: Qwen25VL, batch: PipelineBatch, targets: Sequence[str], tokenize: Tokenize,
                 stop_id: int, config: WarmupConfig) -> tuple[TrainBatch, int]:
  """Pipeline batch of B prompts + B target texts -> a host TrainBatch of B * G rows (advantages 1) and the
  number of targets that were cut.

  Each completion is the target's tokens followed by `stop_id`, cut to T = config.max_new_tokens; the G
  rows of a prompt (G = config.group_size) hold the same completion.
  """
  width, group = config.max_new_tokens, config.group_size
  prompts_count = len(targets)
  ids = np.full((prompts_count, width), model.config.pad_token_id, np.int32)
  lengths = np.zeros((prompts_count,), np.int32)
  cut = 0
  for row, text in enumerate(targets):
    tokens = list(tokenize(text)) + [stop_id]
    cut += len(tokens) > width
    tokens = tokens[:width]
    ids[row, :len(tokens)] = tokens
    lengths[row] = len(tokens)
  rows = prompts_count * group
  train = build_train_batch(batch.prompts, np.repeat(ids, group, axis=0), np.repeat(lengths, group),
                            np.zeros((rows, width), np.float32), group_size=group, config=model.config)
  return dataclasses.replace(train, advantages=np.ones((rows,), np.float32)), cut


def supervised_warmup(model: Qwen25VL, data: Iterator[PipelineBatch], target_fn: TargetFn, tokenize: Tokenize,
                      config: WarmupConfig, *, mesh: Mesh, stop_id: int, base: GRPOConfig | None = None,
                      on_step: Callable[[int, dict[str, float]], None] | None = None) -> nnx.Module:
  """Runs `config.steps` supervised steps and returns the updated model.

  The model's arrays are taken over (as by `PolicyUpdater`): use the returned model afterwards.
  base: the GRPO settings of the run that follows (see `WarmupConfig.grpo_config`).
  on_step(step, metrics) receives {'nll': token-mean NLL before the step, 'grad_norm', 'cut_targets'}.
  """
  updater = PolicyUpdater(model, config.grpo_config(base), mesh)
  for step in range(1, config.steps + 1):
    batch = next(data)
    train, cut = target_batch(model, batch, target_fn(batch.meta), tokenize, stop_id, config)
    placed = updater.place_batch(train)
    metrics, logprobs = updater.optimizer_update([placed])
    mask = np.asarray(train.completion_mask)
    nll = -float((to_host(logprobs[0]) * mask).sum() / max(mask.sum(), 1))
    if on_step is not None:
      on_step(step, {"nll": nll, "grad_norm": float(metrics["grad_norm"]), "cut_targets": float(cut)})
  return updater.model()
