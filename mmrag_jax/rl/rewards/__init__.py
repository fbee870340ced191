"""Rewards of both MMRAG-RFT stages: host-side parsing into fixed-shape arrays, jitted kernels.

    result = stage1_rewards(completions, gold_labels, Stage1RewardConfig())      # RewardResult
    reference = Stage2Reference(num_candidates=5, gold_numbers=(2,), answer=WebQAAnswer(target, qcate))
    result = stage2_rewards(completions, [reference] * len(completions), Stage2RewardConfig())

A RewardResult holds the weighted total, every component and the malformed counts. The malformed kinds
and their rewards are documented in `mmrag_jax/formats/tags.py` and `mmrag_jax/formats/parse.py`.
"""

from mmrag_jax.rl.rewards.answers import MMQAAnswer, Stage2Reference, WebQAAnswer
from mmrag_jax.rl.rewards.config import Stage1RewardConfig, Stage2RewardConfig
from mmrag_jax.rl.rewards.result import RewardResult
from mmrag_jax.rl.rewards.stage1 import stage1_rewards
from mmrag_jax.rl.rewards.stage2 import stage2_rewards

__all__ = [
    "MMQAAnswer", "RewardResult", "Stage1RewardConfig", "Stage2Reference", "Stage2RewardConfig", "WebQAAnswer",
    "stage1_rewards", "stage2_rewards",
]
