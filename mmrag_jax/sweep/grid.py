"""Sweep axes: typed grid values, their cartesian product, run names, and config field checks."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import itertools
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ml_collections import ConfigDict

__all__ = [
    "COST_FIELDS", "LOG_FILE", "RUN_FILE", "SUMMARY_FILE", "check_field", "expand_grid", "format_value", "load_config",
    "parse_assignment", "parse_grid", "parse_value", "run_name", "split_values",
]

SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"
LOG_FILE = "log.txt"
COST_FIELDS = ("train_steps", "completion_tokens", "prompt_tokens", "mean_step_time_s", "train_time_s",
               "total_time_s", "num_devices", "num_params")
_MAX_NAME_LENGTH = 120



# -- Grid ------------------------------------------------------------------------------------------

def split_values(text: str) -> list[str]:
  """Splits 'a,(1,2),"x,y"' at the commas outside brackets and quotes: ['a', '(1,2)', '"x,y"']."""
  parts, depth, quote, start = [], 0, "", 0
  for i, char in enumerate(text):
    if quote:
      quote = "" if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == "," and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  if depth or quote:
    raise ValueError(f"unbalanced brackets or quotes in {text!r}")
  parts.append(text[start:])
  return [p.strip() for p in parts]


def parse_value(text: str) -> Any:
  """A grid value typed as written: int, float, bool, tuple, None, or else the string itself."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    return ast.literal_eval(text)
  except (SyntaxError, ValueError):
    return text


def parse_assignment(arg: str, flag: str) -> tuple[str, str]:
  """'FIELD=TEXT' -> (FIELD, TEXT); `flag` names the command-line flag in errors."""
  field, sep, text = arg.partition("=")
  field = field.strip()
  if not sep or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", field) or not text.strip():
    raise ValueError(f"--{flag}={arg!r}: expected FIELD=VALUE with a dotted config field, e.g. rl.group_size=8")
  return field, text


def parse_grid(args: Sequence[str]) -> list[tuple[str, list[Any]]]:
  """['stage2.k=3,5', 'rl.group_size=4,8'] -> [('stage2.k', [3, 5]), ('rl.group_size', [4, 8])]."""
  grid: list[tuple[str, list[Any]]] = []
  for arg in args:
    field, text = parse_assignment(arg, "grid")
    if any(field == known for known, _ in grid):
      raise ValueError(f"--grid field {field!r} is given twice")
    values = [parse_value(v) for v in split_values(text)]
    if any(v == "" for v in values):
      raise ValueError(f"--grid={arg!r}: empty value")
    grid.append((field, values))
  return grid


def expand_grid(grid: Sequence[tuple[str, Sequence[Any]]]) -> list[dict[str, Any]]:
  """The cartesian product, last field varying fastest: one {field: value} dict per run."""
  fields = [field for field, _ in grid]
  return [dict(zip(fields, combo)) for combo in itertools.product(*(values for _, values in grid))]


def format_value(value: Any) -> str:
  """The command-line text of a typed value, as ml_collections' config flags parse it back."""
  if isinstance(value, str):
    return value
  return repr(value)


def run_name(point: Mapping[str, Any]) -> str:
  """Filesystem-safe name of a grid point.

  >>> run_name({'stage2.k': 3, 'mesh.shape': (1, -1, 1)})
  'stage2.k-3__mesh.shape-1_-1_1'
  """
  if not point:
    return "base"
  parts = []
  for field, value in point.items():
    text = re.sub(r"[^A-Za-z0-9.+-]+", "_", format_value(value)).strip("_") or "_"
    parts.append(f"{field}-{text}")
  name = "__".join(parts)
  if len(name) > _MAX_NAME_LENGTH:  # file names are limited to 255 bytes; keep the name unique with a hash
    name = name[:_MAX_NAME_LENGTH - 9] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
  return name


# -- Config validation -----------------------------------------------------------------------------

def load_config(spec: str) -> ConfigDict:
  """Loads `PATH[:ARG]` the way ml_collections' config flags do: `get_config(ARG)` or `get_config()`."""
  path, sep, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"--config={spec!r}: no config file {path!r}")
  module_spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if sep else module.get_config()


def check_field(config: ConfigDict, field: str, flag: str, value: Any = None, *, typed: bool = False) -> None:
  """Raises ValueError unless `field` exists in `config` (and, when `typed`, accepts `value`)."""
  node: Any = config
  parts = field.split(".")
  for depth, part in enumerate(parts):
    where = ".".join(parts[:depth]) or "the config"
    if not isinstance(node, (ConfigDict, dict)):
      raise ValueError(f"--{flag} field {field!r}: {where} is a value, not a config section")
    if part not in node:
      raise ValueError(f"--{flag} field {field!r}: {where} has no field {part!r} (it has {sorted(node.keys())})")
    if depth < len(parts) - 1:
      node = node[part]
  if typed and isinstance(node, ConfigDict):
    probe = ConfigDict(node)  # a copy with the same field types; the real config stays untouched
    try:
      probe[parts[-1]] = value
    except TypeError as e:
      hint = f" (write '{value}' to pass a string)" if isinstance(node.get(parts[-1]), str) else ""
      raise ValueError(f"--{flag} {field}={value!r}: {e}{hint}") from None


# -- Running ---------------------------------------------------------------------------------------
