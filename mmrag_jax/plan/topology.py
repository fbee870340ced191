"""TPU slices as users name them, the libtpu topologies they compile for, and one table of chip figures.

Slice names count differently per generation (Cloud TPU accelerator types):

    v4-N, v5p-N        N TensorCores, 2 per chip:  v5p-8 = 4 chips  -> libtpu 'v5p:2x2x1'
    v5litepod-N, v6e-N N chips (one TensorCore):  v5litepod-16 = 16 chips -> 'v5e:4x4'

libtpu names (`v5e:2x2`) are accepted as they are. What one compiled program runs on ("a device") is a
chip for v5e / v6e / v5p (v5p is megacore: its two cores are one device) but ONE TensorCore for v4:
libtpu's AOT v4 topologies are not megacore (`v4:2x2x1` gives 8 devices where a real v4-8 shows 4), so
v4 plans are per core, with half a chip's figures per device.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

__all__ = [
    "CHIPS", "Chip", "GIB", "INSTALL_HINT", "SLICES", "Slice", "TopologyError", "libtpu_available", "load_slice",
    "topology_name",
]

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-chip figures: peak dense bf16 FLOP/s, HBM capacity (bytes) and bandwidth (bytes/s), ICI bandwidth
  (bytes/s, bidirectional, all links of the chip together)."""

  generation: str
  peak_bf16_flops: float
  hbm_bytes: float
  hbm_bytes_per_s: float
  ici_bytes_per_s: float
  source: str


# Sources: Google Cloud TPU system-architecture pages (https://cloud.google.com/tpu/docs/v4, .../v5e,
# .../v5p, .../v6e), "key specifications" tables. v4's page gives no per-chip ICI figure: 6 links x 50 GB/s
# (2400 Gbps) is from the TPU v4 paper (Jouppi et al., ISCA 2023). MaxText also documents 459 TFLOP/s for v5p.
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 275e12, 32 * GIB, 1200e9, 300e9,
               "cloud.google.com/tpu/docs/v4: 275 TFLOPs bf16, HBM2 32 GiB at 1200 GBps; ICI: TPU v4 paper"),
    "v5e": Chip("v5e", 197e12, 16 * GIB, 819e9, 400e9,
                "cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16, HBM2 16 GB at 819 GBps, ICI 400 GBps"),
    "v5p": Chip("v5p", 459e12, 95 * GIB, 2765e9, 1200e9,
                "cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16, HBM2e 95 GiB at 2765 GBps, ICI 1200 GBps"),
    "v6e": Chip("v6e", 918e12, 32 * GIB, 1638e9, 800e9,
                "cloud.google.com/tpu/docs/v6e: 918 TFLOPs bf16, HBM 32 GB at 1638 GBps, ICI 800 GBps"),
}

# Slice name -> libtpu topology. Entries are the shapes libtpu 0.0.42 accepted here (tpu_aot.md).
SLICES: dict[str, str] = {
    "v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v4-32": "v4:2x2x4",
    "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4", "v5p-64": "v5p:2x4x4",
    "v5p-128": "v5p:4x4x4",
    "v5litepod-4": "v5e:2x2", "v5litepod-8": "v5e:2x4", "v5litepod-16": "v5e:4x4", "v5litepod-32": "v5e:4x8",
    "v5litepod-64": "v5e:8x8", "v5litepod-128": "v5e:8x16", "v5litepod-256": "v5e:16x16",
    "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4", "v6e-32": "v6e:4x8", "v6e-64": "v6e:8x8",
    "v6e-128": "v6e:8x16", "v6e-256": "v6e:16x16",
}
_ALIASES = {"v5e-": "v5litepod-"}  # v5e-16 is the same slice as v5litepod-16
INSTALL_HINT = "the planner needs libtpu: pip install -e '.[tpu]'"


class TopologyError(ValueError):
  """An unknown slice name (the message lists the known ones)."""


@dataclasses.dataclass(frozen=True)
class Slice:
  """A TPU slice to plan for: `devices` are libtpu's abstract devices (one compiled program each)."""

  name: str
  topology: str
  chip: Chip
  devices: tuple[Any, ...]
  num_chips: int

  @property
  def devices_per_chip(self) -> int:
    return len(self.devices) // self.num_chips

  def per_device(self, figure: str) -> float:
    """A chip figure ('hbm_bytes', 'peak_bf16_flops', ...) per device: halved on v4's per-core devices."""
    return getattr(self.chip, figure) / self.devices_per_chip


def topology_name(name: str) -> str:
  """'v5p-8' -> 'v5p:2x2x1'; libtpu names ('v5e:2x2') pass through. Unknown names raise TopologyError."""
  for alias, canonical in _ALIASES.items():
    if name.startswith(alias):
      name = canonical + name[len(alias):]
  if name in SLICES:
    return SLICES[name]
  generation = name.split(":", 1)[0]
  if re.fullmatch(r"[a-z0-9]+:\d+(x\d+)+", name) and generation in CHIPS:
    return name
  raise TopologyError(f"unknown TPU slice {name!r}; known slices: {', '.join(SLICES)} "
                      f"(or a libtpu topology such as v5e:2x2 / v5p:2x2x1 for {', '.join(CHIPS)})")


def libtpu_available() -> bool:
  try:
    import libtpu  # noqa: F401
  except ImportError:
    return False
  return True


def load_slice(name: str) -> Slice:
  """The abstract devices of slice `name` from libtpu (no TPU needed). Raises TopologyError for an unknown
  name, RuntimeError(INSTALL_HINT) without libtpu."""
  topology = topology_name(name)
  if not libtpu_available():
    raise RuntimeError(INSTALL_HINT)
  # libtpu takes a one-process lockfile on first use; the planner only compiles (it never opens a chip), so
  # several planners (tests, a sweep) and a running job may load it side by side.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental.topologies import get_topology_desc

  try:
    devices = tuple(get_topology_desc(platform="tpu", topology_name=topology).devices)
  except Exception as error:  # noqa: BLE001 - libtpu's rejection, as one line
    raise TopologyError(f"libtpu rejected topology {topology!r} (slice {name!r}): "
                        f"{str(error).splitlines()[0]}") from None
  chips = len({tuple(d.coords) for d in devices})
  return Slice(name=name, topology=topology, chip=CHIPS[topology.split(":")[0]], devices=devices,
               num_chips=chips)
