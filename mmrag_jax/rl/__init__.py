"""Reinforcement fine-tuning: the GRPO math, the sharded update and the training loop.

    updater = PolicyUpdater(model, GRPOConfig(group_size=8), mesh)          # jitted, sharded GRPO update
    trainer = GRPOTrainer(model, grpo, sampler_config, TrainerConfig(num_steps=1000), mesh=mesh,
                          workdir=workdir, data=iter(pipeline), reward_fn=stage2_reward_fn(),
                          detokenize=processor.decode)
    trainer.run()

The math is pure functions: `group_advantages`, `policy_loss` (`PolicyLossConfig`), `kl_estimator`. A rollout
(`collect_rollout` -> `Rollout`) carries one `TrainBatch`; `CheckpointStore` saves and resumes the run. The
rewards of both stages are in `mmrag_jax.rl.rewards`; `stage1_reward_fn` / `stage2_reward_fn` wrap them
for the trainer.
"""

from mmrag_jax.rl.advantages import group_advantages
from mmrag_jax.rl.batch import TrainBatch, build_train_batch
from mmrag_jax.rl.checkpointing import CheckpointStore
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.kl import kl_estimator
from mmrag_jax.rl.losses import PolicyLossConfig, policy_loss
from mmrag_jax.rl.reward_fns import stage1_reward_fn, stage2_reward_fn
from mmrag_jax.rl.rollout import Rollout, collect_rollout
from mmrag_jax.rl.trainer import GRPOTrainer, TrainerConfig
from mmrag_jax.rl.update import PolicyUpdater

__all__ = [
    "CheckpointStore", "GRPOConfig", "GRPOTrainer", "PolicyLossConfig", "PolicyUpdater", "Rollout", "TrainBatch",
    "TrainerConfig", "build_train_batch", "collect_rollout", "group_advantages", "kl_estimator", "policy_loss",
    "stage1_reward_fn", "stage2_reward_fn",
]
