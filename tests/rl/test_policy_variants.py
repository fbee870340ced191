"""GSPO's sequence ratio and the rollout importance correction against the numpy reference (conftest).

Tolerances are float32 round-off bounds. The reference takes the float32-rounded inputs in float64, so
what differs is the round-off of the float32 computation: at most OPS roundings along one token's chain
(differences, exp, products with A, w and the aggregation weight, the KL term, divisions), each at most u M
with M the largest intermediate value, plus a random walk of sqrt(count) roundings for a mean or sum over
count terms: (OPS + sqrt(count)) u M.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mmrag_jax.parallel import make_mesh
from mmrag_jax.rl.batch import build_train_batch
from mmrag_jax.rl.kl import kl_estimator
from mmrag_jax.rl.losses import (AGGREGATIONS, PolicyLossConfig, add_metric_sums, aggregate, clipped_surrogate,
                                 finalize_metrics, policy_loss)
from mmrag_jax.rl.policy import QwenLogprobs
from mmrag_jax.rl.update import PolicyUpdater
from mmrag_jax.sampling import prompt_batch

U = np.finfo(np.float32).eps / 2  # float32 unit round-off
OPS = 12  # roundings along the longest chain (GSPO ratio, TIS weight, k3 KL, aggregation)
CAP = 1.5
BETA = 0.05
VARIANT_AGGREGATIONS = ("token-mean", "sequence-mean-token-mean")
SWITCHES = {
    "gspo": dict(ratio_level="sequence"),
    "tis": dict(importance_correction="tis"),
    "token-mask": dict(importance_correction="token-mask"),
    "sequence-mask": dict(importance_correction="sequence-mask"),
    "gspo+tis": dict(ratio_level="sequence", importance_correction="tis"),  # weights vary along a sequence
}


def f32_tol(magnitude, count):
  """Round-off bound of a float32 result built from `count` terms of size <= magnitude (module doc)."""
  return (OPS + np.sqrt(count)) * U * magnitude


def f32(x):
  return np.asarray(x, np.float32)


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(9)
  n, t = 8, 7
  lengths = rng.integers(1, t + 1, n)
  lengths[-1] = 0  # a padding prompt's row
  logp = -rng.random((n, t)) * 2
  # Per-row offsets move whole sequences: some sequence ratios leave the clip range, some sequences the cap.
  old = logp + rng.normal(0, 0.3, (n, t)) + rng.normal(0, 0.2, (n, 1))
  return dict(logp=f32(logp), old=f32(old), ref=f32(logp + rng.normal(0, 0.2, (n, t))), adv=f32(rng.normal(size=n)),
              mask=np.arange(t)[None] < lengths[:, None],
              sampling=f32(old + rng.normal(0, 0.3, (n, t)) + rng.normal(0, 0.3, (n, 1))))


def jax_loss(x, config, logp=None, **kwargs):
  """(loss value, d value / d logp, finalized metrics) of `policy_loss` on the `inputs` dict x."""
  def value(lp):
    terms = policy_loss(lp, jnp.asarray(x["old"]), jnp.asarray(x["adv"]), jnp.asarray(x["mask"]), config,
                        ref_logprobs=jnp.asarray(x["ref"]), **kwargs)
    return terms.loss_sum / terms.denominator, terms.metrics

  (loss, sums), grad = jax.value_and_grad(value, has_aux=True)(jnp.asarray(x["logp"] if logp is None else logp))
  return float(loss), np.asarray(grad), {k: float(v) for k, v in finalize_metrics(sums).items()}


def reference_loss(grpo_reference, x, config, logp=None, old=None, sampling=None, ref=None):
  return grpo_reference.policy_loss(
      x["logp"] if logp is None else logp, x["old"] if old is None else old, x["adv"], x["mask"],
      eps_low=config.eps_low, eps_high=config.eps_high, beta=config.beta, estimator=config.kl_estimator,
      aggregation=config.aggregation, norm_length=config.norm_length, ref=x["ref"] if ref is None else ref,
      ratio_level=config.ratio_level, sampling=x["sampling"] if sampling is None else sampling,
      correction=config.importance_correction, cap=config.importance_cap)


def largest_intermediate(x, logp=None, old=None, sampling=None, ref=None):
  """M of the module doc: the largest ratio, |ratio * A|, importance ratio or KL intermediate on the mask."""
  logp, old = (x["logp"] if logp is None else logp), (x["old"] if old is None else old)
  sampling, ref = (x["sampling"] if sampling is None else sampling), (x["ref"] if ref is None else ref)
  mask = x["mask"]
  rho = np.exp(np.float64(logp) - old)
  log_ref = np.float64(ref) - logp
  values = [rho * (1 + np.abs(x["adv"][:, None])), np.exp(np.float64(old) - sampling),
            np.abs(np.expm1(log_ref)) + np.abs(log_ref)]
  return max(float(v[mask].max()) for v in values)


def assert_equal_to_reference(actual, expected, x):
  """Loss, gradient and metrics of (loss, grad, metrics) within the float32 bounds."""
  (loss, grad, metrics), (want_loss, want_grad, want_metrics) = actual, expected
  tokens, width = x["mask"].sum(), x["mask"].shape[1]
  tol = f32_tol(largest_intermediate(x), tokens + width)  # + width: the sequence sums
  assert abs(loss - want_loss) <= tol
  # Per element: one token's chain, plus the sequence ratio's sum over the completion.
  np.testing.assert_allclose(grad, want_grad, rtol=0, atol=f32_tol(np.abs(want_grad).max(), width))
  for name, want in want_metrics.items():
    assert abs(metrics[name] - want) <= tol, name


@pytest.mark.parametrize("aggregation", VARIANT_AGGREGATIONS)
@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_each_switch_equals_numpy(inputs, grpo_reference, switch, aggregation):
  config = PolicyLossConfig(eps_low=0.2, eps_high=0.28, beta=BETA, aggregation=aggregation, importance_cap=CAP,
                            **SWITCHES[switch])
  actual = jax_loss(inputs, config, sampling_logprobs=jnp.asarray(inputs["sampling"]))
  expected = reference_loss(grpo_reference, inputs, config)
  assert_equal_to_reference(actual, expected, inputs)
  metrics = expected[2]
  # The inputs exercise the switch: some sequences clipped and some not, some tokens capped or dropped.
  if config.ratio_level == "sequence":
    assert 0 < metrics["clip_fraction"] < 0.8
  if config.importance_correction == "tis":
    assert metrics["is_ratio_max"] > CAP and metrics["is_masked_fraction"] == 0
  elif config.importance_correction != "none":
    assert 0.1 < metrics["is_masked_fraction"] < 0.9


def test_sequence_ratio_gradient_is_s_over_length(inputs):
  # d s_i / d logp_it = s_i / |y_i|: the GSPO objective sum_i s_i (A = 1, no clip) has exactly that gradient.
  config = PolicyLossConfig(eps_low=0.99, eps_high=1e6, aggregation="sequence-mean-token-mean", ratio_level="sequence")
  x = dict(inputs, adv=np.ones(len(inputs["adv"]), np.float32))
  _, grad, _ = jax_loss(x, config)
  mask = x["mask"]
  lengths = np.maximum(mask.sum(axis=1, keepdims=True), 1)
  s = np.exp((mask * (np.float64(x["logp"]) - x["old"])).sum(axis=1, keepdims=True) / lengths)
  num_sequences = mask.any(axis=1).sum()
  np.testing.assert_allclose(grad, -s / lengths * mask / num_sequences, rtol=f32_tol(1, mask.shape[1]), atol=0)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_switches_off_equal_todays_loss_bit_for_bit(inputs, aggregation):
  # Today's loss, composed from its parts: clipped token surrogate + beta KL, aggregated; sampling log-probs
  # given but unused.
  config = PolicyLossConfig(eps_low=0.2, eps_high=0.28, beta=BETA, aggregation=aggregation, norm_length=9)
  old, adv, mask, ref = (jnp.asarray(inputs[k]) for k in ("old", "adv", "mask", "ref"))

  def todays(lp):
    surrogate, _, _, _ = clipped_surrogate(lp, old, adv, config.eps_low, config.eps_high)
    per_token = surrogate + config.beta * kl_estimator(config.kl_estimator)(lp, jax.lax.stop_gradient(ref))
    return aggregate(per_token, mask, aggregation, config.norm_length)

  def switches_off(lp):
    terms = policy_loss(lp, old, adv, mask, config, ref_logprobs=ref, sampling_logprobs=jnp.asarray(inputs["sampling"]))
    return terms.loss_sum, terms.denominator

  logp = jnp.asarray(inputs["logp"])
  for transform in (lambda f: f, jax.jit):
    want, want_grad = transform(jax.value_and_grad(lambda lp: todays(lp)[0]))(logp)
    got, got_grad = transform(jax.value_and_grad(lambda lp: switches_off(lp)[0]))(logp)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(got_grad), np.asarray(want_grad))
    np.testing.assert_array_equal(np.asarray(switches_off(logp)[1]), np.asarray(todays(logp)[1]))


def test_importance_metrics_are_absent_when_off_and_max_combines_by_maximum(inputs):
  off = policy_loss(jnp.asarray(inputs["logp"]), jnp.asarray(inputs["old"]), jnp.asarray(inputs["adv"]),
                    jnp.asarray(inputs["mask"]), PolicyLossConfig(), sampling_logprobs=jnp.asarray(inputs["sampling"]))
  assert not [name for name in off.metrics if name.startswith("is_")]
  a = {"is_ratio_max": (jnp.float32(3.0), jnp.float32(1.0)), "ratio": (jnp.float32(2.0), jnp.float32(2.0))}
  b = {"is_ratio_max": (jnp.float32(0.0), jnp.float32(0.0)), "ratio": (jnp.float32(1.0), jnp.float32(1.0))}
  combined = finalize_metrics(add_metric_sums(b, a))
  assert (float(combined["is_ratio_max"]), float(combined["ratio"])) == (3.0, 1.0)


def test_tis_corrects_a_temperature_0_7_sampler(grpo_reference):
  # Tokens drawn at temperature 0.7; the trainer's pi_old is the temperature-1 policy on the same logits.
  rng = np.random.default_rng(11)
  n, t, v = 6, 5, 9
  logits = rng.normal(0, 2, (n, t, v))
  sampling_all = jax.nn.log_softmax(jnp.asarray(logits / 0.7, jnp.float32), axis=-1)
  tokens = np.asarray(jax.random.categorical(jax.random.key(0), sampling_all))
  pick = lambda lp: f32(np.take_along_axis(np.asarray(lp), tokens[..., None], axis=-1)[..., 0])
  old = pick(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1))
  x = dict(old=old, logp=f32(old + rng.normal(0, 0.1, (n, t))), adv=f32(rng.normal(size=n)),
           mask=np.arange(t)[None] < rng.integers(1, t + 1, n)[:, None], sampling=pick(sampling_all), ref=old)
  config = PolicyLossConfig(eps_low=0.2, eps_high=0.28, importance_correction="tis", importance_cap=CAP)
  expected = reference_loss(grpo_reference, x, config)
  assert_equal_to_reference(jax_loss(x, config, sampling_logprobs=jnp.asarray(x["sampling"])), expected, x)
  uncorrected, _, _ = jax_loss(x, dataclasses.replace(config, importance_correction="none"))
  tol = f32_tol(largest_intermediate(x), x["mask"].sum())
  assert abs(uncorrected - expected[0]) > 100 * tol


def test_train_batch_carries_the_masked_sampling_logprobs(rl_cases):
  prompts = prompt_batch(rl_cases.processor_prompts([[3], [4]], seed=1), rl_cases.config)
  tokens, lengths = rl_cases.random_completions(4, 3, seed=2)
  build = lambda **kw: build_train_batch(prompts, tokens, lengths, np.full((4, 3), -1.0), group_size=2,
                                         config=rl_cases.config, **kw)
  batch = build(sampling_logprobs=np.full((4, 3), -0.5))
  np.testing.assert_array_equal(batch.sampling_logprobs, np.where(batch.completion_mask, -0.5, 0).astype(np.float32))
  assert build().sampling_logprobs is None  # e.g. the warm-up's teacher-forced batches
  with pytest.raises(ValueError, match="sampling_logprobs"):
    build(sampling_logprobs=np.zeros((4, 2)))


# -- through the PolicyUpdater on the tiny Qwen2.5-VL policy -------------------------------------------

LEARNING_RATE = 0.01  # plain SGD, so the parameters after each update follow from the numpy gradient


@pytest.fixture(scope="module")
def tiny_rollout(rl_cases, make_tiny_policy):
  """(host TrainBatch with sampling log-probs, base GRPOConfig, rollout params, the updater's log-probs at
  them [N, T], delta: their largest difference from the reference's, another compiled program)."""
  batch, config = rl_cases.sharded_update_case()
  updater = PolicyUpdater(make_tiny_policy(), config, make_mesh((2, 2, 2)), tx=optax.sgd(LEARNING_RATE))
  logp0 = np.asarray(updater.policy_logprobs(updater.place_batch(batch)))
  params0 = jax.tree.map(np.asarray, updater.params)
  reference_logp0, _ = model_logprobs_and_grad(updater.graphdef, params0, batch, config, np.zeros_like(logp0))
  delta = np.abs(reference_logp0 - logp0)[batch.completion_mask].max()
  rng = np.random.default_rng(5)
  noise = rng.normal(0, 0.3, logp0.shape) + rng.normal(0, 0.3, (len(logp0), 1))
  batch = dataclasses.replace(batch, sampling_logprobs=f32((logp0 + noise) * batch.completion_mask))
  return batch, config, params0, logp0, delta


def model_logprobs_and_grad(graphdef, params, batch, config, cotangent):
  """log pi_theta [N, T] of the tiny policy and the parameter gradient of sum(cotangent * log pi_theta)."""
  logprob_fn = QwenLogprobs(config.temperature, config.logprob_chunk_size)
  logp, pullback = jax.vjp(lambda p: logprob_fn(nnx.merge(graphdef, p), batch)[0], params)
  return np.asarray(logp), pullback(jnp.asarray(cotangent, jnp.float32))[0]


def numpy_rollout_updates(grpo_reference, graphdef, params, batch, config, logp0):
  """Metrics of each of the mu SGD updates (numpy loss gradient chained through the model's VJP) and the
  final parameters."""
  x = dict(adv=np.asarray(batch.advantages), mask=np.asarray(batch.completion_mask))
  zeros = np.zeros_like(logp0)
  per_update = []
  for _ in range(config.num_iterations):
    logp, _ = model_logprobs_and_grad(graphdef, params, batch, config, zeros)
    _, d_logp, metrics = reference_loss(grpo_reference, x, config, logp=logp, old=logp0, ref=logp0,
                                        sampling=np.asarray(batch.sampling_logprobs))
    _, grad = model_logprobs_and_grad(graphdef, params, batch, config, d_logp)
    params = jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grad)
    per_update.append((metrics, dict(x, logp=logp, old=logp0, sampling=np.asarray(batch.sampling_logprobs))))
  return per_update, params


@pytest.mark.parametrize("num_iterations", (1, 2))
@pytest.mark.parametrize(("switch", "aggregation"), [("gspo", "sequence-mean-token-mean"), ("tis", "token-mean"),
                                                     ("token-mask", "sequence-mean-token-mean"),
                                                     ("sequence-mask", "token-mean")])
def test_policy_updater_equals_numpy(tiny_rollout, grpo_reference, make_tiny_policy, switch, aggregation,
                                     num_iterations):
  batch, base, params0, logp0, delta = tiny_rollout
  config = dataclasses.replace(base, num_iterations=num_iterations, aggregation=aggregation, importance_cap=CAP,
                               **SWITCHES[switch])
  updater = PolicyUpdater(make_tiny_policy(), config, make_mesh((2, 2, 2)), tx=optax.sgd(LEARNING_RATE))
  placed = updater.place_batch(batch)
  assert placed.sampling_logprobs.sharding == placed.sampler_logprobs.sharding
  result = updater.train_on_rollout([placed])
  updates, expected_params = numpy_rollout_updates(grpo_reference, updater.graphdef, params0, batch, config, logp0)
  width = batch.completion_length
  for actual, (want, x) in zip((result.first, result.last)[:num_iterations], updates):
    # The ratio's two log-probs come from the updater's programs, each up to ~2 delta off the reference's:
    # every intermediate moves by a factor exp(+-4 delta).
    scale = largest_intermediate(x, ref=logp0)
    tol = f32_tol(scale, x["mask"].sum() + width) + 4 * delta * scale
    for name, value in want.items():
      assert abs(actual[name] - value) <= tol, name
  if num_iterations == 2 and config.ratio_level == "sequence":
    assert result.last["clip_fraction"] > 0  # update 2 moved some sequence ratios out of the clip range
  # Parameters: per SGD step, the rounding of theta - lr g (the two sides may differ by an ulp, 2 with
  # update 2 starting from those), plus the loss gradient's round-off pushed through the model's backward
  # pass, which sums over the P = N (Lp + T) positions terms up to ~3x their sum (the biases' gradients
  # cancel): 3 f32_tol of the step over P.
  positions = batch.inputs.input_ids.size
  for got, want, start in zip(jax.tree.leaves(updater.params), jax.tree.leaves(expected_params),
                              jax.tree.leaves(params0)):
    got, want = np.asarray(got), np.asarray(want)
    step = np.abs(want - start).max()
    tol = num_iterations * (2 * np.spacing(np.abs(want).max()) + 3 * f32_tol(step, positions))
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)


def test_policy_updater_with_switches_off_is_unchanged_by_sampling_logprobs(tiny_rollout, make_tiny_policy):
  # Today's update (a batch without sampling log-probs, as before they existed) bit for bit.
  batch, config, *_ = tiny_rollout
  runs = []
  for host in (dataclasses.replace(batch, sampling_logprobs=None), batch):
    updater = PolicyUpdater(make_tiny_policy(), config, make_mesh((2, 2, 2)), tx=optax.sgd(LEARNING_RATE))
    result = updater.train_on_rollout([updater.place_batch(host)])
    runs.append((result.first, result.last, jax.tree.map(np.asarray, updater.params)))
  (first, last, params), (first_with, last_with, params_with) = runs
  assert (first_with, last_with) == (first, last)
  jax.tree.map(np.testing.assert_array_equal, params_with, params)
