"""Reward configuration for both stages: component weights and parsing policy (frozen, hashable).

The numeric fields (`weights()`) enter the jitted reward kernels as traced scalars, so changing a weight
(e.g. on a schedule) never recompiles; the boolean switches are static. `from_mapping` builds a config
from an ml_collections / dict config and names the bad field on any error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from mmrag_jax.validation import check_non_negative

__all__ = ["Stage1RewardConfig", "Stage2RewardConfig"]

# Policy for the <think> block: stage 1 makes it optional by default, stage 2 requires it.
_THINK_POLICIES = ("optional", "required", "forbidden")

_ConfigT = TypeVar("_ConfigT", bound="_RewardConfig")


def _check_weight(config: Any, name: str) -> None:
  check_non_negative(type(config).__name__, name, getattr(config, name))


def _check_fraction(config: Any, name: str) -> None:
  _check_weight(config, name)
  if getattr(config, name) > 1.0:
    raise ValueError(f"{type(config).__name__}.{name} must lie in [0, 1], got {getattr(config, name)!r}")


def _check_bool(config: Any, name: str) -> None:
  if not isinstance(getattr(config, name), bool):
    raise ValueError(f"{type(config).__name__}.{name} must be a bool, got {getattr(config, name)!r}")


def _check_think(config: Any) -> None:
  if config.think not in _THINK_POLICIES:
    raise ValueError(f"{type(config).__name__}.think must be one of {_THINK_POLICIES}, got {config.think!r}")


class _RewardConfig:
  """Shared by both stage configs: the traced weights, and construction from a mapping."""

  WEIGHT_FIELDS: ClassVar[tuple[str, ...]] = ()

  def weights(self) -> dict[str, float]:
    """The numeric fields, by name: the traced inputs of the reward kernel."""
    return {name: float(getattr(self, name)) for name in self.WEIGHT_FIELDS}

  @classmethod
  def from_mapping(cls: type[_ConfigT], fields: Mapping[str, Any]) -> _ConfigT:
    """Builds the config from a dict or ml_collections.ConfigDict; unknown keys are an error."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**dict(fields))


@dataclasses.dataclass(frozen=True)
class Stage1RewardConfig(_RewardConfig):
  """Stage 1 (point-wise relevance judgment): total = format_weight * format + relevance_weight * relevance.

  think: whether `<think>...</think>` before the answer is 'optional', 'required' or 'forbidden'.
  gate_on_format: if True, the relevance reward is 0 unless the format reward is 1.
  """

  WEIGHT_FIELDS: ClassVar[tuple[str, ...]] = ("format_weight", "relevance_weight")

  format_weight: float = 0.5
  relevance_weight: float = 1.0
  think: str = "optional"
  gate_on_format: bool = False

  def __post_init__(self) -> None:
    for name in self.WEIGHT_FIELDS:
      _check_weight(self, name)
    _check_bool(self, "gate_on_format")
    _check_think(self)



@dataclasses.dataclass(frozen=True)
class Stage2RewardConfig(_RewardConfig):
  """Stage 2 (list-wise evidence ranking + answer).

  total = format_weight * format + ranking_weight * ranking + answer_weight * answer, with
    ranking = set_f1_fraction * set_f1 + (1 - set_f1_fraction) * ndcg   (cited list vs gold candidates)
    answer  = WebQA keyword accuracy (official per-category rule), or for MultimodalQA
              (1 - mmqa_em_fraction) * list_f1 + mmqa_em_fraction * list_em.

  think: policy for the `<think>` block ('required' by default, see THINK_POLICIES).
  gate_on_format: if True, ranking and answer are 0 unless the format reward is 1.
  round_mmqa_f1: round list F1 to 2 decimals as the official MultimodalQA script does.
  mmqa_span_separator: splits the MultimodalQA answer text into answer spans (e.g. ";"); None keeps the
    whole answer as one span, like a plain-string entry of the official prediction file.
  """

  WEIGHT_FIELDS: ClassVar[tuple[str, ...]] = (
      "format_weight", "ranking_weight", "answer_weight", "set_f1_fraction", "mmqa_em_fraction")

  format_weight: float = 0.5
  ranking_weight: float = 1.0
  answer_weight: float = 1.0
  set_f1_fraction: float = 0.5
  mmqa_em_fraction: float = 0.0
  think: str = "required"
  gate_on_format: bool = False
  round_mmqa_f1: bool = True
  mmqa_span_separator: str | None = None

  def __post_init__(self) -> None:
    for name in ("format_weight", "ranking_weight", "answer_weight"):
      _check_weight(self, name)
    for name in ("set_f1_fraction", "mmqa_em_fraction"):
      _check_fraction(self, name)
    for name in ("gate_on_format", "round_mmqa_f1"):
      _check_bool(self, name)
    _check_think(self)
    separator = self.mmqa_span_separator
    if separator is not None and (not isinstance(separator, str) or not separator.strip()):
      raise ValueError(
          f"Stage2RewardConfig.mmqa_span_separator must be None or a non-blank string, got {separator!r}")
