"""The TFDS feature spec of a `Question`, and conversion both ways (no TensorFlow needed).

Images travel inside the record as encoded bytes (`Tensor(shape=(), dtype=object)`), so a built dataset
needs no image store. TFDS returns text as bytes and empty sequences as empty lists; `example_to_question`
undoes both.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from mmrag_jax.data.records import IMAGE, Candidate, Question

__all__ = ["TFDSQuestions", "example_to_question", "question_features", "question_to_example"]


def question_features() -> tfds.features.FeaturesDict:
  text = tfds.features.Text
  return tfds.features.FeaturesDict({
      "qid": text(),
      "question": text(),
      "answers": tfds.features.Sequence(text()),
      "answer_modalities": tfds.features.Sequence(text()),
      "category": text(),
      "modalities": tfds.features.Sequence(text()),
      "split": text(),
      "dataset": text(),
      "labeled": np.bool_,
      "gold_ids": tfds.features.Sequence(text()),
      "candidates": tfds.features.Sequence({
          "id": text(),
          "kind": text(),
          "title": text(),
          "text": text(),
          "image_ref": text(),
          "image_bytes": tfds.features.Tensor(shape=(), dtype=np.object_),
      }),
  })


def question_to_example(question: Question, image_bytes: dict[str, bytes]) -> dict[str, Any]:
  """A `Question` as a TFDS example; `image_bytes` maps each image candidate's id to its encoded image."""
  return {
      "qid": question.qid,
      "question": question.question,
      "answers": list(question.answers),
      "answer_modalities": list(question.answer_modalities),
      "category": question.category,
      "modalities": list(question.modalities),
      "split": question.split,
      "dataset": question.dataset,
      "labeled": question.gold_ids is not None,
      "gold_ids": list(question.gold_ids or ()),
      "candidates": [{
          "id": c.id, "kind": c.kind, "title": c.title, "text": c.text, "image_ref": c.image_ref or "",
          "image_bytes": image_bytes[c.id] if c.kind == IMAGE else b"",
      } for c in question.candidates],
  }


def _str(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _strs(values: Any) -> tuple[str, ...]:
  return tuple(_str(v) for v in values)


def example_to_question(example: dict[str, Any]) -> Question:
  """Inverse of `question_to_example`: image candidates carry their bytes in `image_bytes`."""
  cands = example["candidates"]
  candidates = []
  for i in range(len(cands["id"])):
    kind = _str(cands["kind"][i])
    is_image = kind == IMAGE
    candidates.append(Candidate(
        id=_str(cands["id"][i]), kind=kind, title=_str(cands["title"][i]), text=_str(cands["text"][i]),
        image_ref=_str(cands["image_ref"][i]) if is_image else None,
        image_bytes=bytes(cands["image_bytes"][i]) if is_image else None))
  return Question(
      qid=_str(example["qid"]), question=_str(example["question"]), answers=_strs(example["answers"]),
      category=_str(example["category"]), modalities=_strs(example["modalities"]),
      candidates=tuple(candidates), gold_ids=_strs(example["gold_ids"]) if bool(example["labeled"]) else None,
      split=_str(example["split"]), dataset=_str(example["dataset"]),
      answer_modalities=_strs(example["answer_modalities"]))


class TFDSQuestions(Sequence[Question]):
  """Random-access `Question`s over a `tfds.data_source` split (picklable, decoded on access)."""

  def __init__(self, source: Any):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> Question:  # type: ignore[override]
    if not -len(self) <= index < len(self):
      raise IndexError(index)
    return example_to_question(self.source[index % len(self)])
