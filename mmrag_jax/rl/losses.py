"""The GRPO policy loss: clipped importance-ratio surrogate, KL penalty, and exact aggregation.

Per completion token t of completion i, with rho = exp(log pi_theta - log pi_old) against the rollout
(old) log-probs and advantage A_i:

  l_it = -min(rho * A_i, clip(rho, 1 - eps_low, 1 + eps_high) * A_i) + beta * KL_t

(eps_high > eps_low is DAPO's clip-higher). Only completion tokens count: `mask` [N, T] is 1 on the
generated tokens up to and including the stop token, 0 on prompt, image and padding positions, which are
never part of the [N, T] completion window in the first place.

Sequence-level ratio (GSPO, arXiv 2507.18071; ratio_level='sequence'): rho is replaced on every token of
completion i by the geometric mean of its token ratios, clipped once per sequence,

  s_i = exp( (1 / |y_i|) sum_t m_it (log pi_theta_it - log pi_old_it) ),   d s_i / d log pi_theta_it = s_i / |y_i|
  l_it = -min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i) + beta * KL_t

so 'sequence-mean-token-mean' gives exactly GSPO's objective mean_i -min(s_i A_i, clip(s_i) A_i), while
'token-mean' weights sequence i by its length |y_i|.

Rollout importance correction (importance_correction; TRL's vllm_importance_sampling, verl's
rollout_correction): tokens were drawn from the sampler's processed distribution pi_samp (temperature,
top-k, top-p), not from pi_old. With r_t = exp(log pi_old_t - log pi_samp_t) and cap C >= 1, the clipped
surrogate term (not the KL term) of token t is multiplied by a constant weight

  'tis'            w_t = min(r_t, C)
  'token-mask'     w_t = 1[1/C <= r_t <= C]
  'sequence-mask'  w_t = 1[1/C <= exp(mean_t' log r_t') <= C]   (mean over the tokens of t's completion)

Dropped tokens (w_t = 0) stay in the aggregation denominators below (as TRL does): the weight scales the
per-token loss, the token and sequence counts are those of the mask.

Aggregation returns a (sum, denominator) pair per micro-batch, so that accumulating sums and
denominators separately over micro-batches gives exactly the loss (and gradient) of the whole batch:

  token-mean                           sum_i sum_t l_it m_it      /  sum_i sum_t m_it
  sequence-mean-token-mean             sum_i (sum_t l_it m_it / sum_t m_it)  /  #sequences
  sequence-mean-token-sum-normalized   sum_i (sum_t l_it m_it / norm_length) /  #sequences  (Dr.GRPO)

#sequences counts completions with at least one token (rows of padding prompts have none).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from mmrag_jax.rl.kl import KL_ESTIMATORS, kl_estimator
from mmrag_jax.validation import check_non_negative, is_number

__all__ = [
    "AGGREGATIONS", "LossTerms", "MetricSums", "PolicyLossConfig", "add_metric_sums", "aggregate", "clipped_surrogate",
    "finalize_metrics", "policy_loss",
]

AGGREGATIONS = ("token-mean", "sequence-mean-token-mean", "sequence-mean-token-sum-normalized")
# Rollout importance correction between the distribution the sampler drew from and the trainer's.
_IMPORTANCE_CORRECTIONS = ("none", "tis", "token-mask", "sequence-mask")
_RATIO_LEVELS = ("token", "sequence")  # GRPO's per-token ratio, or GSPO's per-sequence one

# name -> (sum, count): every metric is accumulated as a pair so micro-batches combine exactly. Names
# ending in '_max' hold (max, 1) instead (count 0 without tokens) and combine by maximum.
MetricSums = dict[str, tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
  """Static settings of the policy loss (hashable: a jit static argument).

  eps_low / eps_high: the ratio is clipped to [1 - eps_low, 1 + eps_high].
  beta: KL coefficient (0 = no KL term and no reference model). kl_estimator: 'k1', 'k2' or 'k3'.
  aggregation: one of AGGREGATIONS. norm_length: the constant token count of
  'sequence-mean-token-sum-normalized' (usually the maximum completion length).
  ratio_level: 'token' (GRPO) or 'sequence' (GSPO). importance_correction: one of
  IMPORTANCE_CORRECTIONS ('none': off); importance_cap: its C >= 1.
  """

  eps_low: float = 0.2
  eps_high: float = 0.2
  beta: float = 0.0
  kl_estimator: str = "k3"
  aggregation: str = "token-mean"
  norm_length: int | None = None
  ratio_level: str = "token"
  importance_correction: str = "none"
  importance_cap: float = 2.0

  def __post_init__(self) -> None:
    if self.ratio_level not in _RATIO_LEVELS:
      raise ValueError(f"PolicyLossConfig.ratio_level must be one of {_RATIO_LEVELS}, got {self.ratio_level!r}")
    if self.importance_correction not in _IMPORTANCE_CORRECTIONS:
      raise ValueError(f"PolicyLossConfig.importance_correction must be one of {_IMPORTANCE_CORRECTIONS}, "
                       f"got {self.importance_correction!r}")
    if not is_number(self.importance_cap) or not 1 <= self.importance_cap < float("inf"):
      raise ValueError(f"PolicyLossConfig.importance_cap must be a finite number >= 1, got {self.importance_cap!r}")
    for name in ("eps_low", "eps_high", "beta"):
      check_non_negative("PolicyLossConfig", name, getattr(self, name))
    if self.eps_low >= 1:
      raise ValueError(f"PolicyLossConfig.eps_low must be < 1, got {self.eps_low!r}")
    if self.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(f"PolicyLossConfig.kl_estimator must be one of {sorted(KL_ESTIMATORS)}, "
                       f"got {self.kl_estimator!r}")
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"PolicyLossConfig.aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
    if self.aggregation == "sequence-mean-token-sum-normalized" and not (
        isinstance(self.norm_length, int) and self.norm_length > 0):
      raise ValueError("PolicyLossConfig.norm_length must be a positive int with aggregation "
                       f"'sequence-mean-token-sum-normalized', got {self.norm_length!r}")


def aggregate(per_token: jax.Array, mask: jax.Array, mode: str, norm_length: int | None = None
              ) -> tuple[jax.Array, jax.Array]:
  """(sum, denominator) of per_token [N, T] over mask [N, T] under aggregation `mode` (module doc)."""
  mask = mask.astype(jnp.float32)
  token_sums = jnp.sum(per_token * mask, axis=-1)  # [N]
  token_counts = jnp.sum(mask, axis=-1)
  num_sequences = jnp.sum(token_counts > 0).astype(jnp.float32)
  if mode == "token-mean":
    return jnp.sum(token_sums), jnp.sum(token_counts)
  if mode == "sequence-mean-token-mean":
    return jnp.sum(token_sums / jnp.maximum(token_counts, 1.0)), num_sequences
  if mode == "sequence-mean-token-sum-normalized":
    if norm_length is None:
      raise ValueError("aggregation 'sequence-mean-token-sum-normalized' needs norm_length")
    return jnp.sum(token_sums) / norm_length, num_sequences
  raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {AGGREGATIONS}")


def _clip_objective(ratio: jax.Array, advantages: jax.Array, eps_low: float, eps_high: float
                    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Per-token -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) [N, T] of ratios [N, T], advantages [N].

  Returns (loss, rho, clipped_low, clipped_high); clipped_* [N, T] bool mark tokens whose gradient the
  clip removes (rho < 1 - eps_low with A < 0, rho > 1 + eps_high with A > 0).
  """
  adv = advantages[:, None]
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
  clipped_low = (ratio < 1.0 - eps_low) & (adv < 0)
  clipped_high = (ratio > 1.0 + eps_high) & (adv > 0)
  return -jnp.minimum(unclipped, clipped), ratio, clipped_low, clipped_high


def clipped_surrogate(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array, eps_low: float,
                      eps_high: float) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """`_clip_objective` of the token ratio rho_it = exp(log pi_theta_it - log pi_old_it), inputs [N, T]."""
  ratio = jnp.exp(logprobs - jax.lax.stop_gradient(old_logprobs))
  return _clip_objective(ratio, advantages, eps_low, eps_high)


def _sequence_ratio(logprobs: jax.Array, old_logprobs: jax.Array, mask: jax.Array) -> jax.Array:
  """GSPO's s_i = exp(sum_t m_it (log pi_theta_it - log pi_old_it) / |y_i|) [N] of [N, T] inputs.

  Computed directly (not as GSPO-token's sg[s_i] pi / sg[pi]), so autodiff gives d s_i / d log pi_theta_it
  = s_i m_it / |y_i| and the gradient stays exact when per-token weights vary along a sequence.
  Rows without tokens get s = 1.
  """
  log_ratio = jnp.where(mask, logprobs - jax.lax.stop_gradient(old_logprobs), 0.0)  # padding may be -inf
  lengths = jnp.maximum(jnp.sum(mask.astype(jnp.float32), axis=-1), 1.0)
  return jnp.exp(jnp.sum(log_ratio, axis=-1) / lengths)


def _importance_weights(old_logprobs: jax.Array, sampling_logprobs: jax.Array, mask: jax.Array, correction: str,
                        cap: float) -> tuple[jax.Array, jax.Array]:
  """Rollout importance weights w [N, T] (constant) and ratios r = pi_old / pi_samp [N, T] (module doc).

  old_logprobs: log pi_old, the ratio's denominator; sampling_logprobs: log pi_samp, what the sampler drew
  from; correction: 'tis' | 'token-mask' | 'sequence-mask'; cap: C >= 1. r is 1 off the mask.
  """
  log_r = jax.lax.stop_gradient(jnp.where(mask, old_logprobs - sampling_logprobs, 0.0))
  ratio = jnp.exp(log_r)
  if correction == "tis":
    return jnp.minimum(ratio, cap), ratio
  if correction == "token-mask":
    keep = jnp.abs(log_r) <= math.log(cap)  # r in [1/C, C], symmetric in log space
  elif correction == "sequence-mask":
    lengths = jnp.maximum(jnp.sum(mask.astype(jnp.float32), axis=-1, keepdims=True), 1.0)
    keep = jnp.broadcast_to(jnp.abs(jnp.sum(log_r, axis=-1, keepdims=True) / lengths) <= math.log(cap),
                            log_r.shape)
  else:
    raise ValueError(f"unknown importance correction {correction!r}; choose one of {_IMPORTANCE_CORRECTIONS[1:]}")
  return keep.astype(jnp.float32), ratio


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossTerms:
  """loss_sum, denominator []: the aggregated loss pair; metrics: name -> (sum, count)."""

  loss_sum: jax.Array
  denominator: jax.Array
  metrics: MetricSums


def policy_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array, mask: jax.Array,
                config: PolicyLossConfig, *, ref_logprobs: jax.Array | None = None,
                entropy: jax.Array | None = None, sampler_logprobs: jax.Array | None = None,
                sampling_logprobs: jax.Array | None = None) -> LossTerms:
  """The GRPO loss pair and metric sums of one micro-batch (the equations: module doc).

  logprobs [N, T]: log pi_theta of the completion tokens (differentiated); old_logprobs [N, T]: rollout
  policy (treated as constant); advantages [N]; mask [N, T]; ref_logprobs [N, T] (needed iff beta > 0);
  entropy [N, T]: policy entropy per position, nats (metric only); sampler_logprobs [N, T]: what the
  sampler reported for the same tokens, to measure sampler / trainer drift (metric only);
  sampling_logprobs [N, T]: log-probs of the distribution the sampler drew from, for the importance
  correction (without them, e.g. teacher-forced warm-up batches, nothing was sampled and none applies).

  Metrics (token means unless stated): loss and policy_loss (in the configured aggregation), kl,
  clip_fraction, clip_fraction_low, clip_fraction_high, ratio (s_i on every token with the sequence
  ratio, whose clip decision the clip fractions count per token), entropy, sampler_logprob_abs_diff
  (|log pi_theta - log pi_sampler|), sampler_kl (k3 estimate of KL(pi_sampler || pi_theta)); with the
  importance correction is_weight_mean (w), is_masked_fraction (w = 0) and is_ratio_max (max_t r_t).
  """
  if config.beta > 0 and ref_logprobs is None:
    raise ValueError("beta > 0 needs ref_logprobs")
  mask_f = mask.astype(jnp.float32)
  if config.ratio_level == "sequence":
    seq_ratio = jnp.broadcast_to(_sequence_ratio(logprobs, old_logprobs, mask)[:, None], logprobs.shape)
    surrogate, ratio, clipped_low, clipped_high = _clip_objective(
        seq_ratio, advantages, config.eps_low, config.eps_high)
  else:
    surrogate, ratio, clipped_low, clipped_high = clipped_surrogate(
        logprobs, old_logprobs, advantages, config.eps_low, config.eps_high)
  correct = config.importance_correction != "none" and sampling_logprobs is not None
  if correct:
    weight, is_ratio = _importance_weights(old_logprobs, sampling_logprobs, mask, config.importance_correction,
                                           config.importance_cap)
    surrogate = surrogate * weight
  per_token = surrogate
  tokens = jnp.sum(mask_f)

  def token_mean(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.sum(jax.lax.stop_gradient(x).astype(jnp.float32) * mask_f), tokens

  metrics: MetricSums = {
      "clip_fraction_low": token_mean(clipped_low),
      "clip_fraction_high": token_mean(clipped_high),
      "clip_fraction": token_mean(clipped_low | clipped_high),
      "ratio": token_mean(ratio),
  }
  if correct:
    metrics["is_weight_mean"] = token_mean(weight)
    metrics["is_masked_fraction"] = token_mean(weight == 0)
    metrics["is_ratio_max"] = (jnp.max(jnp.where(mask, is_ratio, 0.0)), (tokens > 0).astype(jnp.float32))
  if ref_logprobs is not None:
    kl = kl_estimator(config.kl_estimator)(logprobs, jax.lax.stop_gradient(ref_logprobs))
    metrics["kl"] = token_mean(kl)
    if config.beta > 0:
      per_token = per_token + config.beta * kl
  policy_sum, denominator = aggregate(surrogate, mask, config.aggregation, config.norm_length)
  loss_sum, _ = aggregate(per_token, mask, config.aggregation, config.norm_length)
  metrics["policy_loss"] = (jax.lax.stop_gradient(policy_sum), denominator)
  metrics["loss"] = (jax.lax.stop_gradient(loss_sum), denominator)
  if entropy is not None:
    metrics["entropy"] = token_mean(entropy)
  if sampler_logprobs is not None:
    metrics["sampler_logprob_abs_diff"] = token_mean(jnp.abs(logprobs - sampler_logprobs))
    metrics["sampler_kl"] = token_mean(KL_ESTIMATORS["k3"](sampler_logprobs, logprobs))
  return LossTerms(loss_sum=loss_sum, denominator=denominator, metrics=metrics)


def finalize_metrics(sums: MetricSums) -> dict[str, jax.Array]:
  """name -> sum / count (0 where the count is 0)."""
  return {name: jnp.where(count > 0, total / jnp.maximum(count, 1e-30), 0.0)
          for name, (total, count) in sums.items()}


def add_metric_sums(a: MetricSums, b: MetricSums) -> MetricSums:
  """Elementwise sum of two metric-sum dicts with the same keys ('_max' metrics: elementwise maximum)."""
  def combine(name: str) -> tuple[jax.Array, jax.Array]:
    if name.endswith("_max"):
      return jnp.maximum(a[name][0], b[name][0]), jnp.maximum(a[name][1], b[name][1])
    return a[name][0] + b[name][0], a[name][1] + b[name][1]

  return {name: combine(name) for name in a}
