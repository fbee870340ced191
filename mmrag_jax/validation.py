"""Value checks shared by the settings dataclasses, the config validation and the file readers.

Python's bool is an int, so `True` passes `isinstance(value, int)`; a count, step or rate must not be one.

  is_int(3) -> True, is_int(True) -> False, is_number(0.5) -> True, is_finite_number(float("nan")) -> False
  check_int("TrainerConfig", "num_steps", 0, low=1)
      -> ValueError("TrainerConfig.num_steps must be a positive int, got 0")
  check_non_negative("GRPOConfig", "beta", -0.1)
      -> ValueError("GRPOConfig.beta must be a non-negative number, got -0.1")
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_int", "check_non_negative", "is_finite_number", "is_int", "is_number"]


def is_int(value: Any) -> bool:
  """A Python int that is not a bool."""
  return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
  """A Python int or float that is not a bool (nan and inf included)."""
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
  return is_number(value) and math.isfinite(value)


def check_int(owner: str, name: str, value: Any, *, low: int) -> None:
  """`owner.name` must be an int >= `low` (0 or 1); the error names the field."""
  if not is_int(value) or value < low:
    kind = {0: "a non-negative int", 1: "a positive int"}.get(low, f"an int >= {low}")
    raise ValueError(f"{owner}.{name} must be {kind}, got {value!r}")


def check_non_negative(owner: str, name: str, value: Any) -> None:
  """`owner.name` must be a number >= 0 (nan is not); the error names the field."""
  if not is_number(value) or not value >= 0:
    raise ValueError(f"{owner}.{name} must be a non-negative number, got {value!r}")
