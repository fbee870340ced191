"""Ahead-of-time planning for a TPU slice: `python -m mmrag_jax.plan --config=... --topology=v5p-8`.

Compiles the configured run's jitted programs for libtpu's abstract devices of a slice (no TPU needed)
and reports per-device HBM against the chip, FLOPs, collective traffic, compile time and a roofline
prediction of the update step:

    plan = make_plan(config, "v5p-8")                        # a dict: programs, verdict, summary
    setup = build_setup(config, load_slice("v5p-8").devices)  # PlanSetup: abstract model and optimizer
    figures, compiled = compile_program(fn, args)            # one Program's CompiledProgram figures

The slices and chips it knows are SLICES and CHIPS; an unknown slice is a TopologyError.
"""

from mmrag_jax.plan.analysis import CompiledProgram, compile_program
from mmrag_jax.plan.planner import make_plan
from mmrag_jax.plan.programs import PlanSetup, Program, build_setup
from mmrag_jax.plan.topology import CHIPS, SLICES, Slice, TopologyError, load_slice

__all__ = [
    "CHIPS", "CompiledProgram", "PlanSetup", "Program", "SLICES", "Slice", "TopologyError", "build_setup",
    "compile_program", "load_slice", "make_plan",
]
