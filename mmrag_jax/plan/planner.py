"""The plan of one configured run on one TPU slice: compile every program, size it against the chip.

    plan = make_plan(config, "v5p-8")        # dict: programs, resident state, summary, verdict
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import ml_collections

from mmrag_jax.plan import analysis, programs, report
from mmrag_jax.plan.topology import GIB, load_slice

# Balance check by default only where a second, one-device compilation is cheap.
_BALANCE_CHECK_MAX_PARAMS = 1e9


def _build(setup: programs.PlanSetup, families: Sequence[str]) -> list[programs.Program]:
  unknown = sorted(set(families) - set(programs.PROGRAM_FAMILIES))
  if unknown:
    raise ValueError(f"unknown program families {unknown}; choose from {sorted(programs.PROGRAM_FAMILIES)}")
  return [p for name in families for p in programs.PROGRAM_FAMILIES[name](setup)]


def _single_device_flops(config: ml_collections.ConfigDict, devices: Any, families: Sequence[str]
                         ) -> dict[str, float]:
  """Each program's FLOPs compiled for one device: the whole computation, unsplit."""
  single = ml_collections.ConfigDict(config.to_dict())
  single.mesh.shape = (1, 1, 1)
  setup = programs.build_setup(single, devices[:1])
  return {p.name: analysis.compile_program(p.fn, p.args)[0].flops for p in _build(setup, families)}


def make_plan(config: ml_collections.ConfigDict, slice_name: str, *, hbm_bytes: float | None = None,
              flops_balance: bool | None = None, families: Sequence[str] | None = None) -> dict[str, Any]:
  """Compiles the run's programs for slice `slice_name` and returns the plan (see `report.py`).

  hbm_bytes: HBM per device to plan against (default: the chip table's). flops_balance: also compile on one
  device to compare per-device FLOPs with the whole program's (default: for models under 1B parameters).
  families: the program families to compile (default: all of `programs.PROGRAM_FAMILIES`).
  """
  families = tuple(programs.PROGRAM_FAMILIES) if families is None else tuple(families)
  tpu = load_slice(slice_name)
  hbm = float(hbm_bytes) if hbm_bytes is not None else tpu.per_device("hbm_bytes")
  setup = programs.build_setup(config, tpu.devices)
  resident = {name: analysis.device_bytes(tree) for name, tree in setup.resident().items()}
  built = _build(setup, families)
  if flops_balance is None:
    flops_balance = setup.num_params < _BALANCE_CHECK_MAX_PARAMS
  whole = _single_device_flops(config, tpu.devices, families) if flops_balance else {}
  records = []
  for p in built:
    compiled, _ = analysis.compile_program(p.fn, p.args)
    compiled = dataclasses.replace(compiled, global_flops=whole.get(p.name, float("nan")))
    outside = {k: v for k, v in resident.items() if k not in p.in_resident}
    records.append(report.program_record(p.name, p.bucket, p.per_update, compiled, outside, tpu, hbm,
                                         family=p.family, loop_steps=p.loop_steps))
  g = setup.geometry
  model_flops = 6.0 * setup.num_params * g.tokens * g.micro_batches
  return {
      "config": {"preset": config.preset, "stage": config.stage, "mesh_shape": list(setup.mesh.devices.shape),
                 "remat": setup.model.remat, "dtype": setup.model.dtype, "param_dtype": setup.model.param_dtype,
                 "batch_size": g.rows, "micro_batches": g.micro_batches, "prompt_length": g.prompt_length,
                 "completion_length": g.completion_length, "num_patches": g.num_patches},
      "chip": {**dataclasses.asdict(tpu.chip), "devices_per_chip": tpu.devices_per_chip, "hbm_bytes_planned": hbm},
      "num_params": setup.num_params, "num_trainable_params": setup.num_trainable,
      "resident_bytes": resident, "resident_gib": sum(resident.values()) / GIB,
      "model_flops_per_update": model_flops,
      "programs": records,
      "families": list(families),
      "verdict": report.verdict(records),
      "summary": report.summary(records, tpu, model_flops),
  }
