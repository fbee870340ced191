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
