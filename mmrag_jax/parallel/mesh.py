"""The device mesh: axes ('data', 'fsdp', 'tensor').

Axis types are Auto (classic GSPMD) on purpose. The model is written without sharding annotations in
its math: parameters carry logical axis names, `rules.py` turns them into shardings, and XLA
propagates shardings through every op. Under Explicit axes every matmul whose contracting dim is
sharded (all of them, once 'embed' is FSDP-sharded) would need a hand-written `reshard` in model code.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh

__all__ = ["MESH_AXES", "compiler_options", "make_mesh", "platform_jit", "resolve_mesh_shape"]

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replaces a single -1 in `shape` by whatever fills `num_devices`; checks the product.

  >>> resolve_mesh_shape((2, -1, 1), 8)
  (2, 4, 1)
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries for axes {MESH_AXES}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh shape {shape}: sizes must be positive, with at most one -1 (fill)")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh shape {shape}: {num_devices} devices do not divide by {known}")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(f"mesh shape {shape} needs {math.prod(shape)} devices, but {num_devices} are available")
  return shape


def make_mesh(shape: Sequence[int] = (1, -1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with Auto axes over `devices` (default: all devices).

  shape: sizes per axis, one of them may be -1 (fill). The default is pure FSDP over every device.
  """
  devices = list(jax.devices() if devices is None else devices)
  resolved = resolve_mesh_shape(shape, len(devices))
  return jax.make_mesh(resolved, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


# XLA:CPU options for every program of the stack: the classic loop emitters instead of the MLIR fusion
# emitters, and LLVM at -O1. XLA:CPU's compile time goes mostly into generating code kernel by kernel, and
# these options make each kernel cheaper to build. On the versus-TRL workload (2-core AMD EPYC, 2026-12-04)
# they cut the GRPO update's compile time from 14.2 to 5.5 s with steady steps unchanged (the time is in
# XNNPACK / Eigen matmuls, which these options do not touch), and on an AVX2-only EPYC (2026-12-07) the
# rollout's first call from ~14 to ~8 s; see BENCHMARKS.md.
_CPU_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}


def _platform_options(platform: str) -> dict[str, object] | None:
  return dict(_CPU_COMPILER_OPTIONS) if platform == "cpu" else None


def compiler_options(mesh: Mesh) -> dict[str, object] | None:
  """`jax.jit(compiler_options=...)` for programs on `mesh`: the options above on CPU, None (XLA's
  defaults) on any other platform, e.g. the TPU devices the planner compiles for."""
  return _platform_options(mesh.devices.flat[0].platform)


class _PlatformJit:
  """See `platform_jit`."""

  def __init__(self, fun: Callable[..., Any], jit_kwargs: dict[str, Any]):
    functools.update_wrapper(self, fun)
    self._fun, self._jit_kwargs, self._by_platform = fun, jit_kwargs, {}

  def _jitted(self, kwargs: dict[str, Any]) -> Any:
    mesh = kwargs.get("mesh")
    platform = jax.default_backend() if mesh is None else mesh.devices.flat[0].platform
    jitted = self._by_platform.get(platform)
    if jitted is None:
      jitted = jax.jit(self._fun, compiler_options=_platform_options(platform), **self._jit_kwargs)
      self._by_platform[platform] = jitted
    return jitted

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    return self._jitted(kwargs)(*args, **kwargs)

  def lower(self, *args: Any, **kwargs: Any) -> Any:
    return self._jitted(kwargs).lower(*args, **kwargs)

  def eval_shape(self, *args: Any, **kwargs: Any) -> Any:
    return self._jitted(kwargs).eval_shape(*args, **kwargs)

  def _cache_size(self) -> int:  # jax.jit's count of compiled programs, over the platforms
    return sum(jitted._cache_size() for jitted in self._by_platform.values())


def platform_jit(fun: Callable[..., Any] | None = None, **jit_kwargs: Any) -> Any:
  """`jax.jit(fun, **jit_kwargs)` that compiles with `compiler_options` of the platform the program is for:
  that of the `mesh` keyword argument where a call passes one (the planner lowers for TPU meshes on a CPU
  host), else jax's default backend. Use it for jits that are not given their mesh when they are made;
  `.lower` works as on a plain jit. Also as a decorator: `@platform_jit` or
  `@functools.partial(platform_jit, static_argnames=...)`."""
  if fun is None:
    return functools.partial(platform_jit, **jit_kwargs)
  return _PlatformJit(fun, jit_kwargs)
