"""Rewards of both MMRAG-RFT stages: host-side parsing into fixed-shape arrays, jitted kernels.

`stage1_rewards(completions, gold_labels, config)` and `stage2_rewards(completions, references, config)`
return a RewardResult (weighted total, every component, malformed counts). The malformed kinds and
their rewards are documented in `mmrag_jax/formats/tags.py` and `mmrag_jax/formats/parse.py`.
"""

from mmrag_jax.rl.rewards.answers import MMQAAnswer, Stage2Reference, WebQAAnswer
from mmrag_jax.rl.rewards.config import Stage1RewardConfig, Stage2RewardConfig
from mmrag_jax.rl.rewards.result import RewardResult
from mmrag_jax.rl.rewards.stage1 import stage1_reward_kernel, stage1_rewards
from mmrag_jax.rl.rewards.stage2 import stage2_reward_kernel, stage2_rewards

__all__ = [
    "MMQAAnswer",
    "RewardResult",
    "Stage1RewardConfig",
    "Stage2Reference",
    "Stage2RewardConfig",
    "WebQAAnswer",
    "stage1_reward_kernel",
    "stage1_rewards",
    "stage2_reward_kernel",
    "stage2_rewards",
]
