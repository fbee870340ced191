"""Host-side scan of `<think>`, `<evidence>` and `<answer>` blocks in a completion, and the catalogue of
malformed-completion kinds shared by both stages.

A block is usable only when its opening and closing tag each appear exactly once, opening first; its
content is then the text between them. Tags are matched literally (lowercase, no attributes); anything
else, e.g. `<Answer>`, is ordinary text.

Malformed kinds (a completion may carry several; each one makes the format reward 0):

  missing_tag           a required block has neither tag (stage 2: any of the three blocks; stage 1:
                        the answer block, or the think block under think='required').
  unterminated_tag      an opening tag without its closing tag (e.g. a completion cut at the length
                        limit), a closing tag without an opening one, or a closing tag first.
  repeated_tag          an opening or closing tag appears more than once.
  wrong_order           usable blocks overlap, nest, or are not in template order
                        (think, then evidence, then answer).
  text_outside_tags     non-blank text before, between or after the blocks; checked only when every
                        present block is usable and correctly ordered, so one defect is not counted twice.
  empty_block           a usable think or answer block holds only whitespace.
  think_not_allowed     a think block is present under think='forbidden'.
  bad_label             stage 1: the answer is not exactly `yes` or `no` (lowercase, no padding), the
                        token the stage-1 scorer reads.
  bad_evidence_syntax   stage 2: the evidence is not a list of bracketed numbers such as `[3], [1]`
                        (commas optional, whitespace free, an empty list allowed).
  evidence_out_of_range stage 2: a cited number is 0 or above the number of candidates shown.
  evidence_repeated     stage 2: a number is cited more than once.

How each kind affects the content rewards is documented in `parse.py`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
from collections.abc import Sequence

__all__ = ["Block", "BlockState", "MALFORMED_NAMES", "Malformed", "NUM_MALFORMED", "scan_blocks"]


class Malformed(enum.IntEnum):
  """Column index of each malformed kind in the `[B, NUM_MALFORMED]` flag arrays."""

  MISSING_TAG = 0
  UNTERMINATED_TAG = 1
  REPEATED_TAG = 2
  WRONG_ORDER = 3
  TEXT_OUTSIDE_TAGS = 4
  EMPTY_BLOCK = 5
  THINK_NOT_ALLOWED = 6
  BAD_LABEL = 7
  BAD_EVIDENCE_SYNTAX = 8
  EVIDENCE_OUT_OF_RANGE = 9
  EVIDENCE_REPEATED = 10


NUM_MALFORMED = len(Malformed)
MALFORMED_NAMES = tuple(kind.name.lower() for kind in Malformed)


class BlockState(enum.Enum):
  ABSENT = "absent"
  USABLE = "usable"
  UNTERMINATED = "unterminated"
  REPEATED = "repeated"


@dataclasses.dataclass(frozen=True)
class Block:
  """One named block. `content` and the character span [start, end) (tags included) are set only
  when the block is usable."""

  state: BlockState
  content: str | None = None
  start: int = -1
  end: int = -1


@functools.lru_cache(maxsize=8)
def _tag_pattern(names: tuple[str, ...]) -> re.Pattern[str]:
  return re.compile(r"<(/?)(" + "|".join(re.escape(name) for name in names) + r")>")


def _classify(text: str, opens: list[re.Match[str]], closes: list[re.Match[str]]) -> Block:
  if not opens and not closes:
    return Block(BlockState.ABSENT)
  if len(opens) > 1 or len(closes) > 1:
    return Block(BlockState.REPEATED)
  if len(opens) != len(closes) or closes[0].start() < opens[0].end():
    return Block(BlockState.UNTERMINATED)
  return Block(BlockState.USABLE, text[opens[0].end():closes[0].start()], opens[0].start(), closes[0].end())


def scan_blocks(text: str, names: Sequence[str]) -> tuple[dict[str, Block], set[Malformed]]:
  """Finds the blocks `names` (in template order) in `text`.

  Returns the block of every name, and the structural malformed kinds: unterminated_tag, repeated_tag,
  wrong_order and text_outside_tags. Missing or empty blocks are left to the caller, which knows which
  blocks its stage requires.

  Example: scan_blocks("<think>a</think> <answer>b</answer>", ("think", "answer")) gives two usable
  blocks with contents "a" and "b" and no malformed kind.
  """
  opens: dict[str, list[re.Match[str]]] = {name: [] for name in names}
  closes: dict[str, list[re.Match[str]]] = {name: [] for name in names}
  for match in _tag_pattern(tuple(names)).finditer(text):
    (closes if match.group(1) else opens)[match.group(2)].append(match)
  blocks = {name: _classify(text, opens[name], closes[name]) for name in names}

  kinds: set[Malformed] = set()
  states = {block.state for block in blocks.values()}
  if BlockState.UNTERMINATED in states:
    kinds.add(Malformed.UNTERMINATED_TAG)
  if BlockState.REPEATED in states:
    kinds.add(Malformed.REPEATED_TAG)
  usable = [block for block in blocks.values() if block.state is BlockState.USABLE]
  # Template order and no overlap: each usable block ends before the next one starts.
  if any(later.start < earlier.end for earlier, later in zip(usable, usable[1:])):
    kinds.add(Malformed.WRONG_ORDER)
  if not kinds:
    outside, cursor = [], 0
    for block in usable:
      outside.append(text[cursor:block.start])
      cursor = block.end
    outside.append(text[cursor:])
    if "".join(outside).strip():
      kinds.add(Malformed.TEXT_OUTSIDE_TAGS)
  return blocks, kinds
