"""Per-token estimators of KL(pi_theta || pi_ref) from log-probs of tokens sampled from the policy.

With log r = log pi_ref(y_t) - log pi_theta(y_t) (Schulman's "Approximating KL divergence" notation):

  k1 = -log r                      unbiased, high variance, can be negative
  k2 = (log r)^2 / 2               biased, low variance, always >= 0
  k3 = (r - 1) - log r             unbiased, low variance, always >= 0 (the GRPO paper's choice)

Each is added to the per-token loss with coefficient beta; no reference model exists when beta = 0.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["KL_ESTIMATORS", "kl_estimator"]


def _kl_k1(logprobs: jax.Array, ref_logprobs: jax.Array) -> jax.Array:
  """log pi_theta - log pi_ref, elementwise ([N, T] -> [N, T])."""
  return logprobs - ref_logprobs


def _kl_k2(logprobs: jax.Array, ref_logprobs: jax.Array) -> jax.Array:
  """(log pi_theta - log pi_ref)^2 / 2, elementwise."""
  return 0.5 * jnp.square(logprobs - ref_logprobs)


def _kl_k3(logprobs: jax.Array, ref_logprobs: jax.Array) -> jax.Array:
  """exp(log r) - 1 - log r with log r = log pi_ref - log pi_theta, elementwise."""
  log_ratio = ref_logprobs - logprobs
  return jnp.expm1(log_ratio) - log_ratio  # expm1: no cancellation for small ratios


KL_ESTIMATORS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "k1": _kl_k1,
    "k2": _kl_k2,
    "k3": _kl_k3,
}


def kl_estimator(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The estimator registered as `name` (k1, k2, k3)."""
  if name not in KL_ESTIMATORS:
    raise ValueError(f"unknown KL estimator {name!r}; choose one of {sorted(KL_ESTIMATORS)}")
  return KL_ESTIMATORS[name]
