"""Two processes on localhost (jax.distributed, CPU, 4 devices each) run the sharded update on one
(2, 2, 2) mesh spanning both, save a checkpoint together, and agree with the single-process result."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from mmrag_jax.parallel import make_mesh
from mmrag_jax.rl.checkpointing import CheckpointStore
from mmrag_jax.rl.update import PolicyUpdater

TIMEOUT_S = 300

_WORKER = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    import numpy as np
    from jax.experimental import multihost_utils
    from mmrag_jax.parallel import make_mesh, maybe_initialize_distributed, shutdown_distributed
    assert maybe_initialize_distributed()
    sys.path.insert(0, sys.argv[1])
    from conftest import new_tiny_policy, sharded_update_case
    from mmrag_jax.rl.checkpointing import CheckpointStore
    from mmrag_jax.rl.update import PolicyUpdater

    batch, config = sharded_update_case()
    mesh = make_mesh((2, 2, 2))
    updater = PolicyUpdater(new_tiny_policy(), config, mesh)
    update = updater.train_on_rollout([updater.place_batch(batch)])
    # Summed on the host in float64, as the test sums the restored parameters: equal float32 values then
    # give bit-identical squares (a float32 sum on the mesh would round in its own order).
    host_params = multihost_utils.process_allgather(updater.params, tiled=True)
    squares = [float((np.asarray(x, np.float64) ** 2).sum()) for x in jax.tree.leaves(host_params)]
    store = CheckpointStore(sys.argv[2])
    store.save(7, updater, jax.random.key_data(jax.random.key(0)), {"data": None})
    store.close()
    print("RESULT " + json.dumps({"first": update.first, "last": update.last,
                                  "squares": [float(x) for x in squares],
                                  "devices": [jax.process_count(), jax.device_count(), jax.local_device_count()]}),
          flush=True)
    shutdown_distributed()
""")


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
  checkpoint_dir = str(tmp_path_factory.mktemp("two_process_checkpoint"))
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "TPU_", "SLURM_", "OMPI_"))}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", JAX_NUM_PROCESSES="2")
  conftest_dir = os.path.dirname(os.path.abspath(__file__))
  workers = [subprocess.Popen([sys.executable, "-c", _WORKER, conftest_dir, checkpoint_dir],
                              env={**env, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True) for i in range(2)]
  try:
    outputs = [w.communicate(timeout=TIMEOUT_S) for w in workers]
  finally:
    for worker in workers:  # never leave a worker behind, also on timeout or failure
      if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
  results = []
  for worker, (out, err) in zip(workers, outputs):
    assert worker.returncode == 0, err[-3000:]
    line = [l for l in out.splitlines() if l.startswith("RESULT ")][-1]
    results.append(json.loads(line[len("RESULT "):]))
  return results, checkpoint_dir


def test_two_processes_agree_with_the_single_process_update(two_process_results, sharded_update_reference, rl_cases):
  results, _ = two_process_results
  single, single_params = sharded_update_reference
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(single_params)]
  expected_squares = np.array([(x ** 2).sum() for x in leaves])
  # The two runs sum across devices in different orders, and Adam divides each gradient by its own running
  # scale, so an element whose gradient is mostly cancellation (the key biases under RoPE) moves by a
  # slightly different fraction of its step. Allow every element 0.1% of the most the mu = 2 steps can move
  # it (mu x learning rate); by Cauchy-Schwarz a leaf's sum of squares then moves by at most
  # sqrt(n) x that x 2 x its norm (plus float32 rounding of the values themselves).
  _, config = rl_cases.sharded_update_case()
  element_tol = 1e-3 * config.num_iterations * config.learning_rate
  squares_tol = np.array([np.sqrt(x.size) * element_tol * 2 * np.sqrt(s) for x, s in zip(leaves, expected_squares)])
  for result in results:
    assert result["devices"] == [2, 8, 4]
    for name in ("loss", "kl", "entropy", "grad_norm", "clip_fraction"):
      assert result["first"][name] == pytest.approx(single.first[name], rel=1e-4, abs=1e-6), name
      assert result["last"][name] == pytest.approx(single.last[name], rel=1e-4, abs=1e-6), name
    excess = np.abs(np.array(result["squares"]) - expected_squares) - (squares_tol + 1e-6 * expected_squares)
    assert (excess <= 0).all(), {i: float(e) for i, e in enumerate(excess) if e > 0}


def test_a_two_process_checkpoint_restores_into_one_process(two_process_results, make_tiny_policy, rl_cases):
  results, checkpoint_dir = two_process_results
  _, config = rl_cases.sharded_update_case()
  updater = PolicyUpdater(make_tiny_policy(), config, make_mesh((1, 1, 1), jax.devices()[:1]))
  _, meta = CheckpointStore(checkpoint_dir).restore(updater)
  assert meta["step"] == 7 and updater.optimizer_step == 2
  squares = [float((np.asarray(x, np.float64) ** 2).sum()) for x in jax.tree.leaves(updater.params)]
  np.testing.assert_array_equal(squares, results[0]["squares"])  # the same values, summed the same way
