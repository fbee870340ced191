"""Sampling methods on a fixed distribution: support, frequencies, processed log-probs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from mmrag_jax.sampling import Categorical, Greedy, TopK, TopP
from mmrag_jax.sampling.methods import token_log_softmax, top_p_logits

PROBS = np.array([0.02, 0.25, 0.05, 0.11, 0.30, 0.01, 0.08, 0.04, 0.09, 0.05])
LOGITS = np.log(PROBS).astype(np.float32) + 3.0  # a shift changes nothing
DRAWS = 6000
TOP_P, TOP_P_TEMPERATURE = 0.75, 0.8
METHODS = {
    "top_k": TopK(k=3, temperature=1.0),
    "top_p": TopP(p=TOP_P, temperature=TOP_P_TEMPERATURE),
    "categorical": Categorical(temperature=2.0),
}


@pytest.fixture(scope="module")
def samples() -> dict[str, np.ndarray]:
  """DRAWS tokens [DRAWS] per method from LOGITS, one key each (one compilation for all methods)."""
  keys = jax.random.split(jax.random.key(0), DRAWS)
  draw = jax.jit(lambda k, l: {name: jax.vmap(m.sample, (0, None))(k, l) for name, m in METHODS.items()})
  return {name: np.asarray(tokens) for name, tokens in draw(keys, jnp.asarray(LOGITS)).items()}


def tempered(temperature: float) -> np.ndarray:
  return scipy.special.softmax(np.log(PROBS) / temperature)


def assert_frequencies(samples: np.ndarray, expected: np.ndarray) -> None:
  frequencies = np.bincount(samples, minlength=len(expected)) / len(samples)
  # 5 standard deviations of a frequency estimated from DRAWS samples.
  tolerance = 5 * np.sqrt(expected * (1 - expected) / len(samples)) + 1e-9
  assert np.all(np.abs(frequencies - expected) <= tolerance), (frequencies, expected)


def test_top_k_samples_only_the_k_most_likely_tokens(samples):
  samples = samples["top_k"]
  allowed = np.argsort(-PROBS)[:3]  # tokens 4, 1, 3
  assert set(np.unique(samples)) <= set(allowed.tolist())
  expected = np.zeros_like(PROBS)
  expected[allowed] = PROBS[allowed] / PROBS[allowed].sum()
  assert_frequencies(samples, expected)


def test_top_p_samples_only_the_nucleus(samples):
  samples, p = samples["top_p"], TOP_P
  probs = tempered(TOP_P_TEMPERATURE)
  order = np.argsort(-probs)
  mass_before = np.cumsum(probs[order]) - probs[order]
  nucleus = order[mass_before < p]
  assert set(np.unique(samples)) <= set(nucleus.tolist())
  expected = np.zeros_like(probs)
  expected[nucleus] = probs[nucleus] / probs[nucleus].sum()
  assert_frequencies(samples, expected)


def test_categorical_follows_the_tempered_softmax(samples):
  assert_frequencies(samples["categorical"], tempered(2.0))


def test_top_p_keeps_the_smallest_set_reaching_p():
  logits = jnp.log(jnp.array([0.05, 0.5, 0.15, 0.3]))
  kept = lambda p: np.isfinite(np.asarray(top_p_logits(logits, p)))
  np.testing.assert_array_equal(kept(0.4), [False, True, False, False])
  np.testing.assert_array_equal(kept(0.7), [False, True, False, True])
  np.testing.assert_array_equal(kept(0.9), [False, True, True, True])
  np.testing.assert_array_equal(kept(1.0), [True, True, True, True])


def test_top_p_of_one_is_the_whole_tempered_vocabulary():
  """p = 1 keeps every token: the processed logits are the tempered logits themselves (no sort, and no tail
  token lost to a cumulative sum that rounds to 1 early), so it samples exactly what Categorical samples."""
  logits = jnp.asarray(np.log(np.r_[1.0 - 9e-8, np.full(9, 1e-8)]).astype(np.float32))
  np.testing.assert_array_equal(TopP(1.0, temperature=0.7).processed_logits(logits), logits / 0.7)
  keys = jax.random.split(jax.random.key(3), 64)
  same = lambda m: np.asarray(jax.vmap(m.sample, (0, None))(keys, jnp.asarray(LOGITS)))
  np.testing.assert_array_equal(same(TopP(1.0, temperature=2.0)), same(Categorical(temperature=2.0)))


def test_processed_logits_give_the_sampling_distribution():
  logits = jnp.asarray(LOGITS)
  np.testing.assert_allclose(jax.nn.softmax(Categorical(0.5).processed_logits(logits)), tempered(0.5), atol=1e-6)
  top2 = np.asarray(jax.nn.softmax(TopK(k=2, temperature=1.0).processed_logits(logits)))
  np.testing.assert_allclose(top2[[4, 1]], PROBS[[4, 1]] / 0.55, atol=1e-6)
  assert top2.sum() == pytest.approx(1.0) and np.count_nonzero(top2) == 2
  greedy = np.asarray(jax.nn.log_softmax(Greedy().processed_logits(logits)))
  assert greedy[4] == 0.0 and np.all(np.isneginf(np.delete(greedy, 4)))
  assert int(Greedy().sample(jax.random.key(0), logits)) == 4


# XLA's float32 exp and log are within 1 ulp; 2 leaves slack for other CPUs' vector paths.
EXP_LOG_ULPS = 2


def log_softmax_error_bound(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
  """Bound [...] on the float32 error of `l_y - m - log sum exp(l - m)` (m = max l), from exact values.

  In units u = 2^-24: l_y - m rounds once (|l_y - m| u); each exp(l - m) gets its argument's rounding
  (<= max |l - m| u relative) and its own 2 ulp (4u); the sum of V positive terms <= (V - 1) u relative;
  log turns the sum's relative error into an absolute one and adds 2 ulp of log S (4u |log S|); the
  final subtraction rounds once (|result| u). logits [..., V] float64 (-inf allowed), tokens [...].
  """
  u = 2.0**-24
  finite = np.isfinite(logits)
  shifted = np.where(finite, logits - logits.max(-1, keepdims=True), 0.0)
  log_sum = np.log(np.sum(np.where(finite, np.exp(shifted), 0.0), axis=-1))
  chosen = np.take_along_axis(shifted, tokens[..., None], axis=-1)[..., 0]
  sum_error = np.abs(shifted).max(-1) + 2 * EXP_LOG_ULPS + finite.sum(-1) - 1
  return u * (np.abs(chosen) + sum_error + 2 * EXP_LOG_ULPS * np.abs(log_sum) + np.abs(chosen - log_sum))


def test_token_log_softmax_is_the_log_softmax_at_the_token():
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=4.0, size=(3, 5, 50)).astype(np.float32)
  logits[0, :, 7] = -np.inf  # suppressed ids / outside a nucleus
  tokens = rng.integers(0, 7, (3, 5))
  expected = np.take_along_axis(scipy.special.log_softmax(logits.astype(np.float64), axis=-1), tokens[..., None],
                                axis=-1)[..., 0]
  got = np.asarray(jax.jit(token_log_softmax)(jnp.asarray(logits), jnp.asarray(tokens)))
  assert (np.abs(got - expected) <= log_softmax_error_bound(logits.astype(np.float64), tokens)).all()


def test_sample_with_logprob_returns_the_processed_log_prob():
  logits = jnp.tile(jnp.asarray(LOGITS), (4, 1))
  keys = jax.random.split(jax.random.key(1), 4)
  tokens, logprobs = Greedy().sample_with_logprob(keys, logits)
  np.testing.assert_array_equal(tokens, [4] * 4)
  np.testing.assert_array_equal(logprobs, np.zeros(4, np.float32))
  method = METHODS["top_p"]
  tokens, logprobs = jax.jit(method.sample_with_logprob)(keys, logits)
  np.testing.assert_array_equal(tokens, method.sample(keys, logits))
  processed = np.asarray(method.processed_logits(logits)).astype(np.float64)
  nucleus = scipy.special.log_softmax(processed, axis=-1)
  tokens = np.asarray(tokens)
  error = np.abs(logprobs - nucleus[np.arange(4), tokens])
  assert (error <= log_softmax_error_bound(processed, tokens)).all()


@pytest.mark.parametrize(("make", "message"), [
    (lambda: TopK(k=0), "TopK.k"),
    (lambda: TopP(p=0.0), "TopP.p"),
    (lambda: TopP(p=1.5), "TopP.p"),
    (lambda: Categorical(temperature=0.0), "temperature"),
])
def test_bad_method_settings_are_rejected(make, message):
  with pytest.raises(ValueError, match=message):
    make()
