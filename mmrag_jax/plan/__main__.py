"""Check a run against a TPU slice before you start it: compile its programs ahead of time, see if they fit.

  python -m mmrag_jax.plan --config=configs/stage2.py:7b --topology=v5p-8 [--config.FIELD=VALUE ...]
      [--output=plan.json] [--hbm_gib=GIB] [--flops_balance=auto|true|false] [--layer_probes=true|false]
      [--programs=update,sampler,predict,scorer]

--hbm_gib plans against that much HBM per device instead of the chip's; --flops_balance (default auto = true)
also compiles each program for one device to measure how evenly the slice splits its FLOPs (models over 1B
parameters on a copy cut to 2 decoder layers and 2 vision blocks, every kind of layer once); --layer_probes=false
skips the small unrolled programs that count the FLOPs of every scanned layer (a quicker fit check: memory and
compile times only, no roofline or MFU); --programs picks program families (default: all).

Logs each compilation to stderr as it finishes (the 7B programs take minutes each), then prints a
per-program table, one line per program that does not fit, and as the last line `RESULT {json}`.
Exit status: 0 everything fits, 1 something does not, 2 a bad command line, config or slice name, or no libtpu.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

__all__ = ["main"]


def _fail(message: str, code: int = 2) -> int:
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  return code


def _parse(argv: list[str]) -> dict[str, Any]:
  from mmrag_jax.sweep.grid import parse_assignment, parse_value

  opts: dict[str, Any] = {"overrides": [], "output": None, "hbm_gib": None, "flops_balance": "auto",
                          "layer_probes": "true", "config": None, "topology": None, "programs": None}
  for arg in argv:
    if not arg.startswith("--") or "=" not in arg:
      raise ValueError(f"unexpected argument {arg!r}: expected --NAME=VALUE")
    name, value = arg[2:].split("=", 1)
    if name.startswith("config."):
      field, text = parse_assignment(arg[len("--config."):], "config")
      opts["overrides"].append((field, parse_value(text)))
    elif name in ("config", "topology", "output", "hbm_gib", "flops_balance", "layer_probes", "programs"):
      opts[name] = value
    else:
      raise ValueError(f"unknown flag --{name} (flags: --config, --config.FIELD, --topology, --output, "
                       "--hbm_gib, --flops_balance, --layer_probes, --programs)")
  if not opts["config"]:
    raise ValueError("--config is required, e.g. --config=configs/stage2.py:7b")
  if not opts["topology"]:
    raise ValueError("--topology is required, e.g. --topology=v5p-8")
  return opts


def _load_config(spec: str, overrides: list[tuple[str, Any]]) -> Any:
  from mmrag_jax.recipe.settings import validate
  from mmrag_jax.sweep.grid import check_field, load_config

  config = load_config(spec)
  for field, value in overrides:
    check_field(config, field, "config", value, typed=True)
    *parents, leaf = field.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  validate(config)
  return config


def _finite(tree: Any) -> Any:
  """NaN (figures of a program that did not compile) as null, so plan.json and RESULT are strict JSON."""
  if isinstance(tree, dict):
    return {k: _finite(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_finite(v) for v in tree]
  return None if isinstance(tree, float) and tree != tree else tree


def main(argv: list[str]) -> int:
  if any(arg in ("-h", "--help") for arg in argv):
    print(__doc__.strip())
    return 0
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # plan on the host; a TPU here stays free for the run
  from mmrag_jax.errors import RunError
  from mmrag_jax.plan.topology import INSTALL_HINT, TopologyError, libtpu_available, topology_name

  try:
    opts = _parse(argv)
    topology_name(opts["topology"])
    config = _load_config(opts["config"], opts["overrides"])
    hbm = None if opts["hbm_gib"] is None else float(opts["hbm_gib"]) * 1024 ** 3
    balance = {"auto": None, "true": True, "false": False}[str(opts["flops_balance"]).lower()]
    probes = {"true": True, "false": False}.get(str(opts["layer_probes"]).lower())
    if probes is None:
      raise ValueError(f"--layer_probes={opts['layer_probes']!r}: expected true or false")
  except (ValueError, KeyError, RunError) as error:  # TopologyError and ConfigError are ValueErrors
    return _fail(error)
  if not libtpu_available():
    return _fail(INSTALL_HINT)

  import jax

  logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
  logging.getLogger("mmrag_jax.plan").setLevel(logging.INFO)
  # Compile times are part of the plan: never read programs from a persistent cache (JAX_COMPILATION_CACHE_DIR).
  jax.config.update("jax_enable_compilation_cache", False)
  from mmrag_jax.parallel import resolve_mesh_shape
  from mmrag_jax.plan.planner import make_plan
  from mmrag_jax.plan.report import table
  from mmrag_jax.plan.topology import load_slice
  from mmrag_jax.recipe.settings import validate_batch_division

  try:
    tpu = load_slice(opts["topology"])
    try:
      data, fsdp, _ = resolve_mesh_shape(tuple(config.mesh.shape), len(tpu.devices))
    except ValueError as error:
      raise ValueError(f"config.mesh.shape on {tpu.name} ({len(tpu.devices)} devices): {error}; e.g. "
                       "--config.mesh.shape='(1,-1,1)' (FSDP over the slice)") from None
    validate_batch_division(config, data * fsdp)
    families = None if opts["programs"] is None else [f.strip() for f in opts["programs"].split(",") if f.strip()]
    plan = make_plan(config, opts["topology"], hbm_bytes=hbm, flops_balance=balance, families=families,
                     layer_probes=probes)
  except (TopologyError, RunError, ValueError) as error:
    return _fail(error)
  print(f"{plan['summary']['slice']} ({plan['summary']['topology']}): {plan['summary']['devices']} devices on "
        f"{plan['summary']['chips']} chips, mesh {tuple(plan['config']['mesh_shape'])}, "
        f"{plan['num_params'] / 1e9:.3f}B parameters, resident state {plan['resident_gib']:.2f} GiB per device")
  print(table(plan["programs"]))
  for line in plan["verdict"] + plan["advice"]:
    print(line)
  if not probes:
    print("--layer_probes=false: the FLOPs, bytes and collectives of programs with scanned layers are not counted "
          "(no roofline times, predicted update or MFU)")
  if plan["summary"]["flops_lower_bound_programs"]:
    print(f"FLOPs of {', '.join(plan['summary']['flops_lower_bound_programs'])} are lower bounds (so MFU and "
          "roofline times are optimistic): XLA counts one step of each windowed-einsum loop in them, and no "
          "layer probes counted their FLOPs instead")
  plan = _finite(plan)
  if opts["output"]:
    with open(opts["output"], "w") as f:
      json.dump(plan, f, indent=1)
  print("RESULT " + json.dumps(plan["summary"]))
  return 0 if plan["summary"]["fits"] else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
