"""The GRPO loop end to end on a toy task: the real sampler, a text reward, the update, checkpoints.

Toy task: reward 1 when the completion contains the string of one target token. A near-uniform tiny
policy over 512 tokens writes it in ~3% of 16-token completions; GRPO must raise that above 80%.
"""

import dataclasses
import glob
import os
import struct

import grain
import jax
import numpy as np
import pytest
from absl import flags
from tensorboardX.proto import event_pb2

from mmrag_jax.data.batching import PipelineBatch
from mmrag_jax.parallel import make_mesh
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.metrics_log import read_metrics
from mmrag_jax.rl.trainer import GRPOTrainer, TrainerConfig
from mmrag_jax.sampling import Categorical, SamplerConfig, prompt_batch
from tests.rl.conftest import TINY

TARGET = 137
PROMPTS, PROMPT_LENGTH, BATCH = 16, 6, 8
GRPO = GRPOConfig(group_size=8, max_new_tokens=16, learning_rate=2e-2, max_grad_norm=1.0, total_steps=1000)
SAMPLER = SamplerConfig(max_new_tokens=16, method=Categorical(temperature=1.0))
TIME_KEYS = ("time/", "throughput/")


def detokenize(ids):
  return " ".join(f"<{i}>" for i in ids)


def contains_target(completions, metadata):
  assert len(metadata["prompt_index"]) == len(completions)  # per-prompt metadata, repeated per sample
  return {"total": np.array([float(f"<{TARGET}>" in text) for text in completions], np.float32)}


def pipeline_batch(rows):
  """grain batch_fn: rows of fixed text prompts -> the `PipelineBatch` the trainer takes."""
  prompts = prompt_batch({"input_ids": np.stack([r["input_ids"] for r in rows])}, TINY)
  return PipelineBatch(prompts=prompts, meta={"prompt_index": np.array([r["prompt_index"] for r in rows], np.int32)})


def prompt_dataset():
  """Shuffled, repeating batches of 8 fixed prompts (a grain iterator: its position is checkpointable)."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  ids = np.random.default_rng(0).integers(0, 400, (PROMPTS, PROMPT_LENGTH)).astype(np.int32)
  rows = [{"input_ids": ids[i], "attention_mask": np.ones(PROMPT_LENGTH, np.int32), "prompt_index": np.int32(i)}
          for i in range(PROMPTS)]
  return grain.MapDataset.source(rows).shuffle(seed=1).repeat().batch(BATCH, batch_fn=pipeline_batch).to_iter_dataset()


def head_sum(model, step):
  """An eval hook whose value depends on the parameters it is given."""
  return {"head_sum": float(np.asarray(model.lm_head.kernel[...]).sum()), "step_seen": step}


def make_trainer(make_tiny_policy, workdir, num_steps, **config):
  config = {"progress_bar": False, "eval_every": 1, **config}
  return GRPOTrainer(make_tiny_policy(init_std=0.02, seed=1), GRPO, SAMPLER,
                     TrainerConfig(num_steps=num_steps, **config),
                     mesh=make_mesh((1, 1, 1), jax.devices()[:1]), workdir=str(workdir),
                     data=iter(prompt_dataset()), reward_fn=contains_target, detokenize=detokenize, eval_fn=head_sum)


def test_mean_reward_rises_from_below_0_2_to_above_0_8(make_tiny_policy, tmp_path):
  trainer = make_trainer(make_tiny_policy, tmp_path, num_steps=60, tensorboard=False)
  rewards = []
  for _ in range(60):
    rewards.append(trainer.train_step()["reward/total"])
    if rewards[-1] > 0.8:
      break
  assert rewards[0] < 0.2
  assert rewards[-1] > 0.8, rewards


def without_timings(row):
  return {k: v for k, v in row.items() if not k.startswith(TIME_KEYS)}


@pytest.fixture(scope="module")
def straight_run(make_tiny_policy, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  trainer = make_trainer(make_tiny_policy, workdir, num_steps=2, checkpoint_every=1, max_to_keep=1,
                         progress_bar=True)
  trainer.run()
  return workdir, jax.tree.map(np.asarray, trainer.updater.params)


def test_resumed_run_equals_an_uninterrupted_run(make_tiny_policy, straight_run, tmp_path):
  straight_dir, straight_params = straight_run
  make_trainer(make_tiny_policy, tmp_path, num_steps=1).run()
  resumed = make_trainer(make_tiny_policy, tmp_path, num_steps=2)
  assert resumed.step == 1
  resumed.run()
  expected, got = read_metrics(straight_dir), read_metrics(tmp_path)
  assert [row["step"] for row in got] == [1, 2]
  assert [without_timings(r) for r in got] == [without_timings(r) for r in expected]
  for a, b in zip(jax.tree.leaves(jax.tree.map(np.asarray, resumed.updater.params)), jax.tree.leaves(straight_params)):
    np.testing.assert_array_equal(a, b)


def test_checkpoints_keep_the_latest_and_a_finished_run_does_nothing(make_tiny_policy, straight_run):
  workdir, _ = straight_run
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]  # max_to_keep=1
  again = make_trainer(make_tiny_policy, workdir, num_steps=2)
  assert again.step == 2 and again.run() == []


def read_event_scalars(path):
  """TensorBoard scalars of one event file, parsed from its TFRecord framing: {tag: [(step, value)]}."""
  scalars = {}
  with open(path, "rb") as f:
    data = f.read()
  offset = 0
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
    offset += 12 + length + 4  # length, its crc, payload, payload crc
    for value in event.summary.value:
      scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_metrics_go_to_jsonl_and_tensorboard(straight_run):
  workdir, _ = straight_run
  rows = read_metrics(workdir)
  assert [row["step"] for row in rows] == [1, 2]
  for key in ("reward/total", "update/loss", "update/clip_fraction", "update/entropy", "update/grad_norm",
              "update/sampler_logprob_abs_diff", "advantage_std", "zero_variance_group_fraction",
              "completion_length", "truncation_rate", "time/rollout", "time/reference", "time/update",
              "throughput/tokens_per_s"):
    assert all(row[key] is not None for row in rows), key
  assert [row["eval/step_seen"] for row in rows] == [1, 2]
  assert rows[0]["eval/head_sum"] != rows[1]["eval/head_sum"]  # the hook sees the updated policy
  # The sampler's log-probs are the policy's: the trainer recomputes them to float32 rounding.
  assert max(row["update/sampler_logprob_abs_diff"] for row in rows) < 1e-4
  scalars = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for tag, points in read_event_scalars(path).items():
      scalars.setdefault(tag, []).extend(points)
  assert [step for step, _ in scalars["reward/total"]] == [1, 2]
  np.testing.assert_allclose([v for _, v in scalars["update/loss"]], [row["update/loss"] for row in rows], rtol=1e-6)


def assert_resumes_from_step_1_like(straight_run, make_tiny_policy, workdir):
  """A rerun in `workdir` resumes after step 1 and ends with the straight run's metric rows and parameters."""
  straight_dir, straight_params = straight_run
  resumed = make_trainer(make_tiny_policy, workdir, num_steps=2)
  assert resumed.step == 1
  resumed.run()
  assert [without_timings(r) for r in read_metrics(workdir)] == [without_timings(r) for r in read_metrics(straight_dir)]
  for a, b in zip(jax.tree.leaves(jax.tree.map(np.asarray, resumed.updater.params)), jax.tree.leaves(straight_params)):
    np.testing.assert_array_equal(a, b)


def test_a_failing_step_leaves_a_checkpoint_that_resumes_exactly(make_tiny_policy, straight_run, tmp_path):
  calls = []

  def fails_in_step_2(completions, metadata):
    calls.append(1)
    if len(calls) == 2:
      raise RuntimeError("reward server down")
    return contains_target(completions, metadata)

  trainer = make_trainer(make_tiny_policy, tmp_path, num_steps=2)  # checkpoint_every=0: only at the end
  trainer.reward_fn = fails_in_step_2
  with pytest.raises(RuntimeError, match="reward server down"):
    trainer.run()
  assert sorted(os.listdir(os.path.join(tmp_path, "checkpoints"))) == ["1"]
  assert_resumes_from_step_1_like(straight_run, make_tiny_policy, tmp_path)


def test_a_diverging_run_stops_before_anything_non_finite_is_saved(make_tiny_policy, tmp_path):
  from mmrag_jax.rl.checkpointing import CheckpointStore
  from mmrag_jax.rl.interrupts import NonFiniteTraining
  from mmrag_jax.rl.update import PolicyUpdater

  diverging = dataclasses.replace(GRPO, learning_rate=1e38)
  trainer = GRPOTrainer(make_tiny_policy(init_std=0.02, seed=1), diverging, SAMPLER,
                        TrainerConfig(num_steps=6, checkpoint_every=1, progress_bar=False, tensorboard=False),
                        mesh=make_mesh((1, 1, 1), jax.devices()[:1]), workdir=str(tmp_path),
                        data=iter(prompt_dataset()), reward_fn=contains_target, detokenize=detokenize)
  with pytest.raises(NonFiniteTraining, match=r"loop step \d") as stopped:
    trainer.run()
  assert "learning rate" in str(stopped.value)
  rows = read_metrics(tmp_path)
  assert all(row["update/loss"] is not None for row in rows)  # no NaN row was written
  store = CheckpointStore(os.path.join(tmp_path, "checkpoints"))
  for step in store.all_steps():
    updater = PolicyUpdater(make_tiny_policy(init_std=0.02, seed=1), diverging, trainer.mesh)
    store.restore(updater, step)
    assert updater.params_finite(), step


def test_a_full_disk_stops_at_the_first_failed_save_and_the_earlier_checkpoint_resumes(
    make_tiny_policy, straight_run, tmp_path, monkeypatch):
  import errno

  import orbax.checkpoint as ocp

  from mmrag_jax.rl.checkpointing import CheckpointSaveFailed

  original = GRPOTrainer.save

  def disk_full_from_step_2(self, *args, **kwargs):
    if self.step == 2:
      def no_space(*_, **__):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

      monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", no_space)
    return original(self, *args, **kwargs)

  monkeypatch.setattr(GRPOTrainer, "save", disk_full_from_step_2)
  with pytest.raises(CheckpointSaveFailed, match="step 2 .*No space left on device.*step 1 is the latest"):
    make_trainer(make_tiny_policy, tmp_path, num_steps=2, checkpoint_every=1).run()
  monkeypatch.undo()
  assert_resumes_from_step_1_like(straight_run, make_tiny_policy, tmp_path)
