"""Parsed completions packed into fixed-shape numpy arrays for the jitted reward kernels.

Widths are padded up to powers of two (with small minimums) so that a training run compiles each
kernel for a handful of shapes only; nothing is ever truncated, so the rewards stay exact. The gold
answer-span width Sg is the batch maximum itself, not rounded up: the answer matching costs
2**min(Sg, Sp) states per row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from mmrag_jax.evaluation import webqa_metrics
from mmrag_jax.rl.rewards import kernels
from mmrag_jax.rl.rewards.answers import AnswerBags, MMQAAnswer, Stage2Reference, answer_bags
from mmrag_jax.formats.parse import Stage1Parse, Stage2Parse
from mmrag_jax.formats.tags import NUM_MALFORMED, Malformed

__all__ = ["Stage1Batch", "Stage2Batch", "pack_stage1", "pack_stage2"]

_MIN_CANDIDATES = 8
_MIN_TOKENS = 16


def _bucket(size: int, minimum: int = 1) -> int:
  """Smallest power of two >= max(size, minimum)."""
  size = max(int(size), minimum, 1)
  return 1 << (size - 1).bit_length()


def _malformed_flags(kinds: Sequence[frozenset[Malformed]]) -> np.ndarray:
  """[B, NUM_MALFORMED] bool: row b flags the kinds of completion b."""
  flags = np.zeros((len(kinds), NUM_MALFORMED), dtype=bool)
  for row, row_kinds in enumerate(kinds):
    flags[row, list(row_kinds)] = True
  return flags


@dataclasses.dataclass(frozen=True)
class Stage1Batch:
  """label [B] int32 (1 yes, 0 no, -1 none), gold_label [B] int32, malformed [B, NUM_MALFORMED] bool."""

  label: np.ndarray
  gold_label: np.ndarray
  malformed: np.ndarray


jax.tree_util.register_dataclass(Stage1Batch, data_fields=["label", "gold_label", "malformed"],
                                 meta_fields=[])


def pack_stage1(parses: Sequence[Stage1Parse], gold_labels: Sequence[bool]) -> Stage1Batch:
  return Stage1Batch(
      label=np.array([p.label for p in parses], dtype=np.int32),
      gold_label=np.array([int(bool(g)) for g in gold_labels], dtype=np.int32),
      malformed=_malformed_flags([p.malformed for p in parses]))


@dataclasses.dataclass(frozen=True)
class Stage2Batch:
  """Arrays of B stage-2 completions (conventions in `kernels.py`).

  malformed [B, NUM_MALFORMED]; evidence_scored / answer_scored [B]: the block can be scored;
  cited [B, E] (E >= K); relevance [B, K]; is_mmqa [B]: which answer metric; uses_f1 [B]: WebQA
  category scored by F1 rather than recall; pred_token_ids / pred_token_span [B, N];
  gold_token_ids / gold_token_span / gold_token_is_number [B, M]; pred_span_ids [B, Sp];
  gold_span_ids [B, Sg].
  """

  malformed: np.ndarray
  evidence_scored: np.ndarray
  cited: np.ndarray
  relevance: np.ndarray
  answer_scored: np.ndarray
  is_mmqa: np.ndarray
  uses_f1: np.ndarray
  pred_token_ids: np.ndarray
  pred_token_span: np.ndarray
  gold_token_ids: np.ndarray
  gold_token_span: np.ndarray
  gold_token_is_number: np.ndarray
  pred_span_ids: np.ndarray
  gold_span_ids: np.ndarray


jax.tree_util.register_dataclass(
    Stage2Batch, data_fields=[field.name for field in dataclasses.fields(Stage2Batch)], meta_fields=[])


class _Vocabulary(dict):
  """Per-batch ids of hashable keys, assigned on first sight."""

  def id(self, key: object) -> int:
    return self.setdefault(key, len(self))


def _bag_token_keys(bag: Sequence[str]) -> list[tuple[str, int]]:
  # (token, occurrence) keys make every entry of a multiset distinct, so overlap = count of equal keys.
  seen: dict[str, int] = {}
  keys = []
  for token in bag:
    keys.append((token, seen.get(token, 0)))
    seen[token] = seen.get(token, 0) + 1
  return keys


def _fill_tokens(ids: np.ndarray, spans: np.ndarray, bags: Sequence[Sequence[str]],
                 vocabulary: _Vocabulary) -> None:
  position = 0
  for span_index, bag in enumerate(bags):
    for key in _bag_token_keys(bag):
      ids[position], spans[position] = vocabulary.id(key), span_index
      position += 1


def pack_stage2(parses: Sequence[Stage2Parse], references: Sequence[Stage2Reference],
                mmqa_span_separator: str | None) -> Stage2Batch:
  """Packs parsed completions and their references into a Stage2Batch."""
  bags: list[AnswerBags | None] = [
      None if p.answer is None else answer_bags(p.answer, r.answer, mmqa_span_separator)
      for p, r in zip(parses, references)]
  # An unscoreable answer scores 0 whatever its reference, so its bags are never built.
  batch_size = len(parses)
  num_candidates = _bucket(max(r.num_candidates for r in references), _MIN_CANDIDATES)
  cited_width = _bucket(max([len(p.cited or ()) for p in parses] + [num_candidates]))
  pred_tokens = _bucket(max([sum(map(len, b.pred_bags)) for b in bags if b] + [0]), _MIN_TOKENS)
  gold_tokens = _bucket(max([sum(map(len, b.gold_bags)) for b in bags if b] + [0]), _MIN_TOKENS)
  pred_spans = _bucket(max([len(b.pred_spans) for b in bags if b] + [1]))
  gold_spans = max([len(b.gold_spans) for b in bags if b] + [1])

  def full(shape: tuple[int, ...], value: int | bool, dtype: type) -> np.ndarray:
    return np.full((batch_size, *shape), value, dtype=dtype)

  batch = Stage2Batch(
      malformed=_malformed_flags([p.malformed for p in parses]),
      evidence_scored=np.array([p.cited is not None for p in parses], dtype=bool),
      cited=full((cited_width,), kernels.PAD, np.int32),
      relevance=full((num_candidates,), False, bool),
      answer_scored=np.array([b is not None for b in bags], dtype=bool),
      is_mmqa=np.array([isinstance(r.answer, MMQAAnswer) for r in references], dtype=bool),
      uses_f1=np.array([not isinstance(r.answer, MMQAAnswer) and r.answer.qcate in webqa_metrics.F1_QCATES
                        for r in references], dtype=bool),
      pred_token_ids=full((pred_tokens,), kernels.PAD, np.int32),
      pred_token_span=full((pred_tokens,), kernels.PAD, np.int32),
      gold_token_ids=full((gold_tokens,), kernels.PAD, np.int32),
      gold_token_span=full((gold_tokens,), kernels.PAD, np.int32),
      gold_token_is_number=full((gold_tokens,), False, bool),
      pred_span_ids=full((pred_spans,), kernels.PAD, np.int32),
      gold_span_ids=full((gold_spans,), kernels.PAD, np.int32))

  tokens, span_strings = _Vocabulary(), _Vocabulary()
  for row, (parse, reference, row_bags) in enumerate(zip(parses, references, bags)):
    batch.relevance[row, [n - 1 for n in reference.gold_numbers]] = True
    for position, number in enumerate(parse.cited or ()):
      in_range = 1 <= number <= reference.num_candidates
      batch.cited[row, position] = number - 1 if in_range else kernels.OUT_OF_RANGE
    if row_bags is None:
      continue
    _fill_tokens(batch.pred_token_ids[row], batch.pred_token_span[row], row_bags.pred_bags, tokens)
    _fill_tokens(batch.gold_token_ids[row], batch.gold_token_span[row], row_bags.gold_bags, tokens)
    gold_numbers = [flag for span_flags in row_bags.gold_numbers for flag in span_flags]
    batch.gold_token_is_number[row, :len(gold_numbers)] = gold_numbers
    batch.pred_span_ids[row, :len(row_bags.pred_spans)] = [span_strings.id(s) for s in row_bags.pred_spans]
    batch.gold_span_ids[row, :len(row_bags.gold_spans)] = [span_strings.id(s) for s in row_bags.gold_spans]
  return batch
