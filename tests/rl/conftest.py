"""Fixtures for the GRPO tests: a plain-numpy reference of the GRPO math, tiny policies, toy data.

The numpy reference is written from the equations (GRPO / DAPO / Dr.GRPO papers, Schulman's KL
estimators), independently of `mmrag_jax.rl`; gradients are derived by hand.
"""

from __future__ import annotations

import dataclasses
import types

import jax
import numpy as np
import pytest
from flax import nnx

from mmrag_jax.model import Qwen25VL, tiny
from mmrag_jax.model.synthetic_batch import random_processor_batch
from mmrag_jax.sampling import prompt_batch
from mmrag_jax.rl.batch import build_train_batch
from mmrag_jax.rl.config import GRPOConfig

# -- numpy reference -------------------------------------------------------------------------------


def np_advantages(rewards, group_size, scaling, eps, valid=None):
  """(advantages [N], zero-variance group fraction) with sample std (ddof 1)."""
  rewards = np.asarray(rewards, np.float64)
  valid = np.ones(len(rewards), bool) if valid is None else np.asarray(valid, bool)
  out = np.zeros_like(rewards)
  batch_std = np.std(rewards[valid], ddof=1)
  zero_variance, groups = 0, 0
  for start in range(0, len(rewards), group_size):
    group = rewards[start:start + group_size]
    if not valid[start]:
      continue
    groups += 1
    zero_variance += int(np.all(group == group[0]))
    centered = group - group.mean()
    if scaling == "group":
      centered = centered / (np.std(group, ddof=1) + eps)
    elif scaling == "batch":
      centered = centered / (batch_std + eps)
    out[start:start + group_size] = centered
  return out, zero_variance / max(groups, 1)


def np_kl(logp, ref, estimator):
  """(per-token KL, d KL / d logp)."""
  if estimator == "k1":
    return logp - ref, np.ones_like(logp)
  if estimator == "k2":
    return 0.5 * (logp - ref) ** 2, logp - ref
  log_r = ref - logp
  return np.exp(log_r) - 1 - log_r, 1 - np.exp(log_r)


def np_token_weights(mask, aggregation, norm_length):
  """w [N, T] with loss = sum(w * per_token_loss)."""
  mask = np.asarray(mask, np.float64)
  counts = mask.sum(axis=1, keepdims=True)
  num_sequences = max((counts[:, 0] > 0).sum(), 1)
  if aggregation == "token-mean":
    return mask / mask.sum()
  if aggregation == "sequence-mean-token-mean":
    return mask / np.maximum(counts, 1) / num_sequences
  return mask / norm_length / num_sequences


def np_importance_weights(old, sampling, mask, correction, cap):
  """(w, r) [N, T] of the rollout importance correction: r_t = pi_old / pi_samp, w from `correction`."""
  mask_f = np.asarray(mask, np.float64)
  log_r = (np.asarray(old, np.float64) - np.asarray(sampling, np.float64)) * mask_f
  r = np.exp(log_r)
  if correction == "tis":
    return np.minimum(r, cap), r
  if correction == "token-mask":
    return ((r >= 1 / cap) & (r <= cap)).astype(np.float64), r
  assert correction == "sequence-mask", correction
  geometric_mean = np.exp(log_r.sum(axis=1) / np.maximum(mask_f.sum(axis=1), 1))
  keep = (geometric_mean >= 1 / cap) & (geometric_mean <= cap)
  return np.broadcast_to(keep[:, None], r.shape).astype(np.float64), r


def np_policy_loss(logp, old, adv, mask, *, eps_low, eps_high, beta, estimator, aggregation, norm_length,
                   ref=None, ratio_level="token", sampling=None, correction="none", cap=2.0):
  """(loss, d loss / d logp [N, T], metrics dict) of the GRPO objective.

  ratio_level='sequence': GSPO's s_i = exp(sum_t m_it (logp - old)_it / n_i) replaces rho on each token of
  completion i. sampling [N, T] with correction 'tis' | 'token-mask' | 'sequence-mask' (cap C): the
  surrogate of token t is multiplied by the weight w_t of `np_importance_weights`.
  """
  logp, old, adv = (np.asarray(x, np.float64) for x in (logp, old, adv))
  mask_f = np.asarray(mask, np.float64)
  ratio = np.exp(logp - old)
  lengths = np.maximum(mask_f.sum(axis=1, keepdims=True), 1)
  if ratio_level == "sequence":
    ratio = np.broadcast_to(np.exp((mask_f * (logp - old)).sum(axis=1, keepdims=True) / lengths), logp.shape)
  a = adv[:, None]
  unclipped, clipped = ratio * a, np.clip(ratio, 1 - eps_low, 1 + eps_high) * a
  surrogate = -np.minimum(unclipped, clipped)
  in_range = (ratio >= 1 - eps_low) & (ratio <= 1 + eps_high)
  # d/dlogp of -min(.): -rho*A where the unclipped term is the minimum or the clip is inactive, else 0.
  d_surrogate = np.where((unclipped <= clipped) | in_range, -ratio * a, 0.0)
  is_weight = np.ones_like(ratio)
  if correction != "none":
    is_weight, is_ratio = np_importance_weights(old, sampling, mask_f, correction, cap)
  # The sequence ratio: each of the n_i copies of f(s_i) feeds d s_i / d logp_it = s_i / n_i; the
  # aggregation weights are uniform along a completion, so token t gets W_it mean_t'(w_it') f'(s_i) s_i.
  grad_weight = is_weight
  if ratio_level == "sequence":
    grad_weight = np.broadcast_to((is_weight * mask_f).sum(axis=1, keepdims=True) / lengths, ratio.shape)
  weights = np_token_weights(mask_f, aggregation, norm_length)
  per_token, d_per_token = is_weight * surrogate, grad_weight * d_surrogate
  tokens = mask_f.sum()
  metrics = {
      "clip_fraction_low": ((ratio < 1 - eps_low) & (a < 0) & (mask_f > 0)).sum() / tokens,
      "clip_fraction_high": ((ratio > 1 + eps_high) & (a > 0) & (mask_f > 0)).sum() / tokens,
      "ratio": (ratio * mask_f).sum() / tokens,
      "policy_loss": (weights * is_weight * surrogate).sum(),
  }
  if correction != "none":
    metrics["is_weight_mean"] = (is_weight * mask_f).sum() / tokens
    metrics["is_masked_fraction"] = ((is_weight == 0) & (mask_f > 0)).sum() / tokens
    metrics["is_ratio_max"] = is_ratio[mask_f > 0].max()
  metrics["clip_fraction"] = metrics["clip_fraction_low"] + metrics["clip_fraction_high"]
  if ref is not None:
    kl, d_kl = np_kl(logp, np.asarray(ref, np.float64), estimator)
    metrics["kl"] = (kl * mask_f).sum() / tokens
    per_token = per_token + beta * kl
    d_per_token = d_per_token + beta * d_kl
  loss = (weights * per_token).sum()
  metrics["loss"] = loss
  return loss, weights * d_per_token, metrics


@pytest.fixture(scope="session")
def grpo_reference():
  """The numpy reference functions above, as one namespace."""
  return types.SimpleNamespace(advantages=np_advantages, kl=np_kl, policy_loss=np_policy_loss)


# -- tiny Qwen2.5-VL policies and batches ----------------------------------------------------------
# Plain functions (not only fixtures): the multi-process test's workers import them from this file.

# The tiny preset cut to one decoder layer and two vision blocks (one windowed, one full attention):
# the code under test is the same for any depth, and compile time grows with it.
TINY = tiny().replace(text=dataclasses.replace(tiny().text, num_hidden_layers=1),
                      vision=dataclasses.replace(tiny().vision, depth=2, fullatt_block_indexes=(1,)))
TEXT_IDS = 400  # ordinary text ids lie below the special ids (496..) of the tiny vocabulary


# Parameter stacks ([layers, ...]) draw layer by layer, all of layer 0's parameters first: each layer gets the
# values it had as a module of its own, so the tests' numbers do not depend on how layers are stored.
LAYER_STACKS = (("language_model", "layers"), ("visual", "blocks"))


def numpy_policy_state(config, init_std: float, seed: int):
  """(graphdef, host params) of a Qwen25VL built from numpy draws: N(0, init_std) kernels and
  embeddings, zero biases, unit norm weights. Much faster than running the model's initializers."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Qwen25VL(config, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def draw(name, shape, dtype):
    if name == "bias":
      return np.zeros(shape, dtype)
    if name == "weight":  # RMSNorm scales
      return np.ones(shape, dtype)
    return rng.normal(0.0, init_std, shape).astype(dtype)

  flat = [(path, variable, variable.get_value()) for path, variable in nnx.to_flat_state(abstract)]
  values = {}
  for path, _, leaf in flat:
    stack = next((s for s in LAYER_STACKS if path[:len(s)] == s), None)
    if stack is None:
      values[path] = draw(path[-1], leaf.shape, leaf.dtype)
    elif path not in values:  # the stack's first parameter: draw the whole stack
      members = [(p, a) for p, _, a in flat if p[:len(stack)] == stack]
      for p, a in members:
        values[p] = np.empty(a.shape, a.dtype)
      for layer in range(members[0][1].shape[0]):
        for p, a in members:
          values[p][layer] = draw(p[-1], a.shape[1:], a.dtype)
  return graphdef, nnx.from_flat_state([(path, variable.replace(values[path])) for path, variable, _ in flat])


def processor_prompts(rows, seed):
  """A left-padded processor-style batch of the tiny policy; see `random_processor_batch`."""
  return random_processor_batch(rows, TINY, seed=seed, text_ids_below=TEXT_IDS)


def random_completions(num_rows, width, seed):
  """(tokens [N, width], lengths [N] in 1..width) of random text tokens."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, TEXT_IDS, (num_rows, width)), rng.integers(1, width + 1, num_rows)


def sharded_update_case():
  """(host TrainBatch, GRPOConfig) of the mesh and multi-process update tests: 4 text prompts x G = 2,
  mu = 2 updates with a KL term, sampler log-probs that differ from the policy's."""
  group, width = 2, 5
  prompts = prompt_batch(processor_prompts([[6], [3], [5], [4]], seed=2), TINY)
  tokens, lengths = random_completions(8, width, seed=3)
  rng = np.random.default_rng(4)
  batch = build_train_batch(prompts, tokens, lengths, rng.normal(-3, 0.1, (8, width)).astype(np.float32),
                            group_size=group, config=TINY)
  batch = dataclasses.replace(batch, advantages=rng.normal(size=8).astype(np.float32))
  config = GRPOConfig(group_size=group, num_iterations=2, beta=0.05, learning_rate=1e-2, eps_high=0.28,
                      max_new_tokens=width)
  return batch, config


_POLICY_STATES = {}  # (init_std, seed) -> (graphdef, host params)


def new_tiny_policy(init_std: float = 0.2, seed: int = 0):
  """A fresh `Qwen25VL` with the `TINY` config and host arrays (numpy draws cached per (std, seed)).

  Each call returns new arrays, so an updater may take the model over and donate its buffers.
  """
  if (init_std, seed) not in _POLICY_STATES:
    _POLICY_STATES[(init_std, seed)] = numpy_policy_state(TINY, init_std, seed)
  graphdef, params = _POLICY_STATES[(init_std, seed)]
  return nnx.merge(graphdef, jax.tree.map(np.array, params))


@pytest.fixture(scope="session")
def rl_cases():
  """The policy config and batch builders above, as one namespace."""
  return types.SimpleNamespace(config=TINY, processor_prompts=processor_prompts, random_completions=random_completions,
                               sharded_update_case=sharded_update_case)


@pytest.fixture(scope="session")
def make_tiny_policy():
  """`make_tiny_policy(init_std=0.2, seed=0)`, see `new_tiny_policy`."""
  return new_tiny_policy


@pytest.fixture(scope="session")
def sharded_update_reference():
  """The update of `sharded_update_case` on an emulated (2, 2, 2) mesh in this process:
  (RolloutUpdate, final params as numpy)."""
  from mmrag_jax.parallel import make_mesh
  from mmrag_jax.rl.update import PolicyUpdater

  batch, config = sharded_update_case()
  updater = PolicyUpdater(new_tiny_policy(), config, make_mesh((2, 2, 2)))
  placed = updater.place_batch(batch)
  assert len(placed.completion_ids.sharding.device_set) == 8
  update = updater.train_on_rollout([placed])
  return update, jax.tree.map(np.asarray, updater.params)
