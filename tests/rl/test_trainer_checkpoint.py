"""A training checkpoint written on a (2, 2, 2) mesh restores onto other mesh shapes, exactly."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from mmrag_jax.parallel import logical_to_mesh_spec, make_mesh
from mmrag_jax.parallel.sharding import variable_logical_axes
from mmrag_jax.rl.checkpointing import CheckpointStore
from mmrag_jax.rl.update import PolicyUpdater


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, make_tiny_policy, rl_cases):
  """(directory, params, optimizer state, rng) after one rollout update on a (2, 2, 2) mesh."""
  batch, config = rl_cases.sharded_update_case()
  updater = PolicyUpdater(make_tiny_policy(), config, make_mesh((2, 2, 2)))
  updater.train_on_rollout([updater.place_batch(batch)])
  directory = str(tmp_path_factory.mktemp("mesh_checkpoint"))
  store = CheckpointStore(directory)
  rng = jax.random.key_data(jax.random.key(42))
  store.save(3, updater, rng, {"data": {"next_index": 24}})
  store.close()
  host = lambda tree: jax.tree.leaves(jax.tree.map(np.asarray, tree))
  return directory, host(updater.params), host(updater.opt_state), np.asarray(rng), config


@pytest.mark.parametrize("shape", [(4, 1, 2), (1, 1, 1)])
def test_restore_onto_another_mesh_shape(checkpoint, make_tiny_policy, shape):
  directory, params, opt_state, rng, config = checkpoint
  mesh = make_mesh(shape, jax.devices()[:int(np.prod(shape))])
  updater = PolicyUpdater(make_tiny_policy(seed=5), config, mesh)
  restored_rng, meta = CheckpointStore(directory).restore(updater)
  assert meta == {"step": 3, "data": {"next_index": 24}}
  np.testing.assert_array_equal(np.asarray(restored_rng), rng)
  assert updater.optimizer_step == config.num_iterations
  for got, want in zip(jax.tree.leaves(updater.params), params):
    np.testing.assert_array_equal(np.asarray(got), want)
  for got, want in zip(jax.tree.leaves(updater.opt_state), opt_state):
    np.testing.assert_array_equal(np.asarray(got), want)
  # Restored arrays sit on the new mesh with the rule shardings.
  for path, variable in nnx.to_flat_state(updater.params):
    value = variable.get_value()
    spec = logical_to_mesh_spec(variable_logical_axes(variable), shape=value.shape, mesh=mesh)
    assert value.sharding == NamedSharding(mesh, spec), path


def test_restore_without_a_checkpoint_names_the_directory(tmp_path, make_tiny_policy, rl_cases):
  _, config = rl_cases.sharded_update_case()
  updater = PolicyUpdater(make_tiny_policy(), config, make_mesh((1, 1, 1), jax.devices()[:1]))
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    CheckpointStore(str(tmp_path)).restore(updater)
