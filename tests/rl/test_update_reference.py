"""The jitted update (micro-batch accumulation, mu updates, optimizer step) against a numpy reference.

The policy is a table of logits per completion position, so log-probs, entropies and gradients have
closed forms: d log p_t(y) / d logits_t = onehot(y) - softmax(logits_t). With plain SGD the parameters
after each of the mu = 2 updates follow in numpy, and so does every loss, gradient and metric.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mmrag_jax.parallel import make_mesh
from mmrag_jax.rl.batch import TrainBatch
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.losses import AGGREGATIONS
from mmrag_jax.rl.update import PolicyUpdater

N, T, V = 8, 5, 7
LEARNING_RATE = 8.0


class PositionPolicy(nnx.Module):
  """log pi(y_t) = log softmax(logits[t])[y_t], the same for every row."""

  def __init__(self, logits: np.ndarray):
    self.logits = nnx.Param(jnp.asarray(logits, jnp.float32))


def position_logprobs(model: PositionPolicy, batch: TrainBatch):
  log_probs = jax.nn.log_softmax(model.logits[...], axis=-1)  # [T, V]
  picked = jnp.take_along_axis(log_probs[None], batch.completion_ids[..., None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
  return picked, jnp.broadcast_to(entropy, picked.shape)


@pytest.fixture(scope="module")
def rollout():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, T + 1, N)
  lengths[6:] = 0  # the last group is a padding prompt
  mask = np.arange(T)[None] < lengths[:, None]
  ids = rng.integers(0, V, (N, T))
  return dict(theta=rng.normal(0, 1, (T, V)), ids=ids, mask=mask, adv=rng.normal(0, 1, N) * mask.any(axis=1),
              sampler_noise=rng.normal(0, 0.05, (N, T)) * mask)


def numpy_logprobs(theta, ids):
  from_table = np.take_along_axis(np.broadcast_to(theta, (N, T, V)), ids[..., None], axis=-1)[..., 0]
  log_z = np.log(np.exp(theta).sum(axis=-1))
  return from_table - log_z[None], -(np.exp(theta - log_z[:, None]) * (theta - log_z[:, None])).sum(axis=-1)


def numpy_theta_grad(theta, ids, d_logp):
  probs = np.exp(theta) / np.exp(theta).sum(axis=-1, keepdims=True)
  onehot = np.eye(V)[ids]  # [N, T, V]
  return np.einsum("nt,ntv->tv", d_logp, onehot - probs[None])


def micro_batches(rollout, sampler_logprobs, splits=(0, 4, N)):
  return [TrainBatch(inputs=None, image_slots=None, completion_ids=rollout["ids"][a:b].astype(np.int32),
                     completion_mask=rollout["mask"][a:b], sampler_logprobs=sampler_logprobs[a:b].astype(np.float32),
                     advantages=rollout["adv"][a:b].astype(np.float32)) for a, b in zip(splits[:-1], splits[1:])]


def run_updater(rollout, config, splits=(0, 4, N)):
  mesh = make_mesh((1, 1, 1), jax.devices()[:1])
  updater = PolicyUpdater(PositionPolicy(rollout["theta"]), config, mesh, logprob_fn=position_logprobs,
                          tx=optax.sgd(LEARNING_RATE))
  logp0, _ = numpy_logprobs(rollout["theta"], rollout["ids"])
  sampler = (logp0 + rollout["sampler_noise"]) * rollout["mask"]
  batches = [updater.place_batch(b) for b in micro_batches(rollout, sampler, splits)]
  result = updater.train_on_rollout(batches)
  return result, np.asarray(updater.model().logits[...]), sampler


def numpy_updates(rollout, config, sampler, reference):
  """Metrics of each of the mu updates and the final parameters, in numpy."""
  theta, ids, mask = rollout["theta"].copy(), rollout["ids"], rollout["mask"]
  logp0, _ = numpy_logprobs(theta, ids)
  old = sampler if config.old_logprobs == "sampler" else logp0
  ref = logp0 if config.beta > 0 else None
  per_update = []
  for _ in range(config.num_iterations):
    logp, entropy = numpy_logprobs(theta, ids)
    _, d_logp, metrics = reference.policy_loss(
        logp, old, rollout["adv"], mask, eps_low=config.eps_low, eps_high=config.eps_high, beta=config.beta,
        estimator=config.kl_estimator, aggregation=config.aggregation, norm_length=config.norm_length, ref=ref)
    grad = numpy_theta_grad(theta, ids, d_logp)
    metrics["grad_norm"] = np.sqrt((grad**2).sum())
    metrics["entropy"] = np.broadcast_to(entropy, mask.shape)[mask].mean()
    metrics["sampler_logprob_abs_diff"] = np.abs(logp - sampler)[mask].mean()
    per_update.append(metrics)
    theta = theta - LEARNING_RATE * grad
  return per_update, theta


def assert_metrics_match(actual, expected, label):
  for name, want in expected.items():
    assert actual[name] == pytest.approx(float(want), rel=2e-5, abs=2e-6), f"{label}: {name}"


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize(("estimator", "beta"), [("k1", 0.1), ("k3", 0.1)])
def test_two_updates_equal_numpy_for_every_aggregation_and_kl(rollout, grpo_reference, aggregation, estimator,
                                                              beta):
  config = GRPOConfig(group_size=2, num_iterations=2, eps_low=0.2, eps_high=0.28, beta=beta,
                      kl_estimator=estimator, aggregation=aggregation, norm_length=T + 2, max_new_tokens=T)
  result, theta, sampler = run_updater(rollout, config)
  (first, last), expected_theta = numpy_updates(rollout, config, sampler, grpo_reference)
  assert result.first["ratio"] == pytest.approx(1.0)  # update 1 runs at the rollout parameters
  assert abs(result.last["ratio"] - 1.0) > 1e-2  # update 2 does not
  assert result.last["clip_fraction"] > 0
  assert ("kl" in result.first) == (beta > 0)
  assert_metrics_match(result.first, first, "update 1")
  assert_metrics_match(result.last, last, "update 2")
  np.testing.assert_allclose(theta, expected_theta, rtol=1e-5, atol=1e-5)


def test_micro_batch_split_does_not_change_the_update(rollout):
  config = GRPOConfig(group_size=2, num_iterations=2, aggregation="sequence-mean-token-mean", max_new_tokens=T)
  whole, theta_whole, _ = run_updater(rollout, config, splits=(0, N))
  split, theta_split, _ = run_updater(rollout, config, splits=(0, 2, 6, N))
  np.testing.assert_allclose(theta_split, theta_whole, rtol=1e-6, atol=1e-6)
  # The loss is a mean of clipped ratio * A terms that largely cancel (-0.02 from terms ~|A|), so a
  # tolerance relative to it means nothing. Summed in another order, float32 means of n terms differ by
  # ~2 sqrt(n) u of the terms' mean size S = (1 + eps_high) mean |A| (u = 2^-24, random-walk rounding).
  # Update 2 also starts from parameters moved by lr times a gradient summed in another order, |dtheta| <=
  # lr * sqrt(2) * (that bound) (|onehot - p| <= sqrt(2)), which moves the loss by <= grad_norm * |dtheta|.
  mask = rollout["mask"]
  scale = (1 + config.eps_high) * np.abs(rollout["adv"][mask.any(axis=1)]).mean()
  reordered = 2 * np.sqrt(mask.sum()) * np.finfo(np.float32).eps / 2 * scale
  assert split.first["loss"] == pytest.approx(whole.first["loss"], rel=0, abs=reordered)
  drift = LEARNING_RATE * np.sqrt(2) * reordered * whole.last["grad_norm"]
  assert split.last["loss"] == pytest.approx(whole.last["loss"], rel=0, abs=reordered + drift)


def test_sampler_old_logprobs_make_the_first_ratio_differ_from_one(rollout, grpo_reference):
  config = GRPOConfig(group_size=2, num_iterations=1, old_logprobs="sampler", max_new_tokens=T)
  result, theta, sampler = run_updater(rollout, config)
  (first,), expected_theta = numpy_updates(rollout, config, sampler, grpo_reference)
  assert abs(result.first["ratio"] - 1.0) > 1e-3
  assert_metrics_match(result.first, first, "update 1")
  np.testing.assert_allclose(theta, expected_theta, rtol=1e-5, atol=1e-5)


def test_default_optimizer_follows_the_warmup_cosine_schedule(rollout):
  config = GRPOConfig(group_size=2, learning_rate=0.1, warmup_steps=2, total_steps=6, max_new_tokens=T)
  mesh = make_mesh((1, 1, 1), jax.devices()[:1])
  updater = PolicyUpdater(PositionPolicy(rollout["theta"]), config, mesh, logprob_fn=position_logprobs)
  sampler = np.zeros((N, T), np.float32)
  batches = [updater.place_batch(b) for b in micro_batches(rollout, sampler)]
  rates = [updater.train_on_rollout(batches).first["learning_rate"] for _ in range(4)]
  schedule = optax.warmup_cosine_decay_schedule(0.0, 0.1, warmup_steps=2, decay_steps=6)
  np.testing.assert_allclose(rates, [float(schedule(i)) for i in range(4)], rtol=1e-6)
  assert updater.optimizer_step == 4
