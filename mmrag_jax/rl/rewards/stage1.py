"""Stage-1 rewards (point-wise relevance judgment): format and relevance, each in {0, 1}.

  format     1 iff the completion is `[<think>...</think>] <answer>yes|no</answer>` with no malformed kind
             (see `formats/tags.py`; the think block follows config.think).
  relevance  1 iff the answer is exactly `yes` / `no` and equals the gold label (see `formats/parse.py`).
  total      format_weight * format + relevance_weight * relevance.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax

from mmrag_jax.parallel import platform_jit
from mmrag_jax.rl.rewards import kernels
from mmrag_jax.rl.rewards.batch import Stage1Batch, pack_stage1
from mmrag_jax.rl.rewards.config import Stage1RewardConfig
from mmrag_jax.formats.parse import parse_stage1
from mmrag_jax.rl.rewards.result import RewardResult, malformed_counts

__all__ = ["stage1_kernel", "stage1_rewards"]


@functools.partial(platform_jit, static_argnames="gate_on_format")
def stage1_kernel(batch: Stage1Batch, weights: dict[str, jax.Array], gate_on_format: bool
                  ) -> dict[str, jax.Array]:
  format_ok = jax.vmap(kernels.format_reward)(batch.malformed)
  relevance = jax.vmap(kernels.relevance_reward)(batch.label, batch.gold_label)
  if gate_on_format:
    relevance = relevance * format_ok
  total = weights["format_weight"] * format_ok + weights["relevance_weight"] * relevance
  return {"total": total, "format": format_ok, "relevance": relevance}


def _stage1_reward_kernel(batch: Stage1Batch, config: Stage1RewardConfig) -> dict[str, jax.Array]:
  """Components and 'total', each [B] float32, of a packed stage-1 batch (jitted; weights traced)."""
  return stage1_kernel(batch, config.weights(), gate_on_format=config.gate_on_format)


def stage1_rewards(completions: Sequence[str], gold_labels: Sequence[bool],
                   config: Stage1RewardConfig = Stage1RewardConfig()) -> RewardResult:
  """Rewards of B stage-1 completions; gold_labels[b] is True when candidate b is relevant."""
  if len(completions) != len(gold_labels):
    raise ValueError(f"got {len(completions)} completions but {len(gold_labels)} gold labels")
  parses = [parse_stage1(text, config.think) for text in completions]
  batch = pack_stage1(parses, gold_labels)
  outputs = _stage1_reward_kernel(batch, config)
  total = outputs.pop("total")
  return RewardResult(total, outputs, malformed_counts(batch.malformed, [p.non_ascii for p in parses]))
