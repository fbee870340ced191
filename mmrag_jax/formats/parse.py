"""Host-side parsing of one completion per stage: malformed kinds and the parts the rewards score and the
prediction files record (`mmrag_jax.rl.rewards` and `mmrag_jax.recipe.stage2` both read completions here).

Stage 1 template: `[<think>...</think>] <answer>yes|no</answer>` (think block per config).
Stage 2 template: `<think>...</think> <evidence>[3], [1]</evidence> <answer>...</answer>`.
Whitespace between blocks is allowed. The malformed kinds are listed in `tags.py`; any of them makes the
format reward 0. Content rewards are kept apart from format so that a single slip does not erase the
signal (unless the config sets gate_on_format):

  stage 1 relevance  1 iff the answer block is usable, holds exactly `yes` or `no`, and that label equals
                     the gold label; 0 for a missing / unterminated / repeated answer block or a bad label.
  stage 2 ranking    scored iff the evidence block is usable and its syntax valid, else 0. Out-of-range
                     numbers stay in the cited list as citations that match no gold candidate (they cost
                     precision and a rank position); a repeated number counts once, at its first position.
                     An empty list scores 0, except 1 when no gold candidate was shown.
  stage 2 answer     scored iff the answer block is usable and not blank, else 0.

Non-ASCII text is legal (it goes through the metrics' normalization like any other text); it is only
counted, to monitor language drift.
"""

from __future__ import annotations

import dataclasses
import re

from mmrag_jax.formats.tags import BlockState, Malformed, scan_blocks

__all__ = ["Stage1Parse", "Stage2Parse", "parse_stage1", "parse_stage2", "split_mmqa_answer"]

_STAGE1_BLOCKS = ("think", "answer")
_STAGE2_BLOCKS = ("think", "evidence", "answer")
_STAGE1_LABELS = {"no": 0, "yes": 1}
_NO_LABEL = -1

# One way to split each separator (whitespace, optional comma, whitespace): no backtracking blow-up.
_EVIDENCE_LIST = re.compile(r"\s*(?:\[\s*[0-9]+\s*\](?:\s*(?:,\s*)?\[\s*[0-9]+\s*\])*)?\s*")
_EVIDENCE_NUMBER = re.compile(r"\[\s*([0-9]+)\s*\]")


@dataclasses.dataclass(frozen=True)
class Stage1Parse:
  """label: 1 (yes), 0 (no) or NO_LABEL; malformed: the kinds found; non_ascii: any char above 127."""

  label: int
  malformed: frozenset[Malformed]
  non_ascii: bool


@dataclasses.dataclass(frozen=True)
class Stage2Parse:
  """cited: distinct cited candidate numbers in citation order (1-based, out-of-range ones included),
  or None when the evidence is not scoreable; answer: stripped answer text, or None when not scoreable."""

  cited: tuple[int, ...] | None
  answer: str | None
  malformed: frozenset[Malformed]
  non_ascii: bool


def _is_non_ascii(text: str) -> bool:
  return not text.isascii()


def _think_kinds(state: BlockState, content: str | None, think: str) -> set[Malformed]:
  kinds = set()
  if state is BlockState.ABSENT and think == "required":
    kinds.add(Malformed.MISSING_TAG)
  if state is not BlockState.ABSENT and think == "forbidden":
    kinds.add(Malformed.THINK_NOT_ALLOWED)
  if state is BlockState.USABLE and not content.strip():
    kinds.add(Malformed.EMPTY_BLOCK)
  return kinds


def parse_stage1(completion: str, think: str) -> Stage1Parse:
  """Parses a stage-1 completion under the think policy ('optional' | 'required' | 'forbidden')."""
  blocks, kinds = scan_blocks(completion, _STAGE1_BLOCKS)
  kinds |= _think_kinds(blocks["think"].state, blocks["think"].content, think)
  answer = blocks["answer"]
  label = _NO_LABEL
  if answer.state is BlockState.ABSENT:
    kinds.add(Malformed.MISSING_TAG)
  elif answer.state is BlockState.USABLE:
    label = _STAGE1_LABELS.get(answer.content, _NO_LABEL)
    if label == _NO_LABEL:
      kinds.add(Malformed.BAD_LABEL)
  return Stage1Parse(label, frozenset(kinds), _is_non_ascii(completion))


def _parse_evidence(content: str, num_candidates: int) -> tuple[tuple[int, ...] | None, set[Malformed]]:
  if not _EVIDENCE_LIST.fullmatch(content):
    return None, {Malformed.BAD_EVIDENCE_SYNTAX}
  numbers = [int(number) for number in _EVIDENCE_NUMBER.findall(content)]
  distinct = tuple(dict.fromkeys(numbers))  # first occurrence keeps its rank
  kinds = set()
  if len(distinct) < len(numbers):
    kinds.add(Malformed.EVIDENCE_REPEATED)
  if any(not 1 <= number <= num_candidates for number in distinct):
    kinds.add(Malformed.EVIDENCE_OUT_OF_RANGE)
  return distinct, kinds


def parse_stage2(completion: str, num_candidates: int, think: str) -> Stage2Parse:
  """Parses a stage-2 completion whose prompt showed candidates numbered 1..num_candidates."""
  blocks, kinds = scan_blocks(completion, _STAGE2_BLOCKS)
  kinds |= _think_kinds(blocks["think"].state, blocks["think"].content, think)
  for name in ("evidence", "answer"):
    if blocks[name].state is BlockState.ABSENT:
      kinds.add(Malformed.MISSING_TAG)

  cited = None
  if blocks["evidence"].state is BlockState.USABLE:
    cited, evidence_kinds = _parse_evidence(blocks["evidence"].content, num_candidates)
    kinds |= evidence_kinds

  answer = None
  if blocks["answer"].state is BlockState.USABLE:
    answer = blocks["answer"].content.strip() or None
    if answer is None:
      kinds.add(Malformed.EMPTY_BLOCK)
  return Stage2Parse(cited, answer, frozenset(kinds), _is_non_ascii(completion))


def split_mmqa_answer(answer: str, separator: str | None) -> list[str]:
  """Answer spans of a generated MultimodalQA answer: the whole text, or its pieces around `separator`.

    split_mmqa_answer("Paris; Rome", ";") -> ["Paris", "Rome"]
    split_mmqa_answer("Paris; Rome", None) -> ["Paris; Rome"]
  """
  if separator is None:
    return [answer]
  return [piece.strip() for piece in answer.split(separator)]
