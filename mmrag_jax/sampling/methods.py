"""Sampling methods: tiny frozen dataclasses turning next-token logits into a token.

Each method defines the *processed* distribution it samples from as logits over the whole vocabulary,
with -inf outside its support:

    Greedy()                      point mass on the argmax
    Categorical(temperature)      softmax(logits / temperature)
    TopK(k, temperature)          the k largest of logits / temperature, renormalised
    TopP(p, temperature)          the smallest set of most likely tokens whose mass reaches p (nucleus)

`log_softmax(processed_logits)` at the chosen token is the log-prob of the distribution actually sampled
from (0 for greedy); `sample_with_logprob` returns both, and Greedy skips the [V] work it does not need.
Methods are hashable, so the decode loop takes them as a static argument: changing the method or its
temperature compiles a new loop. A new method subclasses `SamplingMethod` and defines
`processed_logits` (and `draw` when it is not ancestral sampling).

Shapes: logits [..., V] float32; keys are typed PRNG keys (`jax.random.key`), one per leading index.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["Categorical", "Greedy", "SamplingMethod", "TopK", "TopP", "token_log_softmax", "top_p_logits"]


class SamplingMethod:
  """Base of the methods. Subclasses define `processed_logits`; `draw` defaults to ancestral sampling."""

  def processed_logits(self, logits: jax.Array) -> jax.Array:
    """[..., V] -> [..., V] logits of the distribution sampled from (-inf outside its support)."""
    raise NotImplementedError

  def draw(self, key: jax.Array, processed: jax.Array) -> jax.Array:
    """One token per leading index of processed logits: key [...] typed keys, [..., V] -> [...] int32."""
    # vmap over leading dims so each row draws from its own key: a row's token never depends on its
    # neighbours in the batch.
    categorical = lambda k, l: jax.random.categorical(k, l)
    for _ in range(processed.ndim - 1):
      categorical = jax.vmap(categorical)
    return categorical(key, processed).astype(jnp.int32)

  def sample(self, key: jax.Array, logits: jax.Array) -> jax.Array:
    """Tokens [...] drawn from the processed distribution of logits [..., V]."""
    return self.draw(key, self.processed_logits(logits))

  def sample_with_logprob(self, key: jax.Array, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Tokens [...] int32 and their log-probs [...] float32 under the processed distribution."""
    processed = self.processed_logits(logits)
    tokens = self.draw(key, processed)
    return tokens, token_log_softmax(processed, tokens)


def token_log_softmax(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """log_softmax(logits)[token] for logits [..., V] and tokens [...] int: [...].

  The same arithmetic as `jax.nn.log_softmax` at the token (shift by the max, subtract the log-sum-exp),
  without materialising the [..., V] result.
  """
  top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  chosen = jnp.take_along_axis(logits, tokens[..., None].astype(jnp.int32), axis=-1) - top
  return (chosen - jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1, keepdims=True)))[..., 0]


def _check_temperature(temperature: float) -> None:
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0 (use Greedy() for argmax decoding), got {temperature}")


@dataclasses.dataclass(frozen=True)
class Greedy(SamplingMethod):
  """Argmax decoding (first index on ties); the key is ignored."""

  def processed_logits(self, logits: jax.Array) -> jax.Array:
    best = jnp.argmax(logits, axis=-1)
    return jnp.where(jnp.arange(logits.shape[-1]) == best[..., None], 0.0, -jnp.inf).astype(logits.dtype)

  def draw(self, key: jax.Array, processed: jax.Array) -> jax.Array:
    del key
    return jnp.argmax(processed, axis=-1).astype(jnp.int32)

  def sample_with_logprob(self, key: jax.Array, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    del key
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # the point mass: log-prob 0
    return tokens, jnp.zeros(tokens.shape, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Categorical(SamplingMethod):
  """Ancestral sampling from softmax(logits / temperature) over the whole vocabulary."""

  temperature: float = 1.0

  def __post_init__(self):
    _check_temperature(self.temperature)

  def processed_logits(self, logits: jax.Array) -> jax.Array:
    return logits / self.temperature


def _top_k_logits(logits: jax.Array, k: int) -> jax.Array:
  """Logits [..., V] with everything below the k-th largest value set to -inf (ties at it are kept)."""
  kth_largest = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits >= kth_largest, logits, -jnp.inf)


def top_p_logits(logits: jax.Array, p: float) -> jax.Array:
  """Logits [..., V] restricted to the nucleus: the most likely tokens whose probability mass reaches p.

  Sorted by probability, token i is kept while the mass strictly before it is < p, so the most likely
  token is always kept. E.g. probs (0.5, 0.3, 0.15, 0.05), p = 0.7: keeps the first two (0.5 < 0.7,
  0.8 >= 0.7 stops before the third). Ties at the cut-off value are kept.
  """
  sorted_logits = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
  sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  num_kept = jnp.sum(mass_before < p, axis=-1, keepdims=True)  # >= 1
  cutoff = jnp.take_along_axis(sorted_logits, num_kept - 1, axis=-1)
  return jnp.where(logits >= cutoff, logits, -jnp.inf)


@dataclasses.dataclass(frozen=True)
class TopK(SamplingMethod):
  """Sampling from the k most likely tokens of softmax(logits / temperature)."""

  k: int
  temperature: float = 1.0

  def __post_init__(self):
    _check_temperature(self.temperature)
    if self.k < 1:
      raise ValueError(f"TopK.k must be >= 1, got {self.k}")

  def processed_logits(self, logits: jax.Array) -> jax.Array:
    return _top_k_logits(logits / self.temperature, min(self.k, logits.shape[-1]))


@dataclasses.dataclass(frozen=True)
class TopP(SamplingMethod):
  """Nucleus sampling: the most likely tokens of softmax(logits / temperature) with mass >= p."""

  p: float
  temperature: float = 1.0

  def __post_init__(self):
    _check_temperature(self.temperature)
    if not 0.0 < self.p <= 1.0:
      raise ValueError(f"TopP.p must be in (0, 1], got {self.p}")

  def processed_logits(self, logits: jax.Array) -> jax.Array:
    if self.p >= 1.0:  # the nucleus is the whole vocabulary: no sort (a full-vocabulary sort per token step)
      return logits / self.temperature
    return top_p_logits(logits / self.temperature, self.p)
