"""Compiling one program ahead of time and reading what XLA says about it: bytes, FLOPs, collectives.

All figures are per device (one SPMD program runs on every device). Collective bytes are the result
shapes of the all-gather / reduce-scatter / all-reduce / all-to-all / collective-permute ops in the
optimized HLO, each counted once: ops inside a loop body (the chunked log-prob map) are not multiplied
by the trip count, so this is a lower bound. The same holds for XLA's FLOPs count of a loop body: where the
SPMD partitioner turns an all-gather or reduce-scatter and its matmul into a windowed-einsum loop (it does on
16-chip v5e slices with FSDP-sharded weights), the matmul's FLOPs are counted for one iteration only.
`windowed_einsum_loops` counts those loops; `FULL_COUNT_OPTIONS` compiles a program without them, to count.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any

import jax

__all__ = [
    "COLLECTIVES", "CompiledProgram", "FULL_COUNT_OPTIONS", "collective_bytes", "compile_program", "device_bytes",
    "out_of_hbm", "windowed_einsum_loops",
]

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# `%x = bf16[8,128]{1,0} all-gather(...)` or a tuple result; async pairs are counted at their `-done`.
_OP = re.compile(r"=\s*(?P<shape>\(.*?\)|\S+)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?P<suffix>-start|-done)?\(")
# A while loop the SPMD partitioner made of a collective and its dot: `..., body=%windowed_dot_general_body_ag.1`.
_WINDOWED_LOOP = re.compile(r"\bwhile\(.*?body=%[\w.\-]*windowed_dot_general_body")
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")


def _shape_bytes(text: str) -> int:
  """Bytes of the arrays in an HLO shape ('bf16[4,8]{1,0}' or a tuple of them)."""
  return sum(_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
             for dtype, dims in _ARRAY.findall(text))


def collective_bytes(hlo_text: str) -> dict[str, int]:
  """Result bytes per collective kind in an optimized HLO module's text (per device)."""
  totals = dict.fromkeys(COLLECTIVES, 0)
  for match in _OP.finditer(hlo_text):
    if match.group("suffix") == "-start":
      continue  # its tuple holds operand and result; the matching -done gives the result
    totals[match.group("op")] += _shape_bytes(match.group("shape"))
  return totals


def windowed_einsum_loops(hlo_text: str) -> int:
  """How many while loops of an optimized HLO module are windowed einsums (a collective split into steps, each
  step's matmul overlapping the next transfer): XLA's FLOPs count holds one step of each."""
  return len(_WINDOWED_LOOP.findall(hlo_text))


def _first(analysis: Any) -> dict[str, Any]:
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return dict(analysis or {})


@dataclasses.dataclass
class CompiledProgram:
  """What one AOT compilation reports, per device. Bytes in bytes, times in seconds."""

  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  alias_bytes: int
  code_bytes: int
  flops: float
  bytes_accessed: float
  collectives: dict[str, int]
  compile_s: float
  lower_s: float
  error: str | None = None
  windowed_einsum_loops: int = 0
  flops_from_probes: bool = False  # FLOPs counted from unrolled probes compiled with FULL_COUNT_OPTIONS

  @property
  def collective_bytes(self) -> int:
    return sum(self.collectives.values())

  @property
  def program_bytes(self) -> int:
    """Bytes live while the program runs: arguments + outputs not aliased to them + temporaries."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


# XLA's TPU compiler refuses a program whose temporaries exceed the chip's HBM, naming the bytes needed.
_OUT_OF_HBM = re.compile(r"RESOURCE_EXHAUSTED:.*?HLO temporaries \(([\d.]+)([KMGT]?)\)")
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def out_of_hbm(error: Exception, args: tuple[Any, ...], lower_s: float, compile_s: float) -> CompiledProgram:
  """The figures of a program the compiler rejected for HBM: its arguments and the temporaries it asked for."""
  match = _OUT_OF_HBM.search(str(error))
  if match is None:
    raise error
  temp = int(float(match.group(1)) * _UNITS[match.group(2)])
  nan = float("nan")
  return CompiledProgram(argument_bytes=device_bytes(args), output_bytes=0, temp_bytes=temp, alias_bytes=0,
                         code_bytes=0, flops=nan, bytes_accessed=nan,
                         collectives=dict.fromkeys(COLLECTIVES, 0), compile_s=compile_s, lower_s=lower_s,
                         error=str(error).splitlines()[0])


# Compiler options for a program compiled only to count its FLOPs: no windowed einsums, so that XLA's count
# holds every matmul. A chip does the same matmul work either way (the loop only reorders it around the
# transfers of the weight shards), so FLOPs balance and per-layer FLOPs are those of the real program.
FULL_COUNT_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                      "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}


def compile_program(fn: Any, args: tuple[Any, ...], options: dict[str, Any] | None = None
                    ) -> tuple[CompiledProgram, Any]:
  """Lowers and compiles `fn(*args)` for the devices the arguments' shardings name; (figures, compiled).
  options: XLA compiler options (e.g. `FULL_COUNT_OPTIONS`).

  A program the compiler rejects for lack of HBM comes back with `error` set, the temporaries it needed,
  no cost figures (NaN) and compiled None.
  """
  start = time.perf_counter()
  lowered = fn.lower(*args)
  lowered_at = time.perf_counter()
  try:
    compiled = lowered.compile(compiler_options=options)
  except jax.errors.JaxRuntimeError as error:
    return out_of_hbm(error, args, lowered_at - start, time.perf_counter() - lowered_at), None
  done = time.perf_counter()
  memory = compiled.memory_analysis()
  cost = _first(compiled.cost_analysis())
  text = compiled.as_text()
  return CompiledProgram(
      argument_bytes=int(memory.argument_size_in_bytes), output_bytes=int(memory.output_size_in_bytes),
      temp_bytes=int(memory.temp_size_in_bytes), alias_bytes=int(memory.alias_size_in_bytes),
      code_bytes=int(memory.generated_code_size_in_bytes), flops=float(cost.get("flops", 0.0)),
      bytes_accessed=float(cost.get("bytes accessed", 0.0)),
      collectives=collective_bytes(text), compile_s=done - lowered_at, lower_s=lowered_at - start,
      windowed_einsum_loops=windowed_einsum_loops(text)), compiled


def device_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard of each leaf)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
    total += math.prod(shape) * jax.numpy.dtype(leaf.dtype).itemsize
  return total
