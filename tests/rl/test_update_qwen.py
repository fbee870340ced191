"""The GRPO update on the tiny Qwen2.5-VL: log-probs and gradients against independent paths, and the
sharded update on an emulated (2, 2, 2) mesh against one device."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mmrag_jax.model import Qwen25VL, chunked_logprobs, prepare_inputs
from mmrag_jax.parallel import make_mesh
from mmrag_jax.rl.batch import build_train_batch
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.policy import QwenLogprobs
from mmrag_jax.rl.update import PolicyUpdater
from mmrag_jax.sampling import prompt_batch
from mmrag_jax.sampling.host_batch import completion_batch

@pytest.mark.parametrize("share_prompts", [True, False], ids=["prompt-once-per-group", "whole-rows"])
def test_update_logprobs_and_gradient_equal_an_independent_full_forward_with_images(make_tiny_policy, rl_cases,
                                                                                    share_prompts):
  group, width, config = 2, 4, rl_cases.config
  prompts = rl_cases.processor_prompts([[2, (1, 4, 4), 2], [3, (1, 2, 4), 1]], seed=0)
  tokens, lengths = rl_cases.random_completions(4, width, seed=1)
  advantages = np.array([1.0, -1.0, 0.5, -0.5], np.float32)
  batch = build_train_batch(prompt_batch(prompts, config), tokens, lengths, np.zeros((4, width), np.float32),
                            group_size=group, config=config)
  batch = dataclasses.replace(batch, advantages=advantages)
  mask = batch.completion_mask

  # Oracle: chunked_logprobs over a plain forward of prompt + completion with every image repeated per row,
  # pulled back with the token-mean GRPO gradient at ratio 1: d loss / d logp = -A mask / sum(mask).
  full = completion_batch(prompts, tokens, group, config)
  full_inputs = prepare_inputs(full, config)
  prompt_length = prompts["input_ids"].shape[1]
  window = slice(prompt_length - 1, prompt_length - 1 + width)
  graphdef, params = nnx.split(make_tiny_policy(init_std=0.2))
  d_logp = jnp.asarray(-advantages[:, None] * mask / mask.sum(), jnp.float32)

  @jax.jit
  def oracle(p):
    def logprobs(q):
      model = nnx.merge(graphdef, q)
      logp, _ = chunked_logprobs(model.hidden_states(full_inputs), model.head_weight(), jnp.asarray(full["targets"]))
      return logp[:, window]

    logp, vjp = jax.vjp(logprobs, p)
    return logp, vjp(d_logp)[0]

  expected_logp, expected_grad = oracle(params)

  updater = PolicyUpdater(make_tiny_policy(init_std=0.2), GRPOConfig(group_size=group, max_new_tokens=width),
                          make_mesh((1, 1, 1), jax.devices()[:1]), tx=optax.sgd(1.0),
                          logprob_fn=QwenLogprobs(share_prompts=share_prompts))
  before = jax.tree.map(np.asarray, updater.params)
  metrics, (logp,) = updater.optimizer_update([updater.place_batch(batch)])
  np.testing.assert_allclose(np.asarray(logp)[mask], np.asarray(expected_logp)[mask], rtol=1e-5, atol=1e-5)
  step = jax.tree.map(lambda a, b: a - np.asarray(b), before, updater.params)  # = lr * gradient
  flat_step, flat_expected = jax.tree.leaves(step), jax.tree.leaves(expected_grad)
  assert len(flat_step) == len(flat_expected)
  for got, want in zip(flat_step, flat_expected):
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=2e-6)
  assert float(metrics["grad_norm"]) == pytest.approx(
      float(np.sqrt(sum((np.asarray(g) ** 2).sum() for g in flat_expected))), rel=1e-4)
  vision_step = jax.tree.leaves(nnx.state(nnx.merge(graphdef, step)).visual)
  assert max(float(np.abs(g).max()) for g in vision_step) > 0  # the images are trained through


def test_sharded_update_on_a_2x2x2_mesh_equals_one_device(make_tiny_policy, rl_cases, sharded_update_reference):
  batch, config = rl_cases.sharded_update_case()
  updater = PolicyUpdater(make_tiny_policy(), config, make_mesh((1, 1, 1), jax.devices()[:1]))
  single = updater.train_on_rollout([updater.place_batch(batch)])
  single_params = jax.tree.map(np.asarray, updater.params)
  sharded, sharded_params = sharded_update_reference
  for name in ("loss", "kl", "entropy", "grad_norm", "sampler_logprob_abs_diff"):
    assert sharded.first[name] == pytest.approx(single.first[name], rel=1e-4, abs=1e-6), name
    assert sharded.last[name] == pytest.approx(single.last[name], rel=1e-4, abs=1e-6), name
  assert abs(single.last["ratio"] - 1) > 1e-4
  # Adam divides by sqrt(v), so coordinates with near-zero gradients amplify float reassociation: compare
  # the parameter change as a whole.
  initial = jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(make_tiny_policy())))
  delta_single = np.concatenate([(p - p0).ravel() for p, p0 in zip(jax.tree.leaves(single_params), initial)])
  delta_sharded = np.concatenate([(p - p0).ravel() for p, p0 in zip(jax.tree.leaves(sharded_params), initial)])
  assert np.linalg.norm(delta_single) > 1e-2
  assert np.linalg.norm(delta_sharded - delta_single) < 1e-3 * np.linalg.norm(delta_single)


def test_mixed_precision_update_keeps_float32_master_weights_and_follows_the_float32_update(rl_cases):
  """bf16 compute with f32 parameters (`dtype='bfloat16', param_dtype='float32'`) is the mixed-precision
  switch: the update keeps float32 master weights and its log-probs and step track the float32 run."""
  group, width, config = 2, 4, rl_cases.config
  prompts = rl_cases.processor_prompts([[2, (1, 4, 4), 2], [3, (1, 2, 4), 1]], seed=0)
  tokens, lengths = rl_cases.random_completions(4, width, seed=1)

  def run(model_config):
    batch = build_train_batch(prompt_batch(prompts, model_config), tokens, lengths,
                              np.zeros((4, width), np.float32), group_size=group,
                              config=model_config)
    batch = dataclasses.replace(batch, advantages=np.array([1.0, -1.0, 0.5, -0.5], np.float32))
    policy = Qwen25VL(model_config, rngs=nnx.Rngs(0))
    updater = PolicyUpdater(policy, GRPOConfig(group_size=group, max_new_tokens=width),
                            make_mesh((1, 1, 1), jax.devices()[:1]), tx=optax.sgd(1.0))
    before = jax.tree.map(np.asarray, updater.params)
    _, (logp,) = updater.optimizer_update([updater.place_batch(batch)])
    after = jax.tree.map(np.asarray, updater.params)
    step = np.concatenate([(b - a).ravel() for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(after))])
    return np.asarray(logp)[batch.completion_mask], step, after

  logp32, step32, _ = run(config)
  logp16, step16, params16 = run(config.replace(dtype="bfloat16", param_dtype="float32"))
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params16))
  np.testing.assert_allclose(logp16, logp32, atol=0.05)
  cosine = step16 @ step32 / (np.linalg.norm(step16) * np.linalg.norm(step32))
  assert cosine > 0.95


def test_prompts_run_once_per_group_where_they_split_evenly_over_the_data_parallel_chips(make_tiny_policy,
                                                                                        rl_cases):
  batch, config = rl_cases.sharded_update_case()  # 4 prompts x G = 2
  flops = {}
  for shape in ((1, 4, 1), (1, 8, 1)):
    for share in (True, False):
      updater = PolicyUpdater(make_tiny_policy(), config, make_mesh(shape, jax.devices()[:shape[1]]),
                              logprob_fn=QwenLogprobs(share_prompts=share))
      flops[shape, share] = updater.update_flops(updater.place_batch(batch))
  # 4 chips: one prompt each, then the completions; 4 x 6 + 8 x 5 positions instead of 8 x 11.
  assert flops[(1, 4, 1), True] < 0.85 * flops[(1, 4, 1), False]
  # 8 chips: 4 prompts would run replicated on every chip, so the rows run whole.
  assert flops[(1, 8, 1), True] == flops[(1, 8, 1), False]
