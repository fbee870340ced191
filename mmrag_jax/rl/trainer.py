"""The GRPO training loop shared by both MMRAG-RFT stages.

One loop step:

  M pipeline batches of prompts  --sampler-->  G completions each   (rollout: sample, decode, reward)
    [--> dynamic sampling: drop equal-reward groups, refill from further batches, M micro-batches of the
         informative ones; the refill batches belong to the step (data position, RNG); `dynamic_sampling.py`]
    --> group advantages over all M * B * G trained completions (jitted)
    --> reference log-probs when beta > 0                             (reference)
    --> mu optimizer steps, each accumulating over the M micro-batches (update)
    --> metrics row (metrics.jsonl + TensorBoard), progress bar, eval hook, checkpoint

Multi-host: call `mmrag_jax.parallel.maybe_initialize_distributed()` before building anything. Every
process must iterate the same global batches (the same pipeline, seed and shard_count=1): the sampler,
the rewards and the host-side batch assembly then agree everywhere, and each process places only its
own shards of the global arrays on its devices. Only process 0 writes metrics; all write checkpoints.

Resume: a run whose workdir already holds a committed checkpoint continues from the latest good one
(parameters, optimizer state, KL reference, RNG, loop step and data-iterator position), producing the
same metrics and parameters as an uninterrupted run; `metrics.jsonl` keeps one row per step.

Stopping: SIGTERM / SIGINT end the run after the current step, checkpointed (`TrainingInterrupted`); a
NaN or infinite loss, gradient or parameter stops it before anything non-finite is saved
(`NonFiniteTraining`); a failing step checkpoints the completed steps when it had not yet touched the
parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmrag_jax.data.batching import PipelineBatch
from mmrag_jax.parallel import DEFAULT_RULES, LogicalRules
from mmrag_jax.rl.advantages import group_advantages
from mmrag_jax.rl.batch import TrainBatch
from mmrag_jax.rl.checkpointing import CheckpointSaveFailed, CheckpointStore, iterator_state, restore_iterator_state
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.dynamic_sampling import DynamicSample, dynamic_sample
from mmrag_jax.rl.interrupts import NonFiniteTraining, StopSignals, TrainingInterrupted, signal_name
from mmrag_jax.rl.metrics_log import MetricsWriter, ProgressBar
from mmrag_jax.rl.policy import LogprobFn
from mmrag_jax.rl.rollout import Detokenize, RewardFn, Rollout, collect_rollout, rollout_metrics
from mmrag_jax.rl.update import PolicyUpdater, put_global
from mmrag_jax.sampling import SamplerConfig
from mmrag_jax.validation import check_int

__all__ = ["EvalFn", "GRPOTrainer", "TrainerConfig"]

_log = logging.getLogger(__name__)

EvalFn = Callable[[nnx.Module, int], Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  """Loop settings.

  num_steps: loop steps (rollout batches) of the whole run.
  micro_batches: pipeline batches per rollout batch, i.e. gradient-accumulation micro-batches M.
  seed: seed of the rollout RNG.
  checkpoint_every: save every this many steps (0: only at the end); max_to_keep: checkpoints kept.
  async_checkpointing: write checkpoints in the background.
  eval_every: call the eval hook every this many steps (0: never).
  progress_bar, tensorboard: console bar and event files.
  """

  num_steps: int
  micro_batches: int = 1
  seed: int = 0
  checkpoint_every: int = 0
  max_to_keep: int = 3
  async_checkpointing: bool = True
  eval_every: int = 0
  progress_bar: bool = True
  tensorboard: bool = True

  def __post_init__(self) -> None:
    for name in ("num_steps", "micro_batches", "max_to_keep"):
      check_int("TrainerConfig", name, getattr(self, name), low=1)
    for name in ("checkpoint_every", "eval_every", "seed"):
      check_int("TrainerConfig", name, getattr(self, name), low=0)


class GRPOTrainer:
  """Runs GRPO on a policy (see the module docstring).

  model: the policy (`Qwen25VL`); the trainer takes over its arrays. data: an iterator of pipeline
  batches (grain iterators also checkpoint their position). reward_fn: see `rollout.RewardFn`.
  detokenize: token ids -> text for the reward parsers. eval_fn: (policy, step) -> metrics, logged
  under 'eval/'.
  """

  def __init__(self, model: nnx.Module, grpo: GRPOConfig, sampler: SamplerConfig, config: TrainerConfig, *,
               mesh: Mesh, workdir: str, data: Iterator[PipelineBatch], reward_fn: RewardFn,
               detokenize: Detokenize, eval_fn: EvalFn | None = None, rules: LogicalRules = DEFAULT_RULES,
               logprob_fn: LogprobFn | None = None):
    if sampler.max_new_tokens != grpo.max_new_tokens:
      raise ValueError(f"SamplerConfig.max_new_tokens={sampler.max_new_tokens} differs from "
                       f"GRPOConfig.max_new_tokens={grpo.max_new_tokens}")
    self.grpo, self.sampler_config, self.config = grpo, sampler, config
    self.mesh, self.workdir, self.data = mesh, workdir, data
    self.reward_fn, self.detokenize, self.eval_fn = reward_fn, detokenize, eval_fn
    self.updater = PolicyUpdater(model, grpo, mesh, rules=rules, logprob_fn=logprob_fn)
    self.checkpoints = CheckpointStore(os.path.join(workdir, "checkpoints"), max_to_keep=config.max_to_keep,
                                       async_save=config.async_checkpointing)
    self.step = 0
    self._saved_step: int | None = None
    self.rng = self._replicated(jax.random.key_data(jax.random.key(config.seed)))
    if self.checkpoints.latest_step() is not None:
      self.rng, meta = self.checkpoints.restore(self.updater)
      self.step = int(meta["step"])
      restore_iterator_state(self.data, meta.get("data"))

  def _replicated(self, x: Any) -> jax.Array:
    return put_global(np.asarray(x), NamedSharding(self.mesh, PartitionSpec()))

  def model(self) -> nnx.Module:
    """The policy at its current parameters."""
    return self.updater.model()

  # -- one step ------------------------------------------------------------------------------------

  def _rollout(self, batch: PipelineBatch, key: jax.Array) -> Rollout:
    return collect_rollout(
        self.updater.model(), batch, key, sampler_config=self.sampler_config, group_size=self.grpo.group_size,
        reward_fn=self.reward_fn, detokenize=self.detokenize, mesh=self.mesh)

  def _rollouts(self, keys: jax.Array) -> list[Rollout]:
    return [self._rollout(next(self.data), keys[index]) for index in range(self.config.micro_batches)]

  def _dynamic_rollouts(self, rollout_key: jax.Array) -> DynamicSample:
    """DAPO dynamic sampling (see `dynamic_sampling.py`): the step's M batches, refills beyond them."""
    keys = jax.random.split(rollout_key, self.config.micro_batches)

    def draw(index: int) -> tuple[PipelineBatch, Rollout]:
      # The first M keys are those of a step without the switch; refill keys are folded in by index.
      key = keys[index] if index < self.config.micro_batches else jax.random.fold_in(rollout_key, index)
      batch = next(self.data)
      return batch, self._rollout(batch, key)

    return dynamic_sample(
        draw, micro_batches=self.config.micro_batches, max_refill_batches=self.grpo.max_refill_batches,
        group_size=self.grpo.group_size, model_config=self.updater.model().config)

  def _with_advantages(self, rollouts: list[Rollout]) -> tuple[list[TrainBatch], dict[str, float]]:
    """Advantages over the trained rollout batch (batch-level std sees every micro-batch); host batches."""
    totals = np.concatenate([r.rewards["total"] for r in rollouts])
    valid = np.concatenate([r.valid for r in rollouts])
    advantages = group_advantages(totals, valid, group_size=self.grpo.group_size,
                                  scaling=self.grpo.advantage_scaling, eps=self.grpo.advantage_eps)
    values = np.asarray(advantages.values)
    batches, start = [], 0
    for rollout in rollouts:
      rows = len(rollout.valid)
      batches.append(dataclasses.replace(rollout.batch, advantages=values[start:start + rows]))
      start += rows
    return batches, {k: float(v) for k, v in jax.device_get(advantages.stats).items()}

  def train_step(self) -> dict[str, float]:
    """One loop step (rollout, advantages, reference, mu updates); returns its metrics."""
    started = time.perf_counter()
    self.rng, rollout_key = jax.random.split(self.rng)
    if self.grpo.dynamic_sampling:
      dynamic = self._dynamic_rollouts(rollout_key)
      rollouts, trained, sampling_metrics = dynamic.sampled, dynamic.kept, dynamic.metrics
    else:
      rollouts = trained = self._rollouts(jax.random.split(rollout_key, self.config.micro_batches))
      sampling_metrics = {}
    host_batches, advantage_stats = self._with_advantages(trained)
    batches = [self.updater.place_batch(b) for b in host_batches]
    rollout_done = time.perf_counter()
    ref = None
    if self.updater.reference_params is not None:
      ref = jax.block_until_ready([self.updater.reference_logprobs(b) for b in batches])
    reference_done = time.perf_counter()
    update = self.updater.train_on_rollout(batches, ref)
    finished = time.perf_counter()

    metrics = rollout_metrics(rollouts)  # what the policy sampled, trained on or not
    metrics.update(sampling_metrics)
    metrics.update(advantage_stats)
    metrics.update({f"update/{k}": v for k, v in update.first.items()})
    if self.grpo.num_iterations > 1:
      metrics.update({f"update_last/{k}": v for k, v in update.last.items()})
    step_time = finished - started
    metrics.update({
        "time/rollout": rollout_done - started, "time/reference": reference_done - rollout_done,
        "time/update": finished - reference_done, "time/step": step_time,
        "throughput/tokens_per_s": metrics["completion_tokens"] / max(step_time, 1e-9),
        "optimizer_step": float(self.updater.optimizer_step),
    })
    return metrics

  # -- the loop ------------------------------------------------------------------------------------

  def save(self, data_state: Any = None, rng: jax.Array | None = None) -> None:
    """Checkpoints the state after `self.step` loop steps (data_state, rng: the iterator's position and
    the RNG then; default: as they are now). Raises NonFiniteTraining, saving nothing, when a parameter or
    optimizer-state entry is not finite."""
    if not self.updater.params_finite():
      raise NonFiniteTraining(f"parameters or optimizer state are not finite after loop step {self.step}: not "
                              f"saved; the last good checkpoint in {self.checkpoints.directory} is step "
                              f"{self._saved_step}. Lower the learning rate or check the data")
    data_state = iterator_state(self.data) if data_state is None else data_state
    self.checkpoints.save(self.step, self.updater, self.rng if rng is None else rng, {"data": data_state})
    self._saved_step = self.step

  def _check_finite(self, metrics: Mapping[str, float]) -> None:
    """Stops the run at the first update whose loss or gradient norm is NaN or infinite."""
    bad = [name for name in ("update/loss", "update/grad_norm", "update_last/loss", "update_last/grad_norm")
           if name in metrics and not np.isfinite(metrics[name])]
    if bad:
      raise NonFiniteTraining(
          f"loop step {self.step + 1}: {', '.join(f'{n}={metrics[n]}' for n in bad)}; stopped before anything "
          f"non-finite was saved (last checkpoint: step {self._saved_step}). Lower the learning rate or check "
          f"the rewards")

  def _save_on_failure(self, data_state: Any, rng: jax.Array, consistent: int) -> None:
    """A last checkpoint of the completed steps when the loop dies (error or interrupt), so no finished
    work is lost. It is written only while the parameters are exactly those the last completed step left
    (`consistent`: the updater's count of begun optimizer steps then); data position and RNG are those
    that step ended with, so a resume is exact. Otherwise the last regular checkpoint stands."""
    if self.step == self._saved_step or self.step == 0:
      return
    where = self.checkpoints.directory
    if self.updater.updates_started != consistent:
      _log.error("training stopped during loop step %d, after its update had begun: the state of step %d is "
                 "gone, so nothing is saved now; a rerun resumes from the checkpoint of step %s in %s",
                 self.step + 1, self.step, self._saved_step, where)
      return
    try:
      self.save(data_state, rng)
      self.checkpoints.wait()
      _log.warning("training stopped during loop step %d: saved the completed loop step %d to %s", self.step + 1,
                   self.step, where)
    except Exception as error:  # noqa: BLE001 - the original error is what propagates
      _log.error("training stopped during loop step %d and saving step %d failed too (%s); a rerun resumes "
                 "from the checkpoint of step %s", self.step + 1, self.step, error, self._saved_step)

  def run(self, stop: StopSignals | None = None) -> list[dict[str, float]]:
    """Trains until `num_steps` loop steps are done (resuming where a checkpoint left off).

    Returns the metrics of the steps run by this call. If a step fails, the completed steps are
    checkpointed (when the failing step had not yet changed the parameters) before the error propagates.
    stop: the signal handler to obey (default: one installed for this call). After a SIGTERM / SIGINT
    the loop finishes its step, checkpoints it and raises `TrainingInterrupted`.
    """
    writer = MetricsWriter(self.workdir, tensorboard=self.config.tensorboard, after_step=self.step)
    bar = ProgressBar(self.config.num_steps, initial=self.step, enabled=None if self.config.progress_bar else False)
    history = []
    self._saved_step = self.checkpoints.latest_step()
    # Data position, RNG and begun optimizer steps after the last completed step (a failing step has
    # already advanced the first two, maybe the third).
    data_state, step_rng, consistent = iterator_state(self.data), self.rng, self.updater.updates_started
    with contextlib.ExitStack() as scope:
      stop = stop if stop is not None else scope.enter_context(StopSignals())
      try:
        while self.step < self.config.num_steps:
          metrics = self.train_step()
          self._check_finite(metrics)
          self.step += 1
          data_state, step_rng, consistent = iterator_state(self.data), self.rng, self.updater.updates_started
          if self.eval_fn is not None and self.config.eval_every and self.step % self.config.eval_every == 0:
            metrics.update({f"eval/{k}": float(v) for k, v in self.eval_fn(self.updater.model(), self.step).items()})
          writer.write(self.step, metrics)
          bar.update(metrics)
          history.append(metrics)
          every = self.config.checkpoint_every
          if (every and self.step % every == 0) or self.step == self.config.num_steps:
            self.save(data_state)
          signum = stop.agreed()
          if signum is not None and self.step < self.config.num_steps:
            if self._saved_step != self.step:
              self.save(data_state)
            self.checkpoints.wait()
            raise TrainingInterrupted(
                f"stopped by {signal_name(signum)} after loop step {self.step} of {self.config.num_steps}; "
                f"checkpoint saved in {self.checkpoints.directory}: rerun the same command to resume", signum)
      except (TrainingInterrupted, NonFiniteTraining, CheckpointSaveFailed):
        raise  # already saved, or must not be, or cannot be
      except BaseException:
        self._save_on_failure(data_state, step_rng, consistent)
        raise
      finally:
        bar.close()
        writer.close()
        self.checkpoints.wait()
    return history
