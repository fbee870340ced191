"""Resume continues exactly what an uninterrupted run does, whatever interrupted it.

A small stage-1 training (format warm-up, then GRPO with a KL term to the warmed-up reference and mu = 2
updates per rollout batch) is run once straight through, then interrupted at each point below and rerun;
the rerun's metric rows and final parameters must equal the straight run's bit for bit:

- after the warm-up and two checkpointed steps (the KL reference must be the warmed-up policy, restored
  from the checkpoint, not the base checkpoint the rerun loads);
- killed while its first checkpoint was being written (only orbax's uncommitted folder is left: the rerun
  must start over, warm-up included);
- failing between the two updates of a step (the parameters already hold half the step: no checkpoint
  may be written from them);
- SIGTERM during a step (the step finishes, is checkpointed, and the run stops with TrainingInterrupted).
"""

from __future__ import annotations

import copy
import os
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from mmrag_jax.recipe.context import RunDir, load_model, read_split, resolve_mesh
from mmrag_jax.recipe.demo import prepare_demo_inputs
from mmrag_jax.recipe.settings import settings
from mmrag_jax.recipe.stage1 import train_stage1
from mmrag_jax.rl.interrupts import TrainingInterrupted
from mmrag_jax.rl.metrics_log import read_metrics
from mmrag_jax.rl.trainer import GRPOTrainer
from mmrag_jax.rl.update import PolicyUpdater
from tests.recipe.conftest import load_config

NUM_STEPS, CHECKPOINT_EVERY = 4, 2
VOLATILE = ("time/", "throughput/")


class Killed(BaseException):
  """Stands for SIGKILL: nothing of the run's own error handling may run after it."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """(data dir, model dir) shared by every run: a synthetic WebQA and a tiny random checkpoint."""
  config = load_config("stage1", "demo")
  config.data.synthetic_sizes = (8, 4, 2)
  prepare_demo_inputs(config, str(tmp_path_factory.mktemp("inputs")))
  return config.data.data_dir, config.model.path


def small_config(inputs):
  data_dir, model_dir = inputs
  c = load_config("stage1", "demo")
  c.data.data_dir, c.data.synthetic = data_dir, False
  c.model.path, c.model.build_tiny = model_dir, False
  c.train.num_steps, c.train.checkpoint_every = NUM_STEPS, CHECKPOINT_EVERY
  c.train.batch_size, c.train.progress_bar = 8, False
  c.warmup.steps = 3
  c.rl.beta, c.rl.num_iterations = 0.05, 2
  return c


def train(inputs, workdir):
  """Stage-1 training in `workdir` -> (metric rows without timings, warm-up rows, final params)."""
  s = settings(copy.deepcopy(small_config(inputs)))
  run = RunDir(str(workdir), resolve_mesh(tuple(s.source.mesh.shape)))
  result = train_stage1(load_model(s.model_path, s.model, run.mesh), s.model_path, read_split(s.data, "train"), s, run)
  params = [np.asarray(x) for x in jax.tree.leaves(nnx.state(result.model, nnx.Param))]
  rows = [{k: v for k, v in row.items() if not k.startswith(VOLATILE)} for row in result.history]
  return rows, _warmup_rows(workdir), params


def _warmup_rows(workdir):
  return read_metrics(os.path.join(workdir, "warmup"))


def _metric_steps(workdir):
  return [row["step"] for row in read_metrics(workdir)]


def before_step(step, act):
  """`GRPOTrainer.train_step` that calls `act()` when loop step `step` (counted in this run) begins."""
  original, calls = GRPOTrainer.train_step, []

  def train_step(self):
    calls.append(1)
    if len(calls) == step:
      act()
    return original(self)

  return train_step


@pytest.fixture(scope="module")
def straight(inputs, tmp_path_factory):
  return train(inputs, tmp_path_factory.mktemp("straight"))


def assert_same_run(got, want):
  rows, warmup_rows, params = got
  assert [r["step"] for r in rows] == list(range(1, NUM_STEPS + 1))
  assert rows == want[0]
  assert [r["step"] for r in warmup_rows] == [r["step"] for r in want[1]]
  assert len(params) == len(want[2])
  for a, b in zip(params, want[2]):
    np.testing.assert_array_equal(a, b)


def test_the_straight_run_uses_the_kl_term_and_both_updates(straight):
  rows, warmup_rows, _ = straight
  assert len(warmup_rows) == 3
  assert all(r["update/kl"] is not None for r in rows)
  assert any(r["update/kl"] > 0 for r in rows)  # the policy moved away from its reference
  assert all(r["update_last/ratio"] is not None for r in rows)


def test_resume_after_the_warm_up_keeps_the_warmed_up_reference(inputs, straight, tmp_path, monkeypatch):
  def worker_lost():
    raise RuntimeError("rollout worker lost")  # before any update of step 3

  monkeypatch.setattr(GRPOTrainer, "train_step", before_step(3, worker_lost))
  with pytest.raises(RuntimeError, match="rollout worker lost"):
    train(inputs, tmp_path)
  monkeypatch.undo()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  assert_same_run(train(inputs, tmp_path), straight)


def test_a_kill_during_the_first_save_starts_over_with_the_warm_up(inputs, straight, tmp_path, monkeypatch):
  original = GRPOTrainer.save

  def killed_while_saving(self, *args, **kwargs):
    original(self, *args, **kwargs)
    self.checkpoints.wait()
    # What a killed save leaves: the step's folder under orbax's temporary name, never committed.
    step_dir = os.path.join(self.checkpoints.directory, str(self.step))
    os.rename(step_dir, step_dir + ".orbax-checkpoint-tmp")
    raise Killed()

  monkeypatch.setattr(GRPOTrainer, "save", killed_while_saving)
  monkeypatch.setattr(GRPOTrainer, "_save_on_failure", lambda *args: None)
  with pytest.raises(Killed):
    train(inputs, tmp_path)
  monkeypatch.undo()
  assert _metric_steps(tmp_path) == [1, 2]  # rows of steps whose checkpoint never committed
  assert_same_run(train(inputs, tmp_path), straight)
  assert _metric_steps(tmp_path) == list(range(1, NUM_STEPS + 1))


def test_a_failure_between_the_updates_of_a_step_saves_nothing_from_it(inputs, straight, tmp_path, monkeypatch):
  original = PolicyUpdater.optimizer_update
  grpo_updates = []

  def fails_in_the_second_update_of_step_4(self, *args, **kwargs):
    if self.config.num_iterations == 2:  # the GRPO updater (the warm-up's has mu = 1)
      grpo_updates.append(1)
      if len(grpo_updates) == 2 * 3 + 2:
        raise RuntimeError("device lost")
    return original(self, *args, **kwargs)

  monkeypatch.setattr(PolicyUpdater, "optimizer_update", fails_in_the_second_update_of_step_4)
  with pytest.raises(RuntimeError, match="device lost"):
    train(inputs, tmp_path)
  monkeypatch.undo()
  # Step 3 completed but its state is gone (update 1 of step 4 changed the parameters): step 2 stands.
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  assert _metric_steps(tmp_path) == [1, 2, 3]
  assert_same_run(train(inputs, tmp_path), straight)


def test_sigterm_finishes_the_step_checkpoints_it_and_stops(inputs, straight, tmp_path, monkeypatch):
  # Arrives mid-step, as a preemption notice does.
  monkeypatch.setattr(GRPOTrainer, "train_step", before_step(3, lambda: os.kill(os.getpid(), signal.SIGTERM)))
  with pytest.raises(TrainingInterrupted, match="SIGTERM after loop step 3") as stopped:
    train(inputs, tmp_path)
  monkeypatch.undo()
  assert stopped.value.exit_code == 143
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
  assert_same_run(train(inputs, tmp_path), straight)


def test_a_nan_loss_stops_the_run_before_it_reaches_a_checkpoint(inputs, tmp_path, monkeypatch):
  from mmrag_jax.rl.interrupts import NonFiniteTraining

  original = PolicyUpdater.train_on_rollout
  rollouts = []

  def nan_in_step_3(self, batches, ref_logprobs=None):
    rollouts.append(1)
    result = original(self, batches, ref_logprobs)
    if len(rollouts) == 3:
      result.first["loss"] = float("nan")
    return result

  monkeypatch.setattr(PolicyUpdater, "train_on_rollout", nan_in_step_3)
  with pytest.raises(NonFiniteTraining, match="loop step 3: update/loss=nan"):
    train(inputs, tmp_path)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  assert not os.path.exists(tmp_path / "export")
