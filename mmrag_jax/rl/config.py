"""GRPO settings: the algorithm, the optimizer and its schedule (one frozen, validated dataclass).

`GRPOConfig.from_mapping(config.rl)` builds it from an ml_collections / dict config and names the bad
field on any error. Defaults are plain GRPO; the common variants are switches:

  Dr.GRPO      advantage_scaling='none', aggregation='sequence-mean-token-sum-normalized'
  DAPO         eps_high=0.28 (clip-higher), aggregation='token-mean', dynamic_sampling=True
  GSPO         ratio_level='sequence', aggregation='sequence-mean-token-mean'
  KL penalty   beta > 0 with kl_estimator 'k1' | 'k2' | 'k3' (a frozen reference policy is kept)
  TIS / MIS    importance_correction='tis' | 'token-mask' | 'sequence-mask' with importance_cap C
  frozen ViT   freeze_vision_tower='tower' | 'tower_and_merger'
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import optax

from mmrag_jax.rl.advantages import ADVANTAGE_SCALINGS, group_size_error
from mmrag_jax.rl.losses import PolicyLossConfig
from mmrag_jax.validation import check_int, check_non_negative

__all__ = ["GRPOConfig"]

_OLD_LOGPROB_SOURCES = ("trainer", "sampler")
# Which parameters GRPO leaves untouched: none, the vision blocks (merger and language model train), or
# the whole vision tower with its merger (only the language model trains).
_FROZEN_VISION = ("none", "tower", "tower_and_merger")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """One GRPO run's algorithm and optimizer settings.

  group_size: completions sampled per prompt (G).
  num_iterations: policy updates per rollout batch (mu >= 1).
  advantage_scaling: 'group' | 'batch' | 'none' (see `advantages.py`); advantage_eps: added to the std.
  eps_low, eps_high, beta, kl_estimator, aggregation, norm_length: see `losses.PolicyLossConfig`;
    norm_length defaults to max_new_tokens.
  old_logprobs: what the ratio's denominator is. 'trainer': log-probs of the rollout-time parameters
    recomputed by the trainer in the first update of each batch (the ratio is exactly 1 there);
    'sampler': the sampler's own log-probs (the ratio then also absorbs sampler / trainer mismatch).
  temperature: divides the logits of the trained policy (1.0: the policy the sampler reports).
  logprob_chunk_size: completion positions per LM-head chunk (memory vs. speed).
  max_new_tokens: completion budget of the sampler.
  learning_rate, warmup_steps, total_steps, final_lr_fraction: linear warmup from 0, then cosine decay
    to learning_rate * final_lr_fraction at optimizer step total_steps.
  adam_b1, adam_b2, adam_eps, weight_decay: AdamW; max_grad_norm: global-norm clipping (0 = off).
  ratio_level, importance_correction, importance_cap: see `losses.PolicyLossConfig` (GSPO; rollout
    importance correction against the sampler's `sampling_logprobs`).
  dynamic_sampling: DAPO's dynamic sampling: groups whose rewards are all equal are dropped and refilled
    from further prompts; max_refill_batches: at most this many extra pipeline batches per loop step.
  freeze_vision_tower: one of FROZEN_VISION; frozen parameters get no gradient and no optimizer state.
  """

  group_size: int = 8
  num_iterations: int = 1
  advantage_scaling: str = "group"
  advantage_eps: float = 1e-4
  eps_low: float = 0.2
  eps_high: float = 0.2
  beta: float = 0.0
  kl_estimator: str = "k3"
  aggregation: str = "token-mean"
  norm_length: int | None = None
  old_logprobs: str = "trainer"
  temperature: float = 1.0
  logprob_chunk_size: int = 256
  max_new_tokens: int = 512
  learning_rate: float = 1e-6
  warmup_steps: int = 0
  total_steps: int = 1000
  final_lr_fraction: float = 0.0
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8
  weight_decay: float = 0.0
  max_grad_norm: float = 1.0
  ratio_level: str = "token"
  importance_correction: str = "none"
  importance_cap: float = 2.0
  dynamic_sampling: bool = False
  max_refill_batches: int = 4
  freeze_vision_tower: str = "none"

  def __post_init__(self) -> None:
    for name in ("group_size", "num_iterations", "logprob_chunk_size", "max_new_tokens", "total_steps"):
      check_int("GRPOConfig", name, getattr(self, name), low=1)
    if why := group_size_error(self.group_size):
      raise ValueError(f"GRPOConfig.group_size {why}")
    check_int("GRPOConfig", "warmup_steps", self.warmup_steps, low=0)
    for name in ("advantage_eps", "learning_rate", "adam_eps", "weight_decay", "max_grad_norm",
                 "final_lr_fraction"):
      check_non_negative("GRPOConfig", name, getattr(self, name))
    for name in ("adam_b1", "adam_b2"):
      if not 0 <= getattr(self, name) < 1:
        raise ValueError(f"GRPOConfig.{name} must lie in [0, 1), got {getattr(self, name)!r}")
    if not self.temperature > 0:
      raise ValueError(f"GRPOConfig.temperature must be > 0, got {self.temperature!r}")
    if self.advantage_scaling not in ADVANTAGE_SCALINGS:
      raise ValueError(f"GRPOConfig.advantage_scaling must be one of {ADVANTAGE_SCALINGS}, "
                       f"got {self.advantage_scaling!r}")
    if not isinstance(self.dynamic_sampling, bool):
      raise ValueError(f"GRPOConfig.dynamic_sampling must be a bool, got {self.dynamic_sampling!r}")
    check_int("GRPOConfig", "max_refill_batches", self.max_refill_batches, low=0)
    if self.freeze_vision_tower not in _FROZEN_VISION:
      raise ValueError(f"GRPOConfig.freeze_vision_tower must be one of {_FROZEN_VISION}, "
                       f"got {self.freeze_vision_tower!r}")
    if self.old_logprobs not in _OLD_LOGPROB_SOURCES:
      raise ValueError(f"GRPOConfig.old_logprobs must be one of {_OLD_LOGPROB_SOURCES}, got {self.old_logprobs!r}")
    try:
      self.loss_config()
    except ValueError as e:
      raise ValueError(str(e).replace("PolicyLossConfig.", "GRPOConfig.")) from None

  def loss_config(self) -> PolicyLossConfig:
    return PolicyLossConfig(eps_low=self.eps_low, eps_high=self.eps_high, beta=self.beta,
                            kl_estimator=self.kl_estimator, aggregation=self.aggregation,
                            norm_length=self.norm_length or self.max_new_tokens, ratio_level=self.ratio_level,
                            importance_correction=self.importance_correction, importance_cap=self.importance_cap)

  def learning_rate_schedule(self) -> optax.Schedule:
    """Learning rate per optimizer step: linear warmup from 0, cosine decay to the final fraction."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=self.learning_rate, warmup_steps=self.warmup_steps,
        decay_steps=max(self.total_steps, self.warmup_steps + 1),
        end_value=self.learning_rate * self.final_lr_fraction)

  def optimizer(self) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on the schedule (weight decay on every parameter).

    Equal configs return the same object, so jitted update steps built from it are reused.
    """
    return _optimizer(self)

  @classmethod
  def from_mapping(cls, fields: Mapping[str, Any]) -> "GRPOConfig":
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise ValueError(f"unknown GRPOConfig field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**dict(fields))


@functools.lru_cache(maxsize=16)
def _optimizer(config: GRPOConfig) -> optax.GradientTransformation:
  adamw = optax.adamw(config.learning_rate_schedule(), b1=config.adam_b1, b2=config.adam_b2,
                      eps=config.adam_eps, weight_decay=config.weight_decay)
  if config.max_grad_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw)
  return adamw
