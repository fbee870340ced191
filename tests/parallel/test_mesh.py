"""Mesh construction over the 8 emulated CPU devices."""

import jax
import pytest
from jax.sharding import AxisType

from mmrag_jax.parallel import make_mesh, resolve_mesh_shape
from mmrag_jax.parallel.mesh import MESH_AXES


@pytest.mark.parametrize(("shape", "devices", "expected"), [
    ((2, -1, 1), 8, (2, 4, 1)),
    ((-1, 1, 1), 8, (8, 1, 1)),
    ((1, 2, -1), 4, (1, 2, 2)),
    ((2, 2, 2), 8, (2, 2, 2)),
])
def test_fill_axis_takes_the_remaining_devices(shape, devices, expected):
  assert resolve_mesh_shape(shape, devices) == expected


@pytest.mark.parametrize(("shape", "message"), [
    ((3, -1, 1), "do not divide by 3"),
    ((2, 2, 1), "needs 4 devices, but 8"),
    ((-1, -1, 1), "at most one -1"),
    ((0, 8, 1), "positive"),
    ((8, 1), "3 entries"),
])
def test_bad_shapes_are_rejected(shape, message):
  with pytest.raises(ValueError, match=message):
    resolve_mesh_shape(shape, 8)


def test_default_mesh_is_fsdp_over_all_devices_with_auto_axes():
  mesh = make_mesh()
  assert mesh.axis_names == MESH_AXES
  assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  assert mesh.axis_types == (AxisType.Auto,) * 3


def test_mesh_over_a_subset_of_devices():
  devices = jax.devices()[4:]
  mesh = make_mesh((1, -1, 2), devices=devices)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 2}
  assert set(mesh.devices.flat) == set(devices)


def _options(lowered) -> dict:
  # jax keeps a jit's compiler options on the lowering it hands to the compiler (no public accessor).
  return dict(lowered._lowering._compiler_options_kvs)


def test_platform_jit_compiles_cpu_programs_with_the_cpu_options_and_others_with_xla_defaults():
  import functools

  import jax.numpy as jnp
  import numpy as np

  from mmrag_jax.parallel import compiler_options, platform_jit
  from mmrag_jax.plan.topology import libtpu_available, load_slice

  @functools.partial(platform_jit, static_argnames=("mesh", "scale"))
  def scaled(x, *, mesh=None, scale=2.0):
    return x * scale

  x = jnp.arange(4.0)
  cpu_mesh = make_mesh((1, -1, 1))
  assert compiler_options(cpu_mesh) and _options(scaled.lower(x)) == compiler_options(cpu_mesh)
  assert _options(scaled.lower(x, mesh=cpu_mesh)) == compiler_options(cpu_mesh)
  np.testing.assert_array_equal(scaled(x, scale=3.0), [0.0, 3.0, 6.0, 9.0])
  assert scaled._cache_size() == 1
  if libtpu_available():  # the planner's case: a TPU mesh on a CPU host gets XLA's defaults
    tpu_mesh = make_mesh((1, -1, 1), load_slice("v5litepod-4").devices)
    abstract = jax.ShapeDtypeStruct((4,), jnp.float32)
    assert _options(scaled.lower(abstract, mesh=tpu_mesh)) == {}
    assert compiler_options(tpu_mesh) is None
