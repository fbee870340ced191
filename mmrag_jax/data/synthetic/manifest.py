"""What a synthetic generator wrote: the ground truth tests compare readers against.

`questions` holds every question a non-strict reader that decodes images (`image_check="decode"`) must
return, exactly as generated;
`planted` maps each defect kind to the ids of the questions that carry it (for `duplicate_id`, the id
the defective entry repeats: its first, valid entry is the one in `questions`); `scenes` maps each valid
image reference to the scene drawn into it.
"""

from __future__ import annotations

import dataclasses
import json
import os

from mmrag_jax.data.synthetic.scenes import Scene

__all__ = ["ExpectedQuestion", "MINI_WEBQA_DEFECTS", "READER_DEFECTS", "SyntheticManifest"]

# Defects a reader skips (and counts under the same name).
READER_DEFECTS = ("malformed", "duplicate_id", "missing_image", "undecodable_image", "no_candidates", "no_gold",
                  "missing_document")
# Defects readers keep but the Mini-WebQA rules remove (named as the rules).
MINI_WEBQA_DEFECTS = ("empty_question", "duplicate_question", "empty_answer", "long_answer", "small_pool")
# Oddities that must be tolerated: a truncated JPEG still decodes (as the official loader does).
_TOLERATED = ("truncated_image",)
_MANIFEST_FILE = "synthetic_manifest.json"


@dataclasses.dataclass
class ExpectedQuestion:
  qid: str
  split: str
  category: str
  question: str
  answers: list[str]
  candidate_ids: list[str]  # in the order the reader lists them
  gold_ids: list[str] | None
  modalities: list[str]


@dataclasses.dataclass
class SyntheticManifest:
  dataset: str
  seed: int
  questions: dict[str, ExpectedQuestion] = dataclasses.field(default_factory=dict)
  planted: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  scenes: dict[str, Scene] = dataclasses.field(default_factory=dict)
  # MMQA questions over tables: dropped by the default reader, returned with `include_tables=True`.
  table_questions: dict[str, ExpectedQuestion] = dataclasses.field(default_factory=dict)

  def split_ids(self, split: str) -> list[str]:
    """Ids of the questions a reader must return for `split`, in file order."""
    return [q.qid for q in self.questions.values() if q.split == split]

  def plant(self, kind: str, qid: str) -> None:
    self.planted.setdefault(kind, []).append(qid)

  def save(self, out_dir: str) -> str:
    path = os.path.join(out_dir, _MANIFEST_FILE)
    data = {"dataset": self.dataset, "seed": self.seed,
            "questions": {k: dataclasses.asdict(v) for k, v in self.questions.items()},
            "planted": self.planted,
            "scenes": {k: dataclasses.asdict(v) for k, v in self.scenes.items()},
            "table_questions": {k: dataclasses.asdict(v) for k, v in self.table_questions.items()}}
    with open(path, "w", encoding="utf-8") as f:
      json.dump(data, f, indent=1)
    return path

  @classmethod
  def load(cls, out_dir: str) -> "SyntheticManifest":
    with open(os.path.join(out_dir, _MANIFEST_FILE), encoding="utf-8") as f:
      data = json.load(f)
    return cls(dataset=data["dataset"], seed=data["seed"],
               questions={k: ExpectedQuestion(**v) for k, v in data["questions"].items()},
               planted=data["planted"], scenes={k: Scene(**v) for k, v in data["scenes"].items()},
               table_questions={k: ExpectedQuestion(**v) for k, v in data["table_questions"].items()})
