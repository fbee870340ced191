"""Multi-process start-up: a no-op for one process, a real 2-process group on localhost."""

import os
import socket
import subprocess
import sys
import textwrap

import jax

from mmrag_jax.parallel import maybe_initialize_distributed

_LAUNCHER_VARS = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                  "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def test_single_process_is_a_no_op(monkeypatch):
  for var in _LAUNCHER_VARS:
    monkeypatch.delenv(var, raising=False)
  assert maybe_initialize_distributed() is False
  assert not jax.distributed.is_initialized()


_WORKER = textwrap.dedent("""
    import numpy as np
    import jax
    from jax.experimental import multihost_utils
    from mmrag_jax.parallel import maybe_initialize_distributed, shutdown_distributed
    assert maybe_initialize_distributed() is True
    gathered = multihost_utils.process_allgather(np.array([jax.process_index() + 1]))
    print("RESULT", jax.process_count(), jax.device_count(), sorted(gathered.ravel().tolist()), flush=True)
    shutdown_distributed()
    assert not jax.distributed.is_initialized()
""")


def test_two_processes_form_one_group_from_environment_variables():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  base = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
  base.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
              JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2")
  workers = [subprocess.Popen([sys.executable, "-c", _WORKER], env={**base, "JAX_PROCESS_ID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [w.communicate(timeout=120) for w in workers]
  for worker, (out, err) in zip(workers, outputs):
    assert worker.returncode == 0, err[-2000:]
    assert "RESULT 2 4 [1, 2]" in out, out
