"""`GRPOConfig.freeze_vision_tower`: frozen parameters get no gradient, no optimizer state and never move;
the trainable ones follow a hand-written jax.grad + optax AdamW oracle.

Every run: the tiny policy, 4 prompts (3 with images) x G = 2, mu = 2 updates with a KL term.
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
from mmrag_jax.rl.checkpointing import CheckpointStore
from mmrag_jax.rl.losses import policy_loss
from mmrag_jax.rl.policy import QwenLogprobs
from mmrag_jax.rl.update import PolicyUpdater
from mmrag_jax.sampling import prompt_batch

# Written out here rather than taken from `update.py`, so the oracle does not share the code under test.
FROZEN_PREFIXES = {"none": (), "tower": (("visual", "patch_embed"), ("visual", "blocks")),
                   "tower_and_merger": (("visual",),)}
MODES = tuple(FROZEN_PREFIXES)


def is_frozen(path, mode):
  return any(tuple(path[:len(prefix)]) == prefix for prefix in FROZEN_PREFIXES[mode])


def flat_host(state):
  """{path: numpy array} of an nnx.State."""
  return {path: np.asarray(variable.get_value()) for path, variable in nnx.to_flat_state(state)}


def image_case(rl_cases):
  """(host TrainBatch with images, GRPOConfig) of `sharded_update_case`'s settings."""
  tiny = rl_cases.config
  _, config = rl_cases.sharded_update_case()
  prompts = prompt_batch(rl_cases.processor_prompts([[2, (1, 4, 4), 2], [3, (1, 2, 4), 1], [4], [2, (1, 2, 2)]],
                                                 seed=0), tiny)
  tokens, lengths = rl_cases.random_completions(8, config.max_new_tokens, seed=3)
  rng = np.random.default_rng(4)
  batch = build_train_batch(prompts, tokens, lengths, rng.normal(-3, 0.1, tokens.shape).astype(np.float32),
                            group_size=config.group_size, config=tiny)
  return dataclasses.replace(batch, advantages=rng.normal(size=8).astype(np.float32)), config


@pytest.fixture(scope="module")
def runs(make_tiny_policy, rl_cases):
  """mode -> (updater after one rollout update of mu = 2 steps, initial params, final params, opt state,
  RolloutUpdate), the params as {path: numpy}, the optimizer state as numpy leaves."""
  batch, config = image_case(rl_cases)
  mesh = make_mesh((1, 1, 1), jax.devices()[:1])
  out = {}
  for mode in MODES:
    updater = PolicyUpdater(make_tiny_policy(), dataclasses.replace(config, freeze_vision_tower=mode), mesh)
    initial = flat_host(updater.params)
    update = updater.train_on_rollout([updater.place_batch(batch)])
    opt_leaves = jax.tree.leaves(jax.tree.map(np.asarray, updater.opt_state))
    out[mode] = (updater, initial, flat_host(updater.params), opt_leaves, update)
  return out


@pytest.mark.parametrize("mode", ["tower", "tower_and_merger"])
def test_frozen_parameters_stay_bit_identical_and_the_trainable_ones_move(runs, mode):
  _, initial, final, _, update = runs[mode]
  frozen = [path for path in initial if is_frozen(path, mode)]
  assert frozen and len(frozen) < len(initial)
  print(mode, "frozen parameters", sum(initial[path].size for path in frozen), "of",
        sum(value.size for value in initial.values()))
  for path in initial:
    if is_frozen(path, mode):
      np.testing.assert_array_equal(final[path], initial[path], err_msg=str(path))
    else:
      assert not np.array_equal(final[path], initial[path]), path
  if mode == "tower":  # the merger trains in 'tower'
    assert any(path[:2] == ("visual", "merger") and not is_frozen(path, mode) for path in initial)


@pytest.mark.parametrize("mode", ["tower", "tower_and_merger"])
def test_the_optimizer_state_holds_no_entries_for_frozen_parameters(runs, mode):
  _, initial, _, opt_leaves, _ = runs[mode]
  _, _, _, full_leaves, _ = runs["none"]
  frozen = [initial[path] for path in initial if is_frozen(path, mode)]
  nbytes = lambda leaves: sum(leaf.nbytes for leaf in leaves)
  # AdamW keeps two moments per parameter; the step counters are the same in both.
  assert len(opt_leaves) == len(full_leaves) - 2 * len(frozen)
  assert nbytes(opt_leaves) == nbytes(full_leaves) - 2 * nbytes(frozen)
  updater = runs[mode][0]
  for path, _ in nnx.to_flat_state(updater.opt_state):
    assert "visual" not in path or ("merger" in path and mode == "tower"), path


def oracle_final_params(make_tiny_policy, batch, config, mode):
  """The mu = 2 updates written out: jax.grad of the loss w.r.t. the trainable arrays only, optax's
  global-norm clip + AdamW on them, the frozen arrays held fixed.

  Returns ({path: numpy} of the trainable params, [the gradient's global norm of each update]).
  """
  graphdef, state = nnx.split(make_tiny_policy())
  flat = list(nnx.to_flat_state(state))
  train = {path: jnp.asarray(v.get_value()) for path, v in flat if not is_frozen(path, mode)}
  fixed = {path: jnp.asarray(v.get_value()) for path, v in flat if is_frozen(path, mode)}
  logprob_fn = QwenLogprobs(config.temperature, config.logprob_chunk_size)
  batch = jax.tree.map(jnp.asarray, batch)

  def model_of(arrays):
    values = {**arrays, **fixed}
    return nnx.merge(graphdef, nnx.from_flat_state([(path, v.replace(values[path])) for path, v in flat]))

  def loss(arrays, old, ref):
    logprobs, entropy = logprob_fn(model_of(arrays), batch)
    old = jax.lax.stop_gradient(logprobs) if old is None else old
    terms = policy_loss(logprobs, old, batch.advantages, batch.completion_mask, config.loss_config(),
                        ref_logprobs=ref, entropy=entropy)
    return terms.loss_sum / terms.denominator, jax.lax.stop_gradient(logprobs)

  tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                   optax.adamw(config.learning_rate_schedule(), b1=config.adam_b1, b2=config.adam_b2,
                               eps=config.adam_eps, weight_decay=config.weight_decay))
  opt_state = tx.init(train)
  ref = jax.jit(lambda a: logprob_fn(model_of(a), batch)[0])(train)
  grad = jax.jit(jax.grad(loss, has_aux=True))
  old, norms = None, []  # update 1 at ratio 1; its log-probs are the old ones of the later updates
  for _ in range(config.num_iterations):
    grads, logprobs = grad(train, old, ref)
    norms.append(float(np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads)))))
    old = logprobs if old is None else old
    updates, opt_state = tx.update(grads, opt_state, train)
    train = optax.apply_updates(train, updates)
  return {path: np.asarray(value) for path, value in train.items()}, norms


@pytest.mark.parametrize("mode", MODES)
def test_trainable_parameters_equal_a_hand_written_grad_and_adamw_oracle(runs, make_tiny_policy, rl_cases, mode):
  batch, config = image_case(rl_cases)
  expected, grad_norms = oracle_final_params(make_tiny_policy, batch, config, mode)
  _, initial, final, _, update = runs[mode]
  assert set(expected) == {path for path in final if not is_frozen(path, mode)}
  # The gradients themselves (Adam's steps hardly depend on their scale): norms over the trainable part.
  assert update.first["grad_norm"] == pytest.approx(grad_norms[0], rel=1e-5)
  assert update.last["grad_norm"] == pytest.approx(grad_norms[-1], rel=1e-5)
  delta = lambda params: np.concatenate([(params[path] - initial[path]).ravel() for path in sorted(expected)])
  want = delta(expected)
  assert np.linalg.norm(want) > 1e-2
  # Separately compiled programs differ in float reassociation, which Adam's g / sqrt(v) amplifies where
  # gradients are near zero: compare the change as a whole, and every entry to 2% of the step size.
  got = delta(final)
  print(mode, "max |diff| / lr", float(np.abs(got - want).max() / config.learning_rate),
        "relative norm", float(np.linalg.norm(got - want) / np.linalg.norm(want)))
  assert np.linalg.norm(got - want) < 1e-4 * np.linalg.norm(want)
  np.testing.assert_allclose(got, want, atol=2e-2 * config.learning_rate)


def test_update_flops_drop_with_the_frozen_tower(runs, rl_cases):
  batch, _ = image_case(rl_cases)
  flops = {mode: runs[mode][0].update_flops(runs[mode][0].place_batch(batch)) for mode in MODES}
  print("update_flops", flops)
  assert flops["none"] > flops["tower"] > flops["tower_and_merger"] > 0


def test_a_checkpoint_with_a_frozen_tower_round_trips_and_training_continues_identically(
    tmp_path, runs, make_tiny_policy, rl_cases):
  batch, config = image_case(rl_cases)
  config = dataclasses.replace(config, freeze_vision_tower="tower")
  updater = runs["tower"][0]
  store = CheckpointStore(str(tmp_path))
  store.save(1, updater, jax.random.key_data(jax.random.key(0)), {})
  store.close()
  restored = PolicyUpdater(make_tiny_policy(seed=5), config, make_mesh((1, 1, 1), jax.devices()[:1]))
  CheckpointStore(str(tmp_path)).restore(restored)
  host = lambda tree: jax.tree.leaves(jax.tree.map(np.asarray, tree))
  for name in ("params", "opt_state", "reference_params"):
    for got, want in zip(host(getattr(restored, name)), host(getattr(updater, name)), strict=True):
      np.testing.assert_array_equal(got, want, err_msg=name)
  assert restored.optimizer_step == updater.optimizer_step == config.num_iterations
  for each in (updater, restored):
    each.train_on_rollout([each.place_batch(batch)])
  for got, want in zip(host(restored.params), host(updater.params), strict=True):
    np.testing.assert_array_equal(got, want)
