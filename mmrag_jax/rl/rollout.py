"""One rollout: a pipeline batch of prompts -> G completions each -> rewards -> a host TrainBatch.

The reward interface is a callable

    reward_fn(completions: list[str] (N), metadata: dict[str, np.ndarray] (each [N, ...])) -> {name: [N]}

returning every reward component and the scalar reward under 'total' (see `reward_fns.py` for the two
MMRAG-RFT stages). Metadata are the pipeline batch's per-prompt fields (`PipelineBatch.meta`: qid, label,
answers, ...) repeated for the G samples of each prompt.

Every process works on the same global batch (see `trainer.py`), so what is built here is identical on
all hosts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from mmrag_jax.data.batching import PipelineBatch
from mmrag_jax.model.qwen25vl import Qwen25VL
from mmrag_jax.rl.batch import TrainBatch, build_train_batch
from mmrag_jax.sampling import SampleOutput, Sampler, SamplerConfig

__all__ = [
    "Detokenize", "RewardFn", "Rollout", "checked_rewards", "collect_rollout", "prompt_metadata", "rollout_metrics",
]

RewardFn = Callable[[Sequence[str], Mapping[str, np.ndarray]], Mapping[str, Any]]
Detokenize = Callable[[Sequence[int]], str]

@dataclasses.dataclass(frozen=True)
class Rollout:
  """One micro-batch of completions on the host. N = B * G rows, group-major.

  batch:      the `TrainBatch` of prompts + completions (advantages still zero).
  rewards:    name -> [N] float32 reward component, 'total' included.
  valid:      [N] bool, False for the rows of padding prompts.
  lengths:    [N] int32, generated tokens per row, the stop token included.
  truncated:  [N] bool, True when the row hit max_new_tokens without a stop id.
  texts:      N strings, the completions without their stop token.
  """

  batch: TrainBatch
  rewards: dict[str, np.ndarray]
  valid: np.ndarray
  lengths: np.ndarray
  truncated: np.ndarray
  texts: list[str]


def prompt_metadata(meta: Mapping[str, Any], group_size: int) -> dict[str, np.ndarray]:
  """Per-prompt metadata fields [B, ...] repeated to [B * G, ...] (group-major)."""
  return {key: np.repeat(np.asarray(value), group_size, axis=0) for key, value in meta.items()}


def checked_rewards(rewards: Mapping[str, Any], num_rows: int) -> dict[str, np.ndarray]:
  """Reward components as [N] float32 host arrays; requires 'total'."""
  if "total" not in rewards:
    raise ValueError(f"the reward function must return a 'total' entry; got {sorted(rewards)}")
  out = {}
  for name, value in rewards.items():
    array = np.asarray(jax.device_get(value), np.float32)
    if array.shape != (num_rows,):
      raise ValueError(f"reward component {name!r} has shape {array.shape}, expected ({num_rows},)")
    out[name] = array
  return out


def collect_rollout(model: Qwen25VL, batch: PipelineBatch, key: jax.Array, *, sampler_config: SamplerConfig,
                    group_size: int, reward_fn: RewardFn, detokenize: Detokenize, mesh: Mesh | None = None,
                    prompt_ids: np.ndarray | None = None) -> Rollout:
  """Samples G completions for each prompt of a pipeline batch, scores them and builds the TrainBatch.

  batch: a `PipelineBatch` (from the pipeline, or built from a `prompt_batch` and its metadata);
  key: the rollout's PRNG key; prompt_ids: [B] stable ids for the per-sample RNG (default 0..B-1).
  """
  valid = np.asarray(batch.prompts.valid, bool)
  sampler = Sampler(model, sampler_config, mesh=mesh)
  samples = sampler.generate(batch.prompts, key, group_size=group_size, prompt_ids=prompt_ids)
  texts = samples.texts(detokenize, sampler.stop_ids)
  rewards = checked_rewards(reward_fn(texts, prompt_metadata(batch.meta, group_size)), len(texts))
  train_batch = build_train_batch(batch.prompts, samples.tokens, samples.lengths, samples.policy_logprobs,
                                  group_size=group_size, config=model.config,
                                  sampling_logprobs=samples.sampling_logprobs)
  return Rollout(batch=train_batch, rewards=rewards, valid=np.repeat(valid, group_size), lengths=samples.lengths,
                 truncated=samples.truncated, texts=texts)


def rollout_metrics(rollouts: Sequence[Rollout]) -> dict[str, float]:
  """Means over valid completions: reward/<component>, completion_length (tokens), truncation_rate;
  plus completion_length_max, completion_tokens, prompt_tokens (real prompt tokens of the valid rows, as the
  update reads them) and valid_completions."""
  valid = np.concatenate([r.valid for r in rollouts])
  count = max(int(valid.sum()), 1)
  lengths = np.concatenate([r.lengths for r in rollouts])
  truncated = np.concatenate([r.truncated for r in rollouts])
  metrics = {f"reward/{name}": float(np.concatenate([r.rewards[name] for r in rollouts])[valid].sum() / count)
             for name in rollouts[0].rewards}
  prompt_tokens = sum(
      float(np.asarray(r.batch.inputs.attention_mask)[r.valid, :-r.batch.completion_length].sum()) for r in rollouts)
  metrics.update({
      "prompt_tokens": prompt_tokens,
      "completion_length": float(lengths[valid].sum() / count),
      "completion_length_max": float(lengths[valid].max(initial=0)),
      "truncation_rate": float(truncated[valid].sum() / count),
      "completion_tokens": float(lengths[valid].sum()),
      "valid_completions": float(valid.sum()),
  })
  return metrics
