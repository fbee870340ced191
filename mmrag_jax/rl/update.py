"""The sharded GRPO update: exact gradient accumulation over micro-batches, mu updates per rollout batch.

One optimizer step over micro-batches b = 1..M runs

    accumulate(b):  g += grad_theta loss_sum_b,  metric sums += ...   (jitted, accumulator donated)
    apply:          theta, opt <- AdamW(theta, opt, g / sum_b denominator_b)    (jitted, state donated)

so the step equals one step on the concatenated batch whatever M is (see `losses.py`). Parameters and
optimizer state live on the ('data', 'fsdp', 'tensor') mesh with the shardings of the logical-axis rules
(the apply step pins them with out_shardings, so donation updates them in place); micro-batch rows are
split over ('data', 'fsdp'). Micro-batch shapes may differ (length buckets): each shape compiles once,
and updaters with equal model / optimizer / loss settings share compilations.

Old log-probs: with `old_logprobs='trainer'` the first of the mu updates uses the trainer's own log-probs
at the rollout parameters (ratio exactly 1) and keeps them as the denominator for updates 2..mu, so no
separate forward pass is spent on them.

Frozen vision (`config.freeze_vision_tower`): the parameters split into trainable and frozen ones
(`trainable_filter`); gradients, the accumulator and the optimizer state cover only the trainable part,
and the apply step leaves the frozen arrays untouched (not donated, so the KL reference shares them).
Differentiating only the trainable part is what saves the compute: no weight gradients of the frozen
blocks and no backward pass below the first trainable layer (the merger in 'tower', the language model
in 'tower_and_merger').
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from mmrag_jax.model.qwen25vl import map_input_arrays
from mmrag_jax.parallel import (DEFAULT_RULES, LogicalRules, activation_mesh, compiler_options, logical_sharding,
                                param_shardings, platform_jit)
from mmrag_jax.rl.batch import TrainBatch
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.losses import MetricSums, PolicyLossConfig, add_metric_sums, finalize_metrics, policy_loss
from mmrag_jax.rl.policy import LogprobFn, QwenLogprobs

__all__ = [
    "FrozenTree", "PolicyUpdater", "RolloutUpdate", "jitted_apply", "jitted_model_steps", "put_global",
    "split_trainable", "train_batch_shardings", "trainable_filter",
]


def train_batch_shardings(batch: TrainBatch, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> TrainBatch:
  """Shardings for a TrainBatch: rows over the batch axes, pixel rows, image tokens and attention blocks
  over the same axes (`map_input_arrays`)."""
  def shard(x: Any, names: tuple[str | None, ...]) -> NamedSharding | None:
    return None if x is None else logical_sharding(mesh, names, rules, shape=np.shape(x))

  inputs = None if batch.inputs is None else map_input_arrays(batch.inputs, shard)
  return TrainBatch(
      inputs=inputs, image_slots=shard(batch.image_slots, (None, "vis_tokens")),
      completion_ids=shard(batch.completion_ids, ("batch", "length")),
      completion_mask=shard(batch.completion_mask, ("batch", "length")),
      sampler_logprobs=shard(batch.sampler_logprobs, ("batch", "length")),
      advantages=shard(batch.advantages, ("batch",)),
      sampling_logprobs=shard(batch.sampling_logprobs, ("batch", "length")), group_size=batch.group_size)


def put_global(tree: Any, shardings: Any) -> Any:
  """Places host arrays that every process holds in full (the global batch) onto their shardings.

  One process: `jax.device_put`. Several: each process fills only its addressable shards.
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)

  def place(x: Any, sharding: NamedSharding) -> jax.Array:
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(place, tree, shardings)


# Path prefixes of the parameters each `GRPOConfig.freeze_vision_tower` setting leaves untouched.
_FROZEN_PATHS = {
    "none": (),
    "tower": (("visual", "patch_embed"), ("visual", "blocks")),
    "tower_and_merger": (("visual",),),
}


@dataclasses.dataclass(frozen=True)
class _UnderPaths:
  """nnx filter: Variables whose path from the model root starts with one of `prefixes`."""

  prefixes: tuple[tuple[str, ...], ...]

  def __call__(self, path: tuple[Any, ...], value: Any) -> bool:
    return any(tuple(path[:len(prefix)]) == prefix for prefix in self.prefixes)


def trainable_filter(freeze_vision_tower: str = "none") -> Any:
  """The nnx filter of the parameters GRPO trains (and keeps optimizer state for).

  'none': every `nnx.Param` (exactly the optimizer of an unfrozen run); 'tower': all but
  `visual.patch_embed` and `visual.blocks`; 'tower_and_merger': all but `visual`.
  """
  frozen = _FROZEN_PATHS[freeze_vision_tower]
  return nnx.All(nnx.Param, nnx.Not(_UnderPaths(frozen))) if frozen else nnx.Param


def split_trainable(state: nnx.State, freeze_vision_tower: str = "none") -> tuple[nnx.State, nnx.State]:
  """(trainable, frozen) parts of a parameter state (or of a like-structured sharding tree);
  `nnx.merge_state(trainable, frozen)` is `state` again. The frozen part is empty for 'none'."""
  return nnx.split_state(state, trainable_filter(freeze_vision_tower), ...)


@dataclasses.dataclass(frozen=True)
class FrozenTree:
  """A pytree of hashable leaves (e.g. shardings) as a hashable value."""

  treedef: Any
  leaves: tuple[Any, ...]

  @classmethod
  def of(cls, tree: Any) -> "FrozenTree":
    leaves, treedef = jax.tree.flatten(tree)
    return cls(treedef, tuple(leaves))

  def tree(self) -> Any:
    return jax.tree.unflatten(self.treedef, self.leaves)

  def mesh(self) -> Any:
    """The mesh of the first NamedSharding among the leaves (None when there is none)."""
    return next((leaf.mesh for leaf in self.leaves if isinstance(leaf, NamedSharding)), None)


class _Steps(NamedTuple):
  zeros: Any
  accumulate: Any
  apply: Any
  logprobs: Any


@functools.lru_cache(maxsize=8)
def jitted_model_steps(graphdef: nnx.GraphDef, loss_config: PolicyLossConfig, logprob_fn: LogprobFn,
                       param_sh: FrozenTree, freeze: str) -> tuple[Any, Any, Any]:
  """The jitted zeros / accumulate / log-prob functions: they depend on the model and the loss, not on the
  optimizer, so updaters that differ only in their optimizer (e.g. a warm-up and the GRPO run after it)
  share these compilations, the most expensive ones. zeros and accumulate hold gradients of the trainable
  parameters only (`split_trainable(params, freeze)[0]`). The forward passes trace under the parameters'
  mesh as `activation_mesh` (rows stay over the batch axes; FSDP gathers weights)."""
  mesh = param_sh.mesh()

  def accumulate(params: nnx.State, grad_sums: nnx.State, batch: TrainBatch, old_logprobs: jax.Array,
                 ref_logprobs: jax.Array | None, old_is_current: jax.Array
                 ) -> tuple[nnx.State, MetricSums, jax.Array]:
    trainable, frozen = split_trainable(params, freeze)

    def loss_sum(p: nnx.State) -> tuple[jax.Array, tuple[MetricSums, jax.Array]]:
      with activation_mesh(mesh):
        logprobs, entropy = logprob_fn(nnx.merge(graphdef, p, frozen), batch)
      # A traced switch rather than None, so the first and later updates share one compilation.
      old = jnp.where(old_is_current, jax.lax.stop_gradient(logprobs), old_logprobs)
      terms = policy_loss(logprobs, old, batch.advantages, batch.completion_mask, loss_config,
                          ref_logprobs=ref_logprobs, entropy=entropy, sampler_logprobs=batch.sampler_logprobs,
                          sampling_logprobs=batch.sampling_logprobs)
      return terms.loss_sum, (terms.metrics, jax.lax.stop_gradient(logprobs))

    # Only the trainable part is differentiated: XLA keeps no backward pass below it.
    grads, (metrics, logprobs) = jax.grad(loss_sum, has_aux=True)(trainable)
    return jax.tree.map(jnp.add, grad_sums, grads), metrics, logprobs

  def logprobs(params: nnx.State, batch: TrainBatch) -> jax.Array:
    with activation_mesh(mesh):
      return logprob_fn(nnx.merge(graphdef, params), batch)[0]

  options = compiler_options(mesh)
  zeros = jax.jit(lambda params: jax.tree.map(jnp.zeros_like, split_trainable(params, freeze)[0]),
                  out_shardings=split_trainable(param_sh.tree(), freeze)[0], compiler_options=options)
  return (zeros, jax.jit(accumulate, donate_argnums=(1,), compiler_options=options),
          jax.jit(logprobs, compiler_options=options))


@functools.lru_cache(maxsize=8)
def jitted_apply(graphdef: nnx.GraphDef, opt_graphdef: nnx.GraphDef, param_sh: FrozenTree,
                 opt_sh: FrozenTree, freeze: str) -> Any:
  """The jitted optimizer step of one (model, optimizer) setting:
  (trainable, frozen, opt_state, grad_sums, denominator) -> (trainable, opt_state, grad_norm)."""

  def apply(trainable: nnx.State, frozen: nnx.State, opt_state: nnx.State, grad_sums: nnx.State,
            denominator: jax.Array) -> tuple[nnx.State, nnx.State, jax.Array]:
    model = nnx.merge(graphdef, trainable, frozen)
    optimizer = nnx.merge(opt_graphdef, opt_state)
    grads = jax.tree.map(lambda g: g / jnp.maximum(denominator, 1e-30), grad_sums)
    optimizer.update(model, grads)
    return split_trainable(nnx.state(model), freeze)[0], nnx.state(optimizer), optax.tree.norm(grads)

  # The frozen part is read, never donated: its buffers stay valid (and shared with the KL reference).
  return jax.jit(apply, donate_argnums=(0, 2), compiler_options=compiler_options(param_sh.mesh()),
                 out_shardings=(split_trainable(param_sh.tree(), freeze)[0], opt_sh.tree(), None))


def _jitted_steps(graphdef: nnx.GraphDef, opt_graphdef: nnx.GraphDef, loss_config: PolicyLossConfig,
                  logprob_fn: LogprobFn, param_sh: FrozenTree, opt_sh: FrozenTree, freeze: str) -> _Steps:
  """The jitted accumulate / apply / log-prob functions of one (model, optimizer, loss, freeze) setting."""
  zeros, accumulate, logprobs = jitted_model_steps(graphdef, loss_config, logprob_fn, param_sh, freeze)
  return _Steps(zeros=zeros, accumulate=accumulate,
                apply=jitted_apply(graphdef, opt_graphdef, param_sh, opt_sh, freeze), logprobs=logprobs)


@platform_jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


# Metric bookkeeping as one dispatch each instead of one per scalar op.
_add_metric_sums = platform_jit(add_metric_sums)
_finalize_metrics = platform_jit(finalize_metrics)


@dataclasses.dataclass
class RolloutUpdate:
  """Metrics of the mu updates on one rollout batch: first[name] from update 1 (at the rollout
  parameters: sampler drift, entropy), last[name] from update mu (clip fraction, ratio != 1)."""

  first: dict[str, float]
  last: dict[str, float]


class PolicyUpdater:
  """Owns the policy parameters and optimizer state on the mesh and runs jitted GRPO updates.

  model: the policy (e.g. `Qwen25VL`); the updater takes over its arrays (placing them on the rule
  shardings and later donating them), so use `updater.model()` afterwards, never `model`.
  logprob_fn: hashable (policy, TrainBatch) -> (log-probs, entropy) [N, T]; defaults to
  `QwenLogprobs` with the config's temperature and chunk size. tx: optimizer (default `config.optimizer()`).
  """

  def __init__(self, model: nnx.Module, config: GRPOConfig, mesh: Mesh, *, rules: LogicalRules = DEFAULT_RULES,
               logprob_fn: LogprobFn | None = None, tx: optax.GradientTransformation | None = None):
    self.config, self.mesh, self.rules = config, mesh, rules
    self.loss_config = config.loss_config()
    self.schedule = config.learning_rate_schedule() if tx is None else None
    # The learning-rate metric as one jitted program for every step: evaluated eagerly, optax's schedule
    # dispatches (and on its first call compiles) one small program per jnp op.
    self._learning_rate = None if self.schedule is None else platform_jit(
        lambda step, schedule=self.schedule: jnp.asarray(schedule(step), jnp.float32))
    tx = tx or config.optimizer()
    self.freeze = config.freeze_vision_tower
    self.graphdef, params = nnx.split(model)
    self.param_shardings = param_shardings(params, mesh, rules)
    self.params = jax.device_put(params, self.param_shardings)
    self.opt_graphdef, self.opt_state, self.opt_shardings = _init_optimizer(
        self.graphdef, self.params, tx, mesh, rules, trainable_filter(self.freeze))
    # The reference policy is the initial one: a copy of the trainable part, because the live one is
    # donated; the frozen part never changes, so it is shared.
    self.reference_params = None
    if self.loss_config.beta > 0:
      trainable, frozen = split_trainable(self.params, self.freeze)
      self.reference_params = nnx.merge_state(
          jax.device_put(trainable, split_trainable(self.param_shardings, self.freeze)[0], may_alias=False), frozen)
    self._steps = _jitted_steps(self.graphdef, self.opt_graphdef, self.loss_config,
                                logprob_fn or QwenLogprobs(config.temperature, config.logprob_chunk_size),
                                FrozenTree.of(self.param_shardings), FrozenTree.of(self.opt_shardings),
                                self.freeze)
    self._host_step = self.optimizer_step  # mirrors the device counter without a sync per step
    # Optimizer steps begun (counted before the apply step donates the parameters): a caller that saw
    # this count at a consistent point knows whether the parameters have moved since, even partly.
    self.updates_started = 0

  def model(self) -> nnx.Module:
    """The policy with the current parameters (a view: do not keep it across updates, which donate them)."""
    return nnx.merge(self.graphdef, self.params)

  @property
  def optimizer_step(self) -> int:
    """Optimizer steps taken so far (mu per rollout batch), read from the optimizer state."""
    return int(jax.device_get(nnx.merge(self.opt_graphdef, self.opt_state).step[...]))

  def set_state(self, params: nnx.State, opt_state: nnx.State) -> None:
    """Replaces parameters and optimizer state (e.g. restored from a checkpoint, on this updater's shardings)."""
    self.params, self.opt_state = params, opt_state
    self._host_step = self.optimizer_step

  def place_batch(self, batch: TrainBatch) -> TrainBatch:
    """Host TrainBatch (the global batch, identical on every process) -> arrays on the mesh."""
    return put_global(batch, train_batch_shardings(batch, self.mesh, self.rules))

  def reference_logprobs(self, batch: TrainBatch) -> jax.Array | None:
    """log pi_ref of the completion tokens [N, T], or None when beta = 0 (no reference policy)."""
    if self.reference_params is None:
      return None
    return self._steps.logprobs(self.reference_params, batch)

  def policy_logprobs(self, batch: TrainBatch) -> jax.Array:
    """log pi_theta of the completion tokens [N, T] at the current parameters (no update)."""
    return self._steps.logprobs(self.params, batch)

  def params_finite(self) -> bool:
    """Whether every parameter and optimizer-state entry is finite (one jitted reduction, one sync)."""
    return bool(_all_finite((self.params, self.opt_state)))

  def update_flops(self, batch: TrainBatch) -> float:
    """XLA's FLOP count of one micro-batch's forward + backward pass (recomputation included; with a
    frozen vision tower, no backward through the frozen part)."""
    compiled = self._steps.accumulate.lower(self.params, self._steps.zeros(self.params), batch,
                                            batch.sampler_logprobs, self.reference_logprobs(batch),
                                            np.asarray(True)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", float("nan")))

  def optimizer_update(self, batches: Sequence[TrainBatch], old_logprobs: Sequence[jax.Array] | None = None,
                       ref_logprobs: Sequence[jax.Array | None] | None = None
                       ) -> tuple[dict[str, jax.Array], list[jax.Array]]:
    """One optimizer step over the micro-batches (placed on the mesh).

    old_logprobs: per micro-batch [N, T], or None to use the current log-probs (ratio 1). ref_logprobs:
    per micro-batch [N, T]; computed here when None and beta > 0. Returns the
    finalized metrics (device scalars: loss terms, grad_norm, learning_rate) and each micro-batch's
    log-probs [N, T] before the step.
    """
    if not batches:
      raise ValueError("optimizer_update needs at least one micro-batch")
    grad_sums, metric_sums, current = self._steps.zeros(self.params), None, []
    for index, batch in enumerate(batches):
      use_current = old_logprobs is None
      old = batch.sampler_logprobs if use_current else old_logprobs[index]  # ignored when use_current
      ref = self.reference_logprobs(batch) if ref_logprobs is None else ref_logprobs[index]
      grad_sums, sums, logprobs = self._steps.accumulate(self.params, grad_sums, batch, old, ref,
                                                         np.asarray(use_current))
      metric_sums = sums if metric_sums is None else _add_metric_sums(metric_sums, sums)
      current.append(logprobs)
    denominator = metric_sums["loss"][1]
    self.updates_started += 1
    trainable, frozen = split_trainable(self.params, self.freeze)
    trainable, self.opt_state, grad_norm = self._steps.apply(trainable, frozen, self.opt_state, grad_sums,
                                                             denominator)
    self.params = nnx.merge_state(trainable, frozen)
    metrics = {**_finalize_metrics(metric_sums), "grad_norm": grad_norm}
    if self.schedule is not None:
      metrics["learning_rate"] = self._learning_rate(np.int32(self._host_step))
    self._host_step += 1
    return metrics, current

  def train_on_rollout(self, batches: Sequence[TrainBatch], ref_logprobs: Sequence[jax.Array] | None = None
                       ) -> RolloutUpdate:
    """The mu = config.num_iterations optimizer steps on one rollout batch (micro-batches on the mesh).

    ref_logprobs: the reference log-probs per micro-batch when already computed (beta > 0).
    """
    ref = ref_logprobs
    if ref is None and self.reference_params is not None:
      ref = [self.reference_logprobs(b) for b in batches]
    old = [b.sampler_logprobs for b in batches] if self.config.old_logprobs == "sampler" else None
    first = last = None
    for iteration in range(self.config.num_iterations):
      metrics, current = self.optimizer_update(batches, old, ref)
      if iteration == 0:
        first = metrics
        old = current if old is None else old
      last = metrics
    as_floats = lambda m: {k: float(v) for k, v in jax.device_get(m).items()}
    return RolloutUpdate(first=as_floats(first), last=as_floats(last))


def _init_optimizer(graphdef: nnx.GraphDef, params: nnx.State, tx: optax.GradientTransformation, mesh: Mesh,
                    rules: LogicalRules, wrt: Any = nnx.Param) -> tuple[nnx.GraphDef, nnx.State, Any]:
  """An `nnx.Optimizer(model, tx, wrt=wrt)` state created directly on its shardings (state only for the
  parameters `wrt` selects, see `trainable_filter`).

  Adam moments carry their parameter's logical axes, so they shard like the parameter; scalars replicate.
  """
  abstract = nnx.eval_shape(lambda: nnx.Optimizer(nnx.merge(graphdef, params), tx, wrt=wrt))
  opt_graphdef, abstract_state = nnx.split(abstract)
  shardings = param_shardings(abstract_state, mesh, rules)
  init = _jitted_optimizer_init(graphdef, tx, FrozenTree.of(shardings), wrt)
  return opt_graphdef, init(params), shardings


@functools.lru_cache(maxsize=8)
def _jitted_optimizer_init(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, shardings: FrozenTree,
                           wrt: Any) -> Any:
  def optimizer_state(params: nnx.State) -> nnx.State:
    return nnx.state(nnx.Optimizer(nnx.merge(graphdef, params), tx, wrt=wrt))

  return jax.jit(optimizer_state, out_shardings=shardings.tree(),
                 compiler_options=compiler_options(shardings.mesh()))
