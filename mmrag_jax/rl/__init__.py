"""Reinforcement fine-tuning: rewards of both stages, the GRPO math, the sharded update and the training loop.

    updater = PolicyUpdater(model, GRPOConfig(group_size=8), mesh)          # jitted, sharded GRPO update
    trainer = GRPOTrainer(model, grpo, sampler_config, TrainerConfig(num_steps=1000), mesh=mesh,
                          workdir=workdir, data=iter(pipeline), reward_fn=stage2_reward_fn(),
                          detokenize=processor.decode)
    trainer.run()
"""

from mmrag_jax.rl.rewards import (
    MMQAAnswer,
    RewardResult,
    Stage1RewardConfig,
    Stage2Reference,
    Stage2RewardConfig,
    WebQAAnswer,
    stage1_rewards,
    stage2_rewards,
)
from mmrag_jax.rl.advantages import ADVANTAGE_SCALINGS, Advantages, group_advantages
from mmrag_jax.rl.batch import TrainBatch, build_train_batch
from mmrag_jax.rl.checkpointing import CheckpointStore
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.kl import KL_ESTIMATORS, kl_estimator
from mmrag_jax.rl.losses import AGGREGATIONS, PolicyLossConfig, aggregate, clipped_surrogate, policy_loss
from mmrag_jax.rl.metrics_log import MetricsWriter, ProgressBar, read_metrics
from mmrag_jax.rl.policy import QwenLogprobs, completion_logprobs
from mmrag_jax.rl.reward_fns import stage1_reward_fn, stage2_reward_fn
from mmrag_jax.rl.rollout import Rollout, collect_rollout, rollout_metrics
from mmrag_jax.rl.trainer import GRPOTrainer, TrainerConfig
from mmrag_jax.rl.update import PolicyUpdater, RolloutUpdate

__all__ = [
    "MMQAAnswer",
    "RewardResult",
    "Stage1RewardConfig",
    "Stage2Reference",
    "Stage2RewardConfig",
    "WebQAAnswer",
    "stage1_rewards",
    "stage2_rewards",
    # GRPO
    "ADVANTAGE_SCALINGS",
    "AGGREGATIONS",
    "Advantages",
    "CheckpointStore",
    "GRPOConfig",
    "GRPOTrainer",
    "KL_ESTIMATORS",
    "MetricsWriter",
    "PolicyLossConfig",
    "PolicyUpdater",
    "ProgressBar",
    "QwenLogprobs",
    "Rollout",
    "RolloutUpdate",
    "TrainBatch",
    "TrainerConfig",
    "aggregate",
    "build_train_batch",
    "clipped_surrogate",
    "collect_rollout",
    "completion_logprobs",
    "group_advantages",
    "kl_estimator",
    "policy_loss",
    "read_metrics",
    "rollout_metrics",
    "stage1_reward_fn",
    "stage2_reward_fn",
]
