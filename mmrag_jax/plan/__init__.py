"""Ahead-of-time planning for a TPU slice: `python -m mmrag_jax.plan --config=... --topology=v5p-8`.

Compiles the configured run's jitted programs for libtpu's abstract devices of a slice (no TPU needed)
and reports per-device HBM against the chip, FLOPs, collective traffic, compile time and a roofline
prediction of the update step.
"""

from mmrag_jax.plan.analysis import CompiledProgram, collective_bytes, compile_program, device_bytes
from mmrag_jax.plan.planner import make_plan
from mmrag_jax.plan.programs import PlanSetup, Program, UpdateGeometry, abstract_train_batch, build_setup
from mmrag_jax.plan.topology import CHIPS, INSTALL_HINT, SLICES, Chip, Slice, TopologyError, load_slice

__all__ = [
    "CHIPS",
    "Chip",
    "CompiledProgram",
    "INSTALL_HINT",
    "PlanSetup",
    "Program",
    "SLICES",
    "Slice",
    "TopologyError",
    "UpdateGeometry",
    "abstract_train_batch",
    "build_setup",
    "collective_bytes",
    "compile_program",
    "device_bytes",
    "load_slice",
    "make_plan",
]
