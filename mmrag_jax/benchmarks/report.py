"""The benchmarks' shared output: an aligned table, then `RESULT {json}` as the last line."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["print_result", "print_table"]


def print_table(title: str, rows: Sequence[tuple[str, str]], *, value_width: int = 0) -> None:
  """Prints `title`, then one `  name  value` line per row with the names aligned."""
  width = max(len(name) for name, _ in rows)
  print(title)
  for name, value in rows:
    print(f"  {name:<{width}}  {value:>{value_width}}")


def print_result(figures: Mapping[str, Any]) -> None:
  """The machine-readable last line: `RESULT {json}`."""
  print("RESULT " + json.dumps(dict(figures)), flush=True)
