"""From compiled programs to the plan: HBM per device against the chip, roofline times, the verdict.

    peak HBM  = resident state outside the program's arguments + arguments + unaliased outputs
                + temporaries + generated code
    roofline  = max(FLOPs / peak FLOP/s, bytes accessed / HBM bandwidth, collective bytes / ICI bandwidth)
    MFU       = model FLOPs (6 N tokens, text + vision) / (predicted update time x chips x peak FLOP/s per chip)
"""

from __future__ import annotations

from typing import Any

from mmrag_jax.plan.analysis import CompiledProgram
from mmrag_jax.plan.topology import GIB, Slice
from mmrag_jax.rl.policy import runs_prompts_once

__all__ = ["program_record", "prompt_sharing_advice", "summary", "table", "verdict"]

_KNOBS = ("model.remat=True", "a smaller train.batch_size with more train.micro_batches",
          "another mesh.shape", "a bigger slice")


def _roofline(program: CompiledProgram, tpu: Slice, loop_steps: int = 1) -> dict[str, Any]:
  """Seconds per run of the program bounded by compute, HBM traffic and ICI traffic, and which bounds it.

  loop_steps: trips of a loop XLA's cost analysis counts once (step_s is one trip, time_s all of them).
  """
  times = {"compute_s": program.flops / tpu.per_device("peak_bf16_flops"),
           "hbm_s": program.bytes_accessed / tpu.per_device("hbm_bytes_per_s"),
           "ici_s": program.collective_bytes / tpu.per_device("ici_bytes_per_s")}
  if any(t != t for t in times.values()):  # not compiled (out of HBM): no cost figures
    return {**times, "step_s": float("nan"), "time_s": float("nan"), "bound": "unknown"}
  bound = max(times, key=times.get)
  return {**times, "step_s": times[bound], "time_s": times[bound] * loop_steps, "bound": bound[:-2]}


def program_record(name: str, bucket: str, per_update: int, program: CompiledProgram,
                   outside: dict[str, int], tpu: Slice, hbm_bytes: float, *, family: str = "update",
                   loop_steps: int = 1, flops_imbalance: float | None = None) -> dict[str, Any]:
  """Everything the plan says about one program on one device of `tpu` (HBM of `hbm_bytes` per device).
  flops_imbalance: its per-device FLOPs over an even share of the whole program's (None: not measured)."""
  peak = sum(outside.values()) + program.program_bytes + program.code_bytes
  return {
      "name": name, "bucket": bucket, "family": family, "per_update": per_update, "loop_steps": loop_steps,
      "argument_bytes": program.argument_bytes, "output_bytes": program.output_bytes,
      "temp_bytes": program.temp_bytes, "alias_bytes": program.alias_bytes, "code_bytes": program.code_bytes,
      "resident_outside_bytes": outside, "peak_bytes": peak, "hbm_bytes": hbm_bytes,
      "headroom_fraction": 1.0 - peak / hbm_bytes, "fits": program.error is None and peak <= hbm_bytes,
      "compile_error": program.error,
      "flops": program.flops, "bytes_accessed": program.bytes_accessed,
      "collective_bytes": program.collectives, "collective_bytes_total": program.collective_bytes,
      "compile_s": program.compile_s, "lower_s": program.lower_s,
      "flops_imbalance": flops_imbalance, "windowed_einsum_loops": program.windowed_einsum_loops,
      "flops_from_probes": program.flops_from_probes,
      "roofline": _roofline(program, tpu, loop_steps),
  }


def verdict(records: list[dict[str, Any]]) -> list[str]:
  """One line per program that does not fit: program, bucket, GiB over, and the knobs to turn."""
  lines = []
  for r in records:
    if not r["fits"]:
      rejected = " (the TPU compiler refused it: temporaries exceed HBM)" if r["compile_error"] else ""
      lines.append(f"{r['name']} [{r['bucket']}] does not fit: {r['peak_bytes'] / GIB:.2f} GiB of "
                   f"{r['hbm_bytes'] / GIB:.2f} GiB per device, {(r['peak_bytes'] - r['hbm_bytes']) / GIB:.2f} GiB "
                   f"over{rejected}; try {', '.join(_KNOBS)}")
  return lines


def prompt_sharing_advice(rows: int, group_size: int, batch_shards: int, devices: int, num_heads: int,
                          num_kv_heads: int) -> list[str]:
  """Where the update runs whole rows because a micro-batch's rows / G prompts do not split over its
  `batch_shards` (so every chip runs prompt + completion of its rows: `rl.policy.runs_prompts_once`), one line
  naming the mesh shapes (1, F, T) over `devices` whose F batch shards split the prompts, with T dividing the
  query and kv heads (tensor parallelism then splits each prompt's attention and MLP work); else no lines."""
  if group_size < 2 or runs_prompts_once(rows, group_size, batch_shards):
    return []
  prompts = rows // group_size
  shapes = [(1, devices // t, t) for t in range(1, devices + 1)
            if devices % t == 0 and runs_prompts_once(rows, group_size, devices // t)
            and num_heads % t == 0 and num_kv_heads % t == 0]
  ways = [f"--config.mesh.shape='({d},{f},{t})'" for d, f, t in shapes]
  ways.append(f"a multiple of {batch_shards} x G = {batch_shards * group_size} rows per micro-batch (train.batch_size)")
  counted = f"{prompts} prompts per micro-batch do" if prompts != 1 else "1 prompt per micro-batch does"
  return [f"the update runs whole rows: its {counted} not split over {batch_shards} batch shards, so each chip runs "
          f"prompt and completion of its rows; each prompt would run once for its group with {' or '.join(ways)}"]


def summary(records: list[dict[str, Any]], tpu: Slice, model_flops: float) -> dict[str, Any]:
  """The RESULT figures: fits, headroom, compile time, predicted update (and rollout) time, update MFU, the
  model-FLOPs share of the update's compiled FLOPs, FLOPs imbalance, and for the decode loop its predicted
  step time over the time to read its arguments once."""
  def predicted(family: str) -> float | None:
    total = sum(r["per_update"] * r["roofline"]["time_s"] for r in records if r["family"] == family)
    return total if total == total and any(r["family"] == family for r in records) else None

  update_s = predicted("update")
  compiled_update_flops = sum(r["per_update"] * r["flops"] for r in records if r["family"] == "update") * len(
      tpu.devices)
  imbalances = [r["flops_imbalance"] for r in records if r["flops_imbalance"] is not None]
  return {
      "fits": all(r["fits"] for r in records),
      "min_headroom_fraction": min(r["headroom_fraction"] for r in records),
      "total_compile_s": sum(r["compile_s"] + r["lower_s"] for r in records),
      "predicted_update_s": update_s,
      "predicted_update_mfu": model_flops / (update_s * tpu.num_chips * tpu.chip.peak_bf16_flops)
                              if update_s else None,
      # Of the FLOPs the update's programs execute (remat's recompute included), the share that is model FLOPs.
      "update_model_flops_fraction": (model_flops / compiled_update_flops
                                      if compiled_update_flops == compiled_update_flops and compiled_update_flops
                                      else None),
      "max_flops_imbalance": max(imbalances) if imbalances else None,
      # Programs whose FLOPs (so MFU, roofline times and the model-FLOPs share) are lower bounds: XLA counts one
      # step of each windowed-einsum loop, and no layer probes counted them instead.
      "flops_lower_bound_programs": sorted({r["name"] for r in records if r["windowed_einsum_loops"]
                                            and not r["flops_from_probes"] and r["flops"] == r["flops"]}),
      "predicted_rollout_s": predicted("sampler"),
      **_decode_vs_roofline(records, tpu),
      "topology": tpu.topology, "slice": tpu.name, "devices": len(tpu.devices), "chips": tpu.num_chips,
  }


def _decode_vs_roofline(records: list[dict[str, Any]], tpu: Slice) -> dict[str, Any]:
  """decode_vs_roofline: one decode step's roofline time over reading its arguments (weights, cache) once from
  HBM, the floor of a memory-bound token step; 1.0 is ideal."""
  decode = next((r for r in records if r["name"] == "decode"), None)
  if decode is None:
    return {}
  floor = decode["argument_bytes"] / tpu.per_device("hbm_bytes_per_s")
  step = decode["roofline"]["step_s"]
  return {"decode_vs_roofline": step / floor if floor > 0 and step == step else None}


def table(records: list[dict[str, Any]]) -> str:
  """A readable per-program table (GiB per device, TFLOP per device, milliseconds)."""
  head = (f"{'program':<20} {'bucket':<28} {'args':>7} {'temp':>7} {'peak':>7} {'HBM':>6} {'fits':>5} "
          f"{'TFLOP':>8} {'coll GiB':>8} {'roof ms':>9} {'bound':>7} {'compile s':>9}")
  rows = [head, "-" * len(head)]
  for r in records:
    rows.append(f"{r['name']:<20} {r['bucket']:<28} {r['argument_bytes'] / GIB:7.2f} {r['temp_bytes'] / GIB:7.2f} "
                f"{r['peak_bytes'] / GIB:7.2f} {r['hbm_bytes'] / GIB:6.1f} {str(r['fits']):>5} "
                f"{r['flops'] / 1e12:8.3f} {r['collective_bytes_total'] / GIB:8.3f} "
                f"{r['roofline']['time_s'] * 1e3:9.2f} {r['roofline']['bound']:>7} {r['compile_s']:9.1f}")
  return "\n".join(rows)
