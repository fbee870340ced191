"""The plan of one configured run on one TPU slice: compile every program, size it against the chip.

    plan = make_plan(config, "v5p-8")        # dict: programs, resident state, summary, verdict
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from mmrag_jax.model import Qwen25VLConfig
from mmrag_jax.parallel import resolve_mesh_shape
from mmrag_jax.plan import analysis, programs, report
from mmrag_jax.plan.topology import GIB, Slice, TopologyError, load_slice

# One device of this topology (a v5p chip, 95 GiB) holds the balance checks the slice's own chip cannot.
_LARGE_CHIP = "v5p:2x2x1"
_log = logging.getLogger(__name__)


def _build(setup: programs.PlanSetup, families: Sequence[str]) -> list[programs.Program]:
  unknown = sorted(set(families) - set(programs.PROGRAM_FAMILIES))
  if unknown:
    raise ValueError(f"unknown program families {unknown}; choose from {sorted(programs.PROGRAM_FAMILIES)}")
  return [p for name in families for p in programs.PROGRAM_FAMILIES[name](setup)]


def probe_model(model: Qwen25VLConfig, text_layers: int) -> Qwen25VLConfig:
  """`model` at its widths with `text_layers` decoder layers (unrolled) and 2 vision blocks (a window and a
  full-attention one): every kind of layer, each seen by XLA's cost analysis."""
  return model.replace(text=dataclasses.replace(model.text, num_hidden_layers=text_layers),
                       vision=dataclasses.replace(model.vision, depth=2, fullatt_block_indexes=(1,)),
                       unroll_layers=True)


def _compile_all(config: ml_collections.ConfigDict, devices: Any, families: Sequence[str],
                 model: Qwen25VLConfig) -> dict[str, analysis.CompiledProgram]:
  setup = programs.build_setup(config, devices, model=model)
  return {p.name: analysis.compile_program(p.fn, p.args)[0] for p in _build(setup, families)}


def layer_corrected(full: analysis.CompiledProgram, one: analysis.CompiledProgram, two: analysis.CompiledProgram,
                    layers: int) -> analysis.CompiledProgram:
  """The cost figures of a program whose decoder layers run under a scan, every layer counted.

  XLA's cost analysis counts a loop body once, so the scanned program reads as one layer plus the rest;
  this adds (layers - 1) x one layer's FLOPs, bytes and collective bytes, measured as the difference of the
  unrolled 2- and 1-layer probes (`probe_model`). Memory figures are the scanned program's own.
  """
  if any(c.error is not None for c in (full, one, two)):
    return full
  extra = layers - 1
  return dataclasses.replace(
      full, flops=full.flops + extra * (two.flops - one.flops),
      bytes_accessed=full.bytes_accessed + extra * (two.bytes_accessed - one.bytes_accessed),
      collectives={k: int(v + extra * (two.collectives[k] - one.collectives[k])) for k, v in full.collectives.items()})


def flops_imbalance(config: ml_collections.ConfigDict, tpu: Slice, families: Sequence[str]) -> dict[str, float]:
  """Per program: FLOPs of the busiest device x devices over the FLOPs of the same program compiled for one
  device (the whole computation, unsplit). 1.0 = every device does an equal share.

  Measured on the 2-layer `probe_model` with G x (data-parallel devices) rows at most (one prompt per device,
  so that one device can hold the whole batch): how a program splits depends on the layer kinds and the row
  layout, not on depth. A one-device compilation the chip's HBM refuses is redone for one v5p chip (95 GiB).
  """
  model = probe_model(programs.model_config(config), 2)
  small = ml_collections.ConfigDict(config.to_dict())
  data, fsdp, _ = resolve_mesh_shape(tuple(config.mesh.shape), len(tpu.devices))
  small.train.batch_size = min(config.train.batch_size, config.rl.group_size * data * fsdp)
  sharded = _compile_all(small, tpu.devices, families, model)
  single = ml_collections.ConfigDict(small.to_dict())
  single.mesh.shape = (1, 1, 1)
  whole = _compile_all(single, tpu.devices[:1], families, model)
  if any(c.error is not None for c in whole.values()):
    try:
      large = _compile_all(single, load_slice(_LARGE_CHIP).devices[:1], families, model)
      whole = {name: large[name] if c.error is not None else c for name, c in whole.items()}
    except (TopologyError, jax.errors.JaxRuntimeError) as error:  # then those programs stay unmeasured
      _log.warning("no one-device compilation for the FLOPs balance of %s: %s",
                   [n for n, c in whole.items() if c.error is not None], error)
  return {name: c.flops * len(tpu.devices) / whole[name].flops for name, c in sharded.items()
          if c.error is None and whole[name].error is None and whole[name].flops > 0}


def make_plan(config: ml_collections.ConfigDict, slice_name: str, *, hbm_bytes: float | None = None,
              flops_balance: bool | None = None, families: Sequence[str] | None = None) -> dict[str, Any]:
  """Compiles the run's programs for slice `slice_name` and returns the plan (see `report.py`).

  Memory figures and compile times are those of the run's programs; their cost figures count every decoder
  layer (`layer_corrected`, from two small unrolled probes). hbm_bytes: HBM per device to plan against
  (default: the chip table's). flops_balance: also measure each program's FLOPs imbalance (default: yes;
  `flops_imbalance`). families: the program families to compile (default: all of `programs.PROGRAM_FAMILIES`).
  """
  families = tuple(programs.PROGRAM_FAMILIES) if families is None else tuple(families)
  tpu = load_slice(slice_name)
  hbm = float(hbm_bytes) if hbm_bytes is not None else tpu.per_device("hbm_bytes")
  setup = programs.build_setup(config, tpu.devices)
  resident = {name: analysis.device_bytes(tree) for name, tree in setup.resident().items()}
  built = _build(setup, families)
  compiled_programs = [analysis.compile_program(p.fn, p.args)[0] for p in built]
  layers = setup.model.text.num_hidden_layers
  if not setup.model.unroll_layers and layers > 1:
    one, two = (_compile_all(config, tpu.devices, families, probe_model(setup.model, n)) for n in (1, 2))
    compiled_programs = [layer_corrected(c, one[p.name], two[p.name], layers) if p.layer_scan else c
                         for p, c in zip(built, compiled_programs)]
  imbalance = flops_imbalance(config, tpu, families) if flops_balance is None or flops_balance else {}
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
