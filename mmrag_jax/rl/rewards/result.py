"""What a stage's reward function returns: the weighted total, every component, and malformed counts."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from mmrag_jax.formats.tags import MALFORMED_NAMES

__all__ = ["RewardResult", "malformed_counts"]


@dataclasses.dataclass(frozen=True)
class RewardResult:
  """total [B] float32: the config-weighted sum; components: name -> [B] float32, each in [0, 1];
  counts: completions per malformed kind (names of tags.Malformed, lowercase) and 'non_ascii'."""

  total: jax.Array
  components: Mapping[str, jax.Array]
  counts: Mapping[str, int]


def malformed_counts(malformed: np.ndarray, non_ascii: Sequence[bool]) -> dict[str, int]:
  """Completions per malformed kind, from flags [B, NUM_MALFORMED], plus the non-ASCII count."""
  counts = dict(zip(MALFORMED_NAMES, (int(n) for n in malformed.sum(axis=0))))
  counts["non_ascii"] = int(sum(non_ascii))
  return counts
