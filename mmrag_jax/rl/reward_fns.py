"""The two MMRAG-RFT stages' reward kernels behind the loop's reward interface.

    reward_fn(completions [N strings], metadata {field: [N, ...]}) -> {'total': [N], component: [N], ...}

The metadata are the pipeline's per-prompt fields repeated for each sample (see
`mmrag_jax.data.pipeline`): stage 1 uses `label` (1 relevant, 0 not, -1 padding); stage 2 uses `answers`,
`category`, `num_candidates` and `candidate_is_gold`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mmrag_jax.evaluation import webqa_metrics
from mmrag_jax.rl.rewards import (
    MMQAAnswer,
    Stage1RewardConfig,
    Stage2Reference,
    Stage2RewardConfig,
    WebQAAnswer,
    stage1_rewards,
    stage2_rewards,
)
from mmrag_jax.rl.rollout import RewardFn

__all__ = ["stage1_reward_fn", "stage2_reward_fn"]


def _require(metadata: Mapping[str, np.ndarray], names: Sequence[str], stage: str) -> None:
  missing = [name for name in names if name not in metadata]
  if missing:
    raise ValueError(f"{stage} rewards need batch metadata {missing}; got fields {sorted(metadata)}")


def stage1_reward_fn(config: Stage1RewardConfig = Stage1RewardConfig()) -> RewardFn:
  """Stage-1 (point-wise relevance) rewards: total, format, relevance."""
  def reward(completions: Sequence[str], metadata: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    _require(metadata, ["label"], "stage-1")
    result = stage1_rewards(list(completions), [int(label) == 1 for label in metadata["label"]], config)
    return {"total": np.asarray(result.total), **{k: np.asarray(v) for k, v in result.components.items()}}

  return reward


def _stage2_reference(answers: Sequence[str], category: str, num_candidates: int,
                      candidate_is_gold: Sequence[bool]) -> Stage2Reference:
  """The gold data of one stage-2 prompt from its pipeline metadata.

  A WebQA question (category one of the WebQA Qcates) is scored against its first answer sentence with
  the official keyword accuracy of its category; any other category is MultimodalQA, scored against
  the whole answer list.
  """
  count = max(int(num_candidates), 1)
  gold = tuple(i + 1 for i, is_gold in enumerate(candidate_is_gold) if is_gold and i < count)
  answers = tuple(str(a) for a in answers) or ("",)
  if category in webqa_metrics.QCATES:
    answer = WebQAAnswer(target=answers[0], qcate=category)
  else:
    answer = MMQAAnswer(spans=answers)
  return Stage2Reference(num_candidates=count, gold_numbers=gold, answer=answer)


def stage2_reward_fn(config: Stage2RewardConfig = Stage2RewardConfig()) -> RewardFn:
  """Stage-2 (evidence ranking + answer) rewards: total, format, ranking, set_f1, ndcg, answer, answer_em."""
  def reward(completions: Sequence[str], metadata: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    _require(metadata, ["answers", "category", "num_candidates", "candidate_is_gold"], "stage-2")
    references = [_stage2_reference(a, str(c), int(n), g) for a, c, n, g in zip(
        metadata["answers"], metadata["category"], metadata["num_candidates"], metadata["candidate_is_gold"])]
    result = stage2_rewards(list(completions), references, config)
    return {"total": np.asarray(result.total), **{k: np.asarray(v) for k, v in result.components.items()}}

  return reward
