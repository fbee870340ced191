"""Multi-host start-up: `jax.distributed.initialize()` when, and only when, there are several processes."""

from __future__ import annotations

import logging
import os

import jax

__all__ = ["maybe_initialize_distributed", "shutdown_distributed"]

_log = logging.getLogger(__name__)

def _multi_process_launcher() -> bool:
  """Whether a launcher started several processes (jax's auto-detection then finds its settings)."""
  # TPU pod slices list their workers; multi-slice TPU sets a megascale coordinator.
  hostnames = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if "," in hostnames or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return True
  for count_var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if int(os.environ.get(count_var, "1") or 1) > 1:
      return True
  return False


def maybe_initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
  """Starts the jax process group on multi-host runs; a no-op for a single process.

  Call it first thing, before any other jax call. Explicit arguments win; else the environment variables
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; else, under a multi-process launcher
  (TPU pod slice or multi-slice, SLURM, Open MPI), jax's own cluster auto-detection.
  Returns True when the process group is (now) initialized.
  """
  if jax.distributed.is_initialized():
    return True
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if coordinator_address:
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
      num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
      process_id = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif _multi_process_launcher():
    jax.distributed.initialize()
  else:
    return False
  _log.info("jax.distributed initialized: process %d of %d", jax.process_index(), jax.process_count())
  return True


def shutdown_distributed() -> None:
  """Leaves the process group at the normal end of a run; a no-op for a single process.

  jax's own exit hook leaves the group only after tearing down the backends; leaving here, while every
  process is alive and at the same point, spares a process from waiting on a peer that is already
  exiting (seen once as a hang at exit on localhost). Skip it on failures: a failed process should exit
  without waiting for its peers.
  """
  if jax.distributed.is_initialized():
    jax.distributed.shutdown()
