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

from mmrag_jax.model.qwen25vl import Qwen25VL
from mmrag_jax.rl.batch import TrainBatch, build_train_batch
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.rollout import processor_batch
from mmrag_jax.rl.update import PolicyUpdater
from mmrag_jax.sampling import prepare_bucketed
from mmrag_jax.sampling.inputs import to_host

# pipeline batch -> one reference completion (text, without the stop token) per row.
TargetFn = Callable[[Mapping[str, Any]], Sequence[str]]
Tokenize = Callable[[str], Sequence[int]]


@dataclasses.dataclass(frozen=True)
class WarmupConfig:
  """steps: optimizer steps (one pipeline batch each); learning_rate: constant AdamW rate;
  max_new_tokens: completion width T (longer targets are cut, and counted); buckets as the sampler's."""

  steps: int
  learning_rate: float
  max_new_tokens: int
  length_buckets: tuple[int, ...]
  patch_buckets: tuple[int, ...]
  max_grad_norm: float = 1.0
  logprob_chunk_size: int = 256

  def grpo_config(self) -> GRPOConfig:
    # group_size only matters for advantages, which the warm-up sets itself.
    return GRPOConfig(group_size=2, learning_rate=self.learning_rate, warmup_steps=0, total_steps=max(self.steps, 1),
                      final_lr_fraction=1.0, max_grad_norm=self.max_grad_norm, beta=0.0, aggregation="token-mean",
                      max_new_tokens=self.max_new_tokens, logprob_chunk_size=self.logprob_chunk_size)


def target_batch(model: Qwen25VL, batch: Mapping[str, Any], targets: Sequence[str], tokenize: Tokenize,
                 stop_id: int, config: WarmupConfig) -> tuple[TrainBatch, int]:
  """Pipeline batch + B target texts -> a host TrainBatch (advantages 1) and the number of cut targets.

  Each completion is the target's tokens followed by `stop_id`, cut to T = config.max_new_tokens.
  """
  width = config.max_new_tokens
  rows = len(targets)
  ids = np.full((rows, width), model.config.pad_token_id, np.int32)
  lengths = np.zeros((rows,), np.int32)
  cut = 0
  for row, text in enumerate(targets):
    tokens = list(tokenize(text)) + [stop_id]
    cut += len(tokens) > width
    tokens = tokens[:width]
    ids[row, :len(tokens)] = tokens
    lengths[row] = len(tokens)
  prompts = processor_batch(batch)
  inputs = prepare_bucketed(prompts, model.config, config.length_buckets, config.patch_buckets)
  valid = np.asarray(batch.get("valid", np.ones((rows,), bool)), bool)
  train = build_train_batch(inputs, ids, lengths, np.zeros((rows, width), np.float32), group_size=1,
                            pad_token_id=model.config.pad_token_id, prompt_valid=valid)
  return dataclasses.replace(train, advantages=np.ones((rows,), np.float32)), cut


def supervised_warmup(model: Qwen25VL, data: Iterator[Mapping[str, Any]], target_fn: TargetFn, tokenize: Tokenize,
                      config: WarmupConfig, *, mesh: Mesh, stop_id: int,
                      on_step: Callable[[int, dict[str, float]], None] | None = None) -> nnx.Module:
  """Runs `config.steps` supervised steps and returns the updated model.

  The model's arrays are taken over (as by `PolicyUpdater`): use the returned model afterwards.
  on_step(step, metrics) receives {'nll': token-mean NLL before the step, 'grad_norm', 'cut_targets'}.
  """
  updater = PolicyUpdater(model, config.grpo_config(), mesh)
  for step in range(1, config.steps + 1):
    batch = next(data)
    train, cut = target_batch(model, batch, target_fn(batch), tokenize, stop_id, config)
    placed = updater.place_batch(train)
    metrics, logprobs = updater.optimizer_update([placed])
    mask = np.asarray(train.completion_mask)
    nll = -float((to_host(logprobs[0]) * mask).sum() / max(mask.sum(), 1))
    if on_step is not None:
      on_step(step, {"nll": nll, "grad_norm": float(metrics["grad_norm"]), "cut_targets": float(cut)})
  return updater.model()
