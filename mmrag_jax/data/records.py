"""The normalized question record shared by both benchmarks, and the skip-and-count bookkeeping.

Readers return `Question`s, the TFDS builders store them, the stage-1/stage-2 pipelines and the
evaluation read them. One record type serves WebQA and MultimodalQA:

  Question(qid="d5bd…", question="What color is the roof of …?", answers=("The roof is red.",),
           category="color", modalities=("image",), candidates=(Candidate(...), ...),
           gold_ids=("30000012",), split="val", dataset="webqa")

`gold_ids is None` means an unlabeled split (the test sets); `()` never occurs in a record a reader
returns, because questions without any gold source are skipped.
"""

from __future__ import annotations

import collections
import dataclasses
import logging

from mmrag_jax.errors import RunError

__all__ = ["Candidate", "DUPLICATE_ID", "DataError", "IMAGE", "Question", "SkipReport", "TEXT"]

_log = logging.getLogger(__name__)

IMAGE = "image"
TEXT = "text"
DUPLICATE_ID = "duplicate_id"  # skip reason of a question whose id an earlier entry of the file already has


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One retrievable source of a question's candidate pool.

  Attributes:
    id: the benchmark's source id (WebQA `image_id` as a decimal string or `snippet_id`; MMQA doc id).
    kind: "image" or "text".
    title: the page / entity title.
    text: the text fact for text candidates, the caption for image candidates ("" when none).
    image_ref: key into the dataset's image store (WebQA image id, MMQA image path); None for text.
    image_bytes: the encoded image when it travels with the record (TFDS); None means "read it from the
      image store by `image_ref`".
  """

  id: str
  kind: str
  title: str
  text: str
  image_ref: str | None = None
  image_bytes: bytes | None = dataclasses.field(default=None, repr=False)

  def __post_init__(self):
    if self.kind not in (IMAGE, TEXT):
      raise ValueError(f"candidate {self.id!r}: kind must be 'image' or 'text', got {self.kind!r}")
    if self.kind == IMAGE and self.image_ref is None and self.image_bytes is None:
      raise ValueError(f"image candidate {self.id!r} has neither image_ref nor image_bytes")


@dataclasses.dataclass(frozen=True)
class Question:
  """One benchmark question with its own candidate pool (the distractor setting).

  Attributes:
    qid: WebQA Guid / MMQA qid.
    question: question text, surrounding literal quotes stripped.
    answers: reference answers (WebQA `A` sentences; MMQA answer strings); () on test splits.
    category: WebQA `Qcate` / MMQA `metadata.type` (e.g. "ImageQ", "Compose(ImageQ,TextQ)").
    modalities: source modalities the question needs: WebQA ("image",) or ("text",) from the Qcate,
      MMQA sorted `metadata.modalities`.
    candidates: the pool, in file order (WebQA: pos before neg, images after texts).
    gold_ids: ids of the gold sources, a subset of the candidate ids; None on unlabeled splits.
    split: the split name the reader was asked for.
    dataset: "webqa" or "mmqa".
    answer_modalities: MMQA per-answer `modality` (aligned with `answers`); () for WebQA.
  """

  qid: str
  question: str
  answers: tuple[str, ...]
  category: str
  modalities: tuple[str, ...]
  candidates: tuple[Candidate, ...]
  gold_ids: tuple[str, ...] | None
  split: str
  dataset: str
  answer_modalities: tuple[str, ...] = ()

  @property
  def is_labeled(self) -> bool:
    return self.gold_ids is not None

  def candidate_labels(self) -> tuple[int, ...]:
    """1 for each gold candidate, 0 otherwise, aligned with `candidates`. Raises on unlabeled splits."""
    if self.gold_ids is None:
      raise ValueError(f"question {self.qid}: split {self.split!r} has no gold labels")
    gold = set(self.gold_ids)
    return tuple(int(c.id in gold) for c in self.candidates)


class DataError(RunError, ValueError):
  """Bad benchmark input, raised in strict mode (and for unrecoverable files). Names the place."""


@dataclasses.dataclass
class SkipReport:
  """Counts of skipped items per reason, with a few example locations per reason.

  Non-strict readers call `skip(reason, where, detail)` and go on; strict readers raise a `DataError`
  carrying the same message instead. `where` names the file and line or the question id.
  """

  source: str
  strict: bool = False
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  keys: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  max_examples: int = 3

  def skip(self, reason: str, where: str, detail: str = "", key: str | None = None) -> None:
    """Counts one skipped item; `key` (a question id, when known) is kept in `keys[reason]`."""
    message = f"{where}: {reason}" + (f" ({detail})" if detail else "")
    if self.strict:
      raise DataError(message)
    self.counts[reason] += 1
    if key is not None:
      self.keys.setdefault(reason, []).append(key)
    shown = self.examples.setdefault(reason, [])
    if len(shown) < self.max_examples:
      shown.append(message)

  def count(self, reason: str, key: str | None = None) -> None:
    """Counts one removal by a deliberate filter (e.g. the no-table subset): never an error, even if strict."""
    self.counts[reason] += 1
    if key is not None:
      self.keys.setdefault(reason, []).append(key)

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def summary(self) -> str:
    if not self.counts:
      return f"{self.source}: nothing skipped"
    lines = [f"{self.source}: skipped {self.total}"]
    for reason, n in sorted(self.counts.items()):
      lines.append(f"  {reason}: {n}")
      lines.extend(f"    e.g. {m}" for m in self.examples.get(reason, ()))
    return "\n".join(lines)

  def as_dict(self) -> dict[str, int]:
    return dict(sorted(self.counts.items()))

  def log(self) -> None:
    """Prints the summary (readers call this unless verbose=False)."""
    print(self.summary(), flush=True)

  def warn_duplicates(self, path: str, what: str = "id", shown: int = 10) -> None:
    """Logs a warning naming the repeated ids of `path` (the `duplicate_id` skips), when there are any."""
    keys = self.keys.get(DUPLICATE_ID, [])
    if keys:
      more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
      _log.warning("%s: %d repeated %s(s), only the first entry of each kept: %s%s", path, len(keys), what,
                   ", ".join(keys[:shown]), more)
