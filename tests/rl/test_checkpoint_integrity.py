"""Checkpoint integrity: the KL reference is saved, only committed steps count, corrupt steps are skipped
with one warning, and a failed save stops the run while the previous checkpoint stays restorable."""

import errno
import glob
import logging
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from mmrag_jax.errors import RunError
from mmrag_jax.parallel import make_mesh
from mmrag_jax.rl.checkpointing import (CheckpointCorrupted, CheckpointError, CheckpointSaveFailed, CheckpointStore,
                                        latest_committed_step)
from mmrag_jax.rl.checksums import CHECKSUMS, verify_step
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.update import PolicyUpdater

LOGGER = "mmrag_jax.rl.checkpointing"


class Toy(nnx.Module):
  """Two dense layers: a 16 KB kernel is the weight file of a step."""

  def __init__(self, seed: int):
    rngs = nnx.Rngs(seed)
    self.first = nnx.Linear(64, 64, rngs=rngs)
    self.second = nnx.Linear(64, 3, rngs=rngs)


def make_updater(beta=0.0, seed=0):
  return PolicyUpdater(Toy(seed), GRPOConfig(beta=beta), make_mesh((1, 1, 1), jax.devices()[:1]))


def host(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_equal_trees(got, want):
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)


def shift_params(updater, amount):
  """Makes the updater's parameters distinct per step."""
  updater.set_state(jax.tree.map(lambda x: x + amount, updater.params), updater.opt_state)


def save_steps(directory, steps, *, beta=0.0, max_to_keep=3):
  """Saves `steps` with distinct parameters; returns {step: host params}."""
  updater, saved = make_updater(beta), {}
  store = CheckpointStore(directory, max_to_keep=max_to_keep)
  for step in steps:
    shift_params(updater, 1.0)
    store.save(step, updater, jax.random.key_data(jax.random.key(step)), {"data": {"next_index": step}})
    saved[step] = host(updater.params)
  store.close()
  return saved


def restore_fresh(directory, beta=0.0):
  updater = make_updater(beta, seed=7)
  rng, meta = CheckpointStore(directory).restore(updater)
  return updater, np.asarray(rng), meta


def warnings_of(caplog):
  return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


# -- the KL reference ------------------------------------------------------------------------------


def test_the_kl_reference_round_trips_bit_for_bit(tmp_path):
  updater = make_updater(beta=0.1)
  # A reference unlike both the live and a fresh updater's parameters.
  updater.reference_params = jax.tree.map(lambda x: x * 3 + 0.25, updater.reference_params)
  shift_params(updater, 1.0)
  store = CheckpointStore(str(tmp_path))
  store.save(5, updater, jax.random.key_data(jax.random.key(1)), {"data": None})
  store.close()
  restored, _, meta = restore_fresh(str(tmp_path), beta=0.1)
  assert meta["step"] == 5
  assert_equal_trees(host(restored.reference_params), host(updater.reference_params))
  assert_equal_trees(host(restored.params), host(updater.params))
  for got, want in zip(jax.tree.leaves(restored.reference_params), jax.tree.leaves(restored.params)):
    assert got.sharding == want.sharding


def test_a_beta_zero_checkpoint_does_not_restore_into_a_kl_run(tmp_path):
  save_steps(str(tmp_path), [2], beta=0.0)
  with pytest.raises(CheckpointError, match="beta = 0") as raised:
    restore_fresh(str(tmp_path), beta=0.1)
  assert os.path.join(str(tmp_path), "2") in str(raised.value)
  assert not isinstance(raised.value, CheckpointCorrupted)
  assert os.path.isdir(os.path.join(str(tmp_path), "2"))  # a mismatch is not corruption: nothing moved


def test_a_kl_checkpoint_restores_into_a_beta_zero_run_without_its_reference(tmp_path):
  saved = save_steps(str(tmp_path), [2], beta=0.1)
  restored, _, meta = restore_fresh(str(tmp_path), beta=0.0)
  assert meta["step"] == 2 and restored.reference_params is None
  assert_equal_trees(host(restored.params), saved[2])


# -- committed steps -------------------------------------------------------------------------------


def test_a_step_folder_that_was_never_committed_is_no_checkpoint(tmp_path):
  save_steps(str(tmp_path), [1])
  # What a job killed during its first save leaves: orbax's tmp folder, all files, no rename.
  os.rename(tmp_path / "1", tmp_path / f"1{ocp.path.step.TMP_DIR_SUFFIX}")
  store = CheckpointStore(str(tmp_path))
  assert store.latest_step() is None and latest_committed_step(str(tmp_path)) is None
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    store.restore(make_updater())


def test_every_committed_step_carries_checksums_that_verify(tmp_path):
  save_steps(str(tmp_path), [1, 2])
  for step in (1, 2):
    assert os.path.isfile(tmp_path / str(step) / CHECKSUMS)
    assert verify_step(str(tmp_path / str(step))) is None
  assert CheckpointStore(str(tmp_path)).latest_step() == 2


# -- corruption ------------------------------------------------------------------------------------


def weight_file(step_dir):
  return max(glob.glob(os.path.join(step_dir, "state", "ocdbt.process_*", "d", "*")), key=os.path.getsize)


def overwrite(path, data_of_size):
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.write(data_of_size(size))


RANDOM = lambda size: np.random.default_rng(0).bytes(min(size, 4096))


def random_bytes_into_a_weight_file(step_dir):
  overwrite(weight_file(step_dir), RANDOM)


def a_weight_file_cut_in_half(step_dir):
  path = weight_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


def missing_tree_metadata(step_dir):
  os.remove(os.path.join(step_dir, "state", "_METADATA"))


def garbled_meta(step_dir):
  overwrite(os.path.join(step_dir, "meta", "metadata"), lambda size: b"}" * size)


def an_empty_step_folder(step_dir):
  shutil.rmtree(step_dir)
  os.mkdir(step_dir)


def garbled_ocdbt_manifest(step_dir):
  overwrite(os.path.join(step_dir, "state", "manifest.ocdbt"), RANDOM)


def garbled_meta_without_checksums(step_dir):
  # A step written before checksums existed: only restoring it can tell.
  os.remove(os.path.join(step_dir, CHECKSUMS))
  garbled_meta(step_dir)


CORRUPTIONS = [random_bytes_into_a_weight_file, a_weight_file_cut_in_half, missing_tree_metadata, garbled_meta,
               an_empty_step_folder, garbled_ocdbt_manifest, garbled_meta_without_checksums]


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
  """A directory with good steps 1 and 2, and their host parameters."""
  directory = str(tmp_path_factory.mktemp("two_steps"))
  return directory, save_steps(directory, [1, 2])


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_a_corrupt_latest_step_falls_back_to_the_previous_one_with_one_warning(two_steps, tmp_path, caplog, corrupt):
  source, saved = two_steps
  directory = str(tmp_path / "checkpoints")
  shutil.copytree(source, directory)
  corrupt(os.path.join(directory, "2"))
  with caplog.at_level(logging.WARNING, logger=LOGGER):
    restored, rng, meta = restore_fresh(directory)
  assert meta == {"step": 1, "data": {"next_index": 1}}
  assert_equal_trees(host(restored.params), saved[1])
  np.testing.assert_array_equal(rng, np.asarray(jax.random.key_data(jax.random.key(1))))
  (warning,) = warnings_of(caplog)
  assert os.path.join(directory, "2") in warning and "restored step 1" in warning
  # Set aside, so the resumed run can save step 2 again.
  assert os.path.isdir(os.path.join(directory, "2.corrupt"))
  store = CheckpointStore(directory)
  assert store.latest_step() == 1 and store.all_steps() == [1]


def test_latest_step_is_the_newest_step_that_passes_its_checksums(two_steps, tmp_path):
  source, _ = two_steps
  directory = str(tmp_path / "checkpoints")
  shutil.copytree(source, directory)
  random_bytes_into_a_weight_file(os.path.join(directory, "2"))
  assert CheckpointStore(directory).latest_step() == 1
  assert latest_committed_step(directory) == 2  # committed, not verified
  a_weight_file_cut_in_half(os.path.join(directory, "1"))
  with pytest.raises(CheckpointCorrupted, match=directory):
    CheckpointStore(directory).latest_step()


def test_all_steps_corrupt_raise_instead_of_starting_over(two_steps, tmp_path):
  source, _ = two_steps
  directory = str(tmp_path / "checkpoints")
  shutil.copytree(source, directory)
  random_bytes_into_a_weight_file(os.path.join(directory, "2"))
  garbled_meta_without_checksums(os.path.join(directory, "1"))
  store = CheckpointStore(directory)
  assert latest_committed_step(store.directory) is not None
  with pytest.raises(CheckpointCorrupted, match=directory) as raised:
    store.restore(make_updater())
  assert isinstance(raised.value, RunError)
  assert "step 2: state/ocdbt.process_0/d/" in str(raised.value) and "step 1: " in str(raised.value)
  with pytest.raises(CheckpointCorrupted, match=directory):
    store.latest_step()  # it has learned that step 1 does not restore either
  assert sorted(os.listdir(directory)) == ["1", "2"]  # nothing moved when nothing restores


# -- failed saves ----------------------------------------------------------------------------------


def full_disk(monkeypatch):
  """From now on, writing a checkpoint's JSON (in orbax's background commit) fails with ENOSPC."""

  async def no_space(self, item, directory):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", no_space)


def test_a_failed_background_save_stops_at_the_next_call_and_keeps_the_previous_step(tmp_path, monkeypatch):
  updater = make_updater()
  store = CheckpointStore(str(tmp_path), max_to_keep=1)
  store.save(1, updater, jax.random.key_data(jax.random.key(1)), {"data": None})
  store.wait()
  kept = host(updater.params)
  full_disk(monkeypatch)
  shift_params(updater, 1.0)
  store.save(2, updater, jax.random.key_data(jax.random.key(2)), {"data": None})  # fails in the background
  with pytest.raises(CheckpointSaveFailed, match="step 2") as raised:
    store.save(3, updater, jax.random.key_data(jax.random.key(3)), {"data": None})
  assert "No space left on device" in str(raised.value) and "step 1 is the latest" in str(raised.value)
  assert isinstance(raised.value, RunError)
  store.wait()  # raised once
  monkeypatch.undo()
  assert store.latest_step() == 1 and latest_committed_step(str(tmp_path)) == 1  # max_to_keep=1 kept step 1
  restored, _, meta = restore_fresh(str(tmp_path))
  assert meta["step"] == 1
  assert_equal_trees(host(restored.params), kept)


def test_a_failed_save_surfaces_from_wait(tmp_path, monkeypatch):
  save_steps(str(tmp_path), [1])
  full_disk(monkeypatch)
  store = CheckpointStore(str(tmp_path))
  store.save(2, make_updater(), jax.random.key_data(jax.random.key(2)), {"data": None})
  with pytest.raises(CheckpointSaveFailed, match=r"step 2 .*No space left on device"):
    store.wait()


def test_a_synchronous_store_raises_from_the_failing_save(tmp_path, monkeypatch):
  full_disk(monkeypatch)
  store = CheckpointStore(str(tmp_path), async_save=False)
  with pytest.raises(CheckpointSaveFailed, match=r"step 1 .*No space left on device.*no earlier checkpoint"):
    store.save(1, make_updater(), jax.random.key_data(jax.random.key(1)), {"data": None})
  # A first save that never committed: no checkpoint, so nothing to resume.
  assert glob.glob(str(tmp_path / f"1{ocp.path.step.TMP_DIR_SUFFIX}*"))
  assert store.latest_step() is None and latest_committed_step(store.directory) is None


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")  # the meta write, never started
def test_a_save_failing_before_the_background_write_names_the_step(tmp_path, monkeypatch):
  saved = save_steps(str(tmp_path), [1])

  def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", no_space)
  store = CheckpointStore(str(tmp_path))
  with pytest.raises(CheckpointSaveFailed, match=r"step 2 .*No space left on device"):
    store.save(2, make_updater(), jax.random.key_data(jax.random.key(2)), {"data": None})
  monkeypatch.undo()
  restored, _, meta = restore_fresh(str(tmp_path))
  assert meta["step"] == 1
  assert_equal_trees(host(restored.params), saved[1])


class WiderToy(nnx.Module):
  """Toy with another structure: a checkpoint of Toy does not fit it."""

  def __init__(self, seed: int):
    rngs = nnx.Rngs(seed)
    self.first = nnx.Linear(64, 32, rngs=rngs)
    self.second = nnx.Linear(32, 3, rngs=rngs)


# orbax's restore leaves its failed read coroutines to be collected: noise, not this behaviour.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sound_checkpoint_of_other_settings_is_an_error_not_corruption(tmp_path):
  save_steps(str(tmp_path), [1, 2])
  other = PolicyUpdater(WiderToy(0), GRPOConfig(), make_mesh((1, 1, 1), jax.devices()[:1]))
  with pytest.raises(CheckpointError, match="passed its checksums but does not fit this run") as error:
    CheckpointStore(str(tmp_path)).restore(other)
  assert not isinstance(error.value, CheckpointCorrupted)
  assert sorted(os.listdir(tmp_path)) == ["1", "2"]  # nothing moved aside
  updater, _, meta = restore_fresh(str(tmp_path))  # the run with the right settings still resumes
  assert meta["step"] == 2
