"""The plan of one configured run on one TPU slice: compile every program, size it against the chip.

    plan = make_plan(config, "v5p-8")        # dict: programs, resident state, summary, verdict, advice
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections

from mmrag_jax.model import Qwen25VLConfig, vision
from mmrag_jax.parallel import resolve_mesh_shape
from mmrag_jax.plan import analysis, programs, report
from mmrag_jax.plan.topology import GIB, Slice, TopologyError, load_slice

__all__ = ["layer_corrected", "make_plan"]

# One device of this topology (a v5p chip, 95 GiB) holds the balance checks the slice's own chip cannot.
_LARGE_CHIP = "v5p:2x2x1"
_log = logging.getLogger(__name__)


def _build(setup: programs.PlanSetup, families: Sequence[str]) -> list[programs.Program]:
  unknown = sorted(set(families) - set(programs.PROGRAM_FAMILIES))
  if unknown:
    raise ValueError(f"unknown program families {unknown}; choose from {sorted(programs.PROGRAM_FAMILIES)}")
  return [p for name in families for p in programs.PROGRAM_FAMILIES[name](setup)]


def _probe_model(model: Qwen25VLConfig, text_layers: int, vision_blocks: str = "wf") -> Qwen25VLConfig:
  """`model` at its widths with `text_layers` decoder layers and the vision blocks `vision_blocks` ('w' a
  window-attention block, 'f' a full-attention one), all unrolled: every kind of layer, each seen by XLA's
  cost analysis."""
  full = tuple(i for i, kind in enumerate(vision_blocks) if kind == "f")
  return model.replace(text=dataclasses.replace(model.text, num_hidden_layers=text_layers),
                       vision=dataclasses.replace(model.vision, depth=len(vision_blocks), fullatt_block_indexes=full),
                       unroll_layers=True)


def _uncounted_layers(model: Qwen25VLConfig) -> dict[str, int]:
  """Per kind of layer ('text', 'window', 'full'), how many of the model's layers XLA's cost analysis of its
  scanned program leaves out: a loop body is counted once, so a scan of n layers reads as one. The decoder is
  one scan; the vision blocks run as `vision.full_attention_period` or `vision.block_runs` lay them out."""
  if model.unroll_layers:
    return {"text": 0, "window": 0, "full": 0}
  v = model.vision
  full = len(v.fullatt_block_indexes)
  if vision.full_attention_period(v.depth, v.fullatt_block_indexes) is not None:
    counted_window, counted_full = 1, 1
  else:
    runs = vision.block_runs(v.depth, v.fullatt_block_indexes)
    counted_window, counted_full = sum(not f for f, _, _ in runs), sum(f for f, _, _ in runs)
  return {"text": max(model.text.num_hidden_layers - 1, 0), "window": v.depth - full - counted_window,
          "full": full - counted_full}


# The base probe (2 decoder layers, a window and a full block) and the probes that add one layer of each kind
# to it. The first decoder layer fuses with what comes before it (the embedding lookup), so its cost is not a
# middle layer's; the text probes differ in a layer after it. In the 7B decode step the byte counts of 1, 2 and
# 3 unrolled layers are 0.98, 0.87 and 1.11 GB: 1 -> 2 would read as -0.11 GB per layer, 2 -> 3 reads 0.23 GB.
_BASE_PROBE = (2, "wf")
_PROBES = {"text": (3, "wf"), "window": (2, "wwf"), "full": (2, "wff")}


def _compiled(program: programs.Program, what: str, options: dict[str, Any] | None = None
              ) -> analysis.CompiledProgram:
  """`program`'s figures, its compile time logged (progress: the 7B programs take minutes each)."""
  compiled = analysis.compile_program(program.fn, program.args, options)[0]
  _log.info("%s %s (%s): compiled in %.1f s%s", what, program.name, program.bucket, compiled.compile_s,
            "" if compiled.error is None else ", refused: " + compiled.error)
  return compiled


def _compile_all(config: ml_collections.ConfigDict, devices: Any, families: Sequence[str], model: Qwen25VLConfig,
                 keep: Callable[[programs.Program], bool] = lambda p: True, *, what: str,
                 options: dict[str, Any] | None = None) -> dict[str, analysis.CompiledProgram]:
  """The figures of the programs of `families` for `model` (those `keep` accepts); `what` names them in the log;
  options: XLA compiler options."""
  setup = programs.build_setup(config, devices, model=model)
  return {p.name: _compiled(p, what, options) for p in _build(setup, families) if keep(p)}


def layer_corrected(full: analysis.CompiledProgram, base: analysis.CompiledProgram,
                    extra: Mapping[str, tuple[int, analysis.CompiledProgram]],
                    beyond_base: Mapping[str, int] | None = None) -> analysis.CompiledProgram:
  """The cost figures of a program whose layers run under scans, every layer counted.

  XLA's cost analysis counts a loop body once, so a scanned program reads as one layer of each scan plus the
  rest. extra: per kind of layer, (layers left out, the unrolled probe with one more layer of that kind than
  `base`); this adds (layers left out) x (probe - base) to the FLOPs, bytes and collective bytes. Memory
  figures are the scanned program's own.

  Where `full` has windowed-einsum loops (whose matmuls XLA counts for one step) its own FLOPs are a lower
  bound; the probes are compiled without such loops, so the FLOPs are then the base probe's plus, per kind,
  beyond_base[kind] (the model's layers of that kind minus the base probe's) x (probe - base).
  """
  if any(c.error is not None for c in (full, base, *(probe for _, probe in extra.values()))):
    return full
  flops, accessed, collectives = full.flops, full.bytes_accessed, dict(full.collectives)
  for count, probe in extra.values():
    flops += count * (probe.flops - base.flops)
    accessed += count * (probe.bytes_accessed - base.bytes_accessed)
    for k in collectives:
      collectives[k] = int(collectives[k] + count * (probe.collectives[k] - base.collectives[k]))
  from_probes = bool(full.windowed_einsum_loops and beyond_base is not None
                     and all(n == 0 or kind in extra for kind, n in beyond_base.items()))
  if from_probes:
    flops = base.flops + sum(beyond_base[kind] * (probe.flops - base.flops) for kind, (_, probe) in extra.items())
  return dataclasses.replace(full, flops=flops, bytes_accessed=accessed, collectives=collectives,
                             flops_from_probes=from_probes)


def _layers_beyond_base(model: Qwen25VLConfig, runs_vision: bool) -> dict[str, int]:
  """Per kind of layer, the model's layers of that kind minus the base probe's (`_BASE_PROBE`); the vision
  kinds only for a program that runs the vision tower."""
  text, blocks = _BASE_PROBE
  full = len(model.vision.fullatt_block_indexes)
  out = {"text": model.text.num_hidden_layers - text}
  if runs_vision:
    out.update(window=model.vision.depth - full - blocks.count("w"), full=full - blocks.count("f"))
  return out


def _flops_imbalance(config: ml_collections.ConfigDict, tpu: Slice, families: Sequence[str]) -> dict[str, float]:
  """Per program: FLOPs of the busiest device x devices over the FLOPs of the same program compiled for one
  device (the whole computation, unsplit). 1.0 = every device does an equal share.

  Measured on the 2-layer `_probe_model` with G x (data-parallel devices) rows at most (one prompt per device,
  so that one device can hold the whole batch): how a program splits depends on the layer kinds and the row
  layout, not on depth. A one-device compilation the chip's HBM refuses is redone for one v5p chip (95 GiB).
  """
  model = _probe_model(programs.model_config(config), 2)
  small = ml_collections.ConfigDict(config.to_dict())
  data, fsdp, _ = resolve_mesh_shape(tuple(config.mesh.shape), len(tpu.devices))
  small.train.batch_size = min(config.train.batch_size, config.rl.group_size * data * fsdp)
  sharded = _compile_all(small, tpu.devices, families, model, what="balance, sharded:",
                         options=analysis.FULL_COUNT_OPTIONS)
  single = ml_collections.ConfigDict(small.to_dict())
  single.mesh.shape = (1, 1, 1)
  whole = _compile_all(single, tpu.devices[:1], families, model, what="balance, one device:")
  if any(c.error is not None for c in whole.values()):
    try:
      large = _compile_all(single, load_slice(_LARGE_CHIP).devices[:1], families, model,
                           what="balance, one large device:")
      whole = {name: large[name] if c.error is not None else c for name, c in whole.items()}
    except (TopologyError, jax.errors.JaxRuntimeError) as error:  # then those programs stay unmeasured
      _log.warning("no one-device compilation for the FLOPs balance of %s: %s",
                   [n for n, c in whole.items() if c.error is not None], error)
  # A windowed-einsum loop's matmul is counted for one step: that per-device count is no measure of balance.
  undercounted = sorted(name for name, c in sharded.items() if c.windowed_einsum_loops)
  if undercounted:
    _log.warning("no FLOPs balance for %s: their sharded compilation has windowed-einsum loops, whose matmul "
                 "FLOPs XLA counts for one step", undercounted)
  return {name: c.flops * len(tpu.devices) / whole[name].flops for name, c in sharded.items()
          if c.error is None and whole[name].error is None and whole[name].flops > 0 and name not in undercounted}


def _without_costs(program: analysis.CompiledProgram) -> analysis.CompiledProgram:
  """`program` with its FLOPs, bytes accessed and collective bytes unknown (NaN): what XLA counts of a scanned
  program is one layer of each scan, no figure to predict from."""
  nan = float("nan")
  return dataclasses.replace(program, flops=nan, bytes_accessed=nan,
                             collectives={k: nan for k in program.collectives})


def make_plan(config: ml_collections.ConfigDict, slice_name: str, *, hbm_bytes: float | None = None,
              flops_balance: bool | None = None, families: Sequence[str] | None = None,
              layer_probes: bool = True) -> dict[str, Any]:
  """Compiles the run's programs for slice `slice_name` and returns the plan (see `report.py`).

  Memory figures and compile times are those of the run's programs; their cost figures count every decoder
  layer and vision block (`layer_corrected`, from small unrolled probes: `_uncounted_layers`). hbm_bytes: HBM per device to plan against
  (default: the chip table's). flops_balance: also measure each program's FLOPs imbalance (default: yes;
  `_flops_imbalance`). families: the program families to compile (default: all of `programs.PROGRAM_FAMILIES`).
  layer_probes=False skips the probes (for the 7B, most of the planner's time): memory figures and compile
  times only, the cost figures of programs with scanned layers (so roofline times, MFU) unknown.
  """
  families = tuple(programs.PROGRAM_FAMILIES) if families is None else tuple(families)
  tpu = load_slice(slice_name)
  hbm = float(hbm_bytes) if hbm_bytes is not None else tpu.per_device("hbm_bytes")
  setup = programs.build_setup(config, tpu.devices)
  resident = {name: analysis.device_bytes(tree) for name, tree in setup.resident().items()}
  built = _build(setup, families)
  compiled_programs = [_compiled(p, "program:") for p in built]
  missing = {kind: n for kind, n in _uncounted_layers(setup.model).items() if n > 0}
  if missing and not layer_probes:
    compiled_programs = [_without_costs(c) if p.layer_scan else c for p, c in zip(built, compiled_programs)]
  elif missing:
    # Only programs that scan layers of that kind need its probe (the decode loop runs no vision block).
    needs = lambda kind: (lambda p: p.layer_scan and (kind == "text" or p.runs_vision))
    probe = lambda kind, text, blocks: _compile_all(config, tpu.devices, families,
                                                    _probe_model(setup.model, text, blocks), needs(kind),
                                                    what=f"probe of {text} layers, blocks {blocks!r}:",
                                                    options=analysis.FULL_COUNT_OPTIONS)
    base = probe("text", *_BASE_PROBE)
    extra = {kind: (n, probe(kind, *_PROBES[kind])) for kind, n in missing.items()}
    compiled_programs = [
        layer_corrected(c, base[p.name], {k: (n, probes[p.name]) for k, (n, probes) in extra.items()
                                          if p.name in probes}, _layers_beyond_base(setup.model, p.runs_vision))
        if p.layer_scan else c for p, c in zip(built, compiled_programs)]
  imbalance = _flops_imbalance(config, tpu, families) if flops_balance is None or flops_balance else {}
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
      "advice": report.prompt_sharing_advice(g.rows, g.group_size, g.batch_shards, len(tpu.devices),
                                             setup.model.text.num_attention_heads,
                                             setup.model.text.num_key_value_heads) if "update" in families else [],
      "summary": report.summary(records, tpu, model_flops),
  }
