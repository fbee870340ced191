"""The plan of one configured run on one TPU slice: compile every program, size it against the chip.

    plan = make_plan(config, "v5p-8")        # dict: programs, resident state, summary, verdict
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import ml_collections

from mmrag_jax.model import Qwen25VLConfig
from mmrag_jax.plan import analysis, programs, report
from mmrag_jax.plan.topology import GIB, load_slice

# Models above this size are balance-checked on a copy cut to `_BALANCE_DEPTH` (one-device compiles of the
# whole model would be slow, and on small-HBM chips refused).
_BALANCE_CHECK_MAX_PARAMS = 1e9


def _build(setup: programs.PlanSetup, families: Sequence[str]) -> list[programs.Program]:
  unknown = sorted(set(families) - set(programs.PROGRAM_FAMILIES))
  if unknown:
    raise ValueError(f"unknown program families {unknown}; choose from {sorted(programs.PROGRAM_FAMILIES)}")
  return [p for name in families for p in programs.PROGRAM_FAMILIES[name](setup)]


def balance_model(model: Qwen25VLConfig) -> Qwen25VLConfig:
  """`model` with its widths and 2 decoder layers and 2 vision blocks (a window and a full-attention one):
  every kind of layer once, so each program's split of work over the devices is the full model's."""
  return model.replace(text=dataclasses.replace(model.text, num_hidden_layers=2),
                       vision=dataclasses.replace(model.vision, depth=2, fullatt_block_indexes=(1,)))


def _program_flops(config: ml_collections.ConfigDict, devices: Any, families: Sequence[str],
                   model: Qwen25VLConfig | None) -> dict[str, float]:
  setup = programs.build_setup(config, devices, model=model)
  return {p.name: analysis.compile_program(p.fn, p.args)[0].flops for p in _build(setup, families)}


def flops_imbalance(config: ml_collections.ConfigDict, devices: Any, families: Sequence[str], *,
                    sharded_flops: dict[str, float] | None = None, reduced: bool = False) -> dict[str, float]:
  """Per program: FLOPs on the busiest device of the slice x devices, over the FLOPs of the same program
  compiled for one device (the whole computation, unsplit). 1.0 = every device does an equal share.

  sharded_flops: the slice's per-device FLOPs when already compiled (full model only). reduced: measure on
  `balance_model` (both compilations), for models too big to compile whole on one device.
  """
  model = balance_model(programs.model_config(config)) if reduced else None
  if sharded_flops is None or reduced:
    sharded_flops = _program_flops(config, devices, families, model)
  single = ml_collections.ConfigDict(config.to_dict())
  single.mesh.shape = (1, 1, 1)
  whole = _program_flops(single, devices[:1], families, model)
  return {name: flops * len(devices) / whole[name] for name, flops in sharded_flops.items()
          if whole.get(name, 0) > 0 and flops == flops}


def make_plan(config: ml_collections.ConfigDict, slice_name: str, *, hbm_bytes: float | None = None,
              flops_balance: bool | None = None, families: Sequence[str] | None = None) -> dict[str, Any]:
  """Compiles the run's programs for slice `slice_name` and returns the plan (see `report.py`).

  hbm_bytes: HBM per device to plan against (default: the chip table's). flops_balance: also measure each
  program's FLOPs imbalance (default: yes; models over 1B parameters are measured on `balance_model`).
  families: the program families to compile (default: all of `programs.PROGRAM_FAMILIES`).
  """
  families = tuple(programs.PROGRAM_FAMILIES) if families is None else tuple(families)
  tpu = load_slice(slice_name)
  hbm = float(hbm_bytes) if hbm_bytes is not None else tpu.per_device("hbm_bytes")
  setup = programs.build_setup(config, tpu.devices)
  resident = {name: analysis.device_bytes(tree) for name, tree in setup.resident().items()}
  built = _build(setup, families)
  compiled_programs = [analysis.compile_program(p.fn, p.args)[0] for p in built]
  imbalance: dict[str, float] = {}
  if flops_balance is None or flops_balance:
    imbalance = flops_imbalance(config, tpu.devices, families,
                                sharded_flops={p.name: c.flops for p, c in zip(built, compiled_programs)},
                                reduced=setup.num_params >= _BALANCE_CHECK_MAX_PARAMS)
  records = []
  for p, compiled in zip(built, compiled_programs):
    outside = {k: v for k, v in resident.items() if k not in p.in_resident}
    records.append(report.program_record(p.name, p.bucket, p.per_update, compiled, outside, tpu, hbm,
                                         family=p.family, loop_steps=p.loop_steps,
                                         flops_imbalance=imbalance.get(p.name)))
  g = setup.geometry
  model_flops = setup.model_flops()
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
