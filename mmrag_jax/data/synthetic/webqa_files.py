"""Synthetic WebQA in the official file format: `WebQA_train_val.json`, `WebQA_test.json`, `imgs.tsv`,
`imgs.lineidx`.

Questions cover every Qcate (color, shape, number, YesNo, choose, Others, text); answers follow from the
gold facts only. Image ids are 30,000,000 + line number, so `imgs.lineidx[id % 10_000_000]` finds them.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
from typing import Any, Mapping

from mmrag_jax.data.synthetic import world as w
from mmrag_jax.data.synthetic.manifest import READER_DEFECTS, ExpectedQuestion, SyntheticManifest
from mmrag_jax.data.synthetic.scenes import COLORS, Scene, describe, encode_scene

__all__ = ["WEBQA_PLANTABLE", "generate_webqa"]

_QCATES = ("color", "shape", "number", "YesNo", "choose", "Others", "text")
_IMAGE_ID_BASE = 30_000_000
WEBQA_PLANTABLE = ("malformed", "duplicate_id", "missing_image", "undecodable_image", "no_candidates", "no_gold",
                   "empty_question", "duplicate_question", "empty_answer", "long_answer", "small_pool",
                   "truncated_image")


def _quoted(text: str) -> str:
  return f'"{text}"'


class _WebQAWriter:
  """Accumulates image lines and question entries, then writes the four files."""

  def __init__(self, rng: random.Random, entities: list[w.Entity], num_neg_images: int, num_neg_texts: int):
    self.rng = rng
    self.entities = entities
    self.num_neg_images = num_neg_images
    self.num_neg_texts = num_neg_texts
    self.image_lines: list[tuple[int, bytes]] = []
    self.scenes: dict[str, Scene] = {}
    self.entity_image: dict[int, int] = {}
    for e in entities:
      self.entity_image[e.index] = self.add_image(encode_scene(e.scene), e.scene)
    self.snippet = {(e.index, kind): w.hex_id(rng) for e in entities for kind in w.FACT_KINDS}
    self.questions_seen: set[str] = set()

  def add_image(self, data: bytes, scene: Scene | None) -> int:
    image_id = _IMAGE_ID_BASE + len(self.image_lines)
    self.image_lines.append((image_id, data))
    if scene is not None:
      self.scenes[str(image_id)] = scene
    return image_id

  def image_fact(self, e: w.Entity, image_id: int | None = None) -> dict[str, Any]:
    image_id = self.entity_image[e.index] if image_id is None else image_id
    return {"image_id": image_id, "title": e.name, "caption": f"A photo of {e.name}.", "url": e.url,
            "imgUrl": f"https://upload.wikimedia.org/synthetic/{image_id}.jpg"}

  def text_fact(self, e: w.Entity, kind: str) -> dict[str, Any]:
    return {"title": e.name, "fact": e.fact(kind), "url": e.url, "snippet_id": self.snippet[(e.index, kind)]}

  def draft(self, qcate: str) -> tuple[str, str, list[w.Entity], list[tuple[w.Entity, str]]]:
    """(question, answer, gold image entities, gold text facts) for one question of `qcate`."""
    rng, ents = self.rng, self.entities
    e = rng.choice(ents)
    s = e.scene
    if qcate == "color":
      return (f"What color are the shapes in the photo of {e.name}?",
              f"The shapes in the photo of {e.name} are {s.color}.", [e], [])
    if qcate == "shape":
      return (f"What shape is drawn in the photo of {e.name}?",
              f"The photo of {e.name} shows {w.plural(s.shape)}.", [e], [])
    if qcate == "number":
      return (f"How many shapes are in the photo of {e.name}?",
              f"There are {s.count} shapes in the photo of {e.name}.", [e], [])
    if qcate == "YesNo":
      same = [o for o in ents if o is not e and o.scene.color == s.color]
      other = rng.choice(same) if same and rng.random() < 0.5 else w.others(rng, ents, [e], 1)[0]
      answer = ("Yes, the shapes in both photos are the same color." if other.scene.color == s.color
                else "No, the shapes in the two photos have different colors.")
      return (f"Are the shapes in the photos of {e.name} and {other.name} the same color?", answer, [e, other], [])
    if qcate == "choose":
      wrong = rng.choice([c for c in COLORS if c != s.color])
      first, second = rng.sample([s.color, wrong], 2)
      return (f"Are the shapes in the photo of {e.name} {first} or {second}?",
              f"The shapes in the photo of {e.name} are {s.color}.", [e], [])
    if qcate == "Others":
      return (f"What is shown in the photo of {e.name}?", f"The photo of {e.name} shows {describe(s)}.", [e], [])
    if qcate == "text":
      if rng.random() < 0.5:
        return f"In which city is {e.name} located?", f"{e.name} is located in {e.city}.", [], [(e, "city")]
      other = w.others(rng, ents, [e], 1)[0]
      older = e if e.year <= other.year else other
      return (f"Which was founded earlier, {e.name} or {other.name}?",
              f"{older.name} was founded earlier, in {older.year}.", [], [(e, "year"), (other, "year")])
    raise ValueError(qcate)

  def unique_draft(self, qcate: str) -> tuple[str, str, list[w.Entity], list[tuple[w.Entity, str]]]:
    """A draft whose question text was not drawn before (duplicates only ever come from `plant`)."""
    for _ in range(100):
      draft = self.draft(qcate)
      if draft[0] not in self.questions_seen:
        break
    self.questions_seen.add(draft[0])
    return draft

  def entry(self, guid: str, split: str, qcate: str) -> dict[str, Any]:
    """One JSON value of the official format, with distractors (hard ones: same entities, other facts)."""
    question, answer, gold_images, gold_texts = self.unique_draft(qcate)
    gold_entities = gold_images + [e for e, _ in gold_texts]
    image_question = bool(gold_images)
    n_neg_img = self.num_neg_images if image_question else max(1, self.num_neg_images // 2)
    n_neg_txt = self.num_neg_texts
    neg_images = w.confusable(self.rng, self.entities, gold_images, n_neg_img, like=gold_entities)
    hard_texts = [(e, k) for e in gold_entities for k in w.FACT_KINDS if (e, k) not in gold_texts]
    easy_texts = [(e, self.rng.choice(w.FACT_KINDS)) for e in w.confusable(self.rng, self.entities, gold_entities,
                                                                             n_neg_txt)]
    neg_texts = (hard_texts + easy_texts)[:n_neg_txt]
    pos_txt = [self.text_fact(e, k) for e, k in gold_texts]
    neg_txt = [self.text_fact(e, k) for e, k in neg_texts]
    pos_img = [self.image_fact(e) for e in gold_images]
    neg_img = [self.image_fact(e) for e in neg_images]
    value: dict[str, Any] = {"Guid": guid, "split": split, "Qcate": qcate, "topic": "synthetic landmarks",
                             "Q": _quoted(question)}
    if split == "test":
      value["txt_Facts"] = self.rng.sample(pos_txt + neg_txt, len(pos_txt + neg_txt))
      value["img_Facts"] = self.rng.sample(pos_img + neg_img, len(pos_img + neg_img))
    else:
      value.update(A=[_quoted(answer)], txt_posFacts=pos_txt, txt_negFacts=neg_txt, img_posFacts=pos_img,
                   img_negFacts=neg_img)
    return value

  def write_images(self, out_dir: str) -> None:
    offsets = []
    with open(os.path.join(out_dir, "imgs.tsv"), "wb") as f:
      for image_id, data in self.image_lines:
        offsets.append(f.tell())
        f.write(f"{image_id}\t".encode() + base64.b64encode(data) + b"\n")
    with open(os.path.join(out_dir, "imgs.lineidx"), "w") as f:
      f.write("".join(f"{o}\n" for o in offsets))


def _expected_from_entry(value: dict[str, Any]) -> ExpectedQuestion:
  """What the reader must make of one (valid) entry: ids in the reader's pool order, stripped quotes."""
  split = value["split"]
  if split == "test":
    ids = [f["snippet_id"] for f in value["txt_Facts"]] + [str(f["image_id"]) for f in value["img_Facts"]]
    gold, answers = None, []
  else:
    ids = ([f["snippet_id"] for f in value["txt_posFacts"] + value["txt_negFacts"]]
           + [str(f["image_id"]) for f in value["img_posFacts"] + value["img_negFacts"]])
    gold = [f["snippet_id"] for f in value["txt_posFacts"]] + [str(f["image_id"]) for f in value["img_posFacts"]]
    answers = [a.strip('"') for a in value["A"]]
  return ExpectedQuestion(qid=value["Guid"], split=split, category=value["Qcate"], question=value["Q"].strip('"'),
                          answers=answers, candidate_ids=ids, gold_ids=gold,
                          modalities=["text"] if value["Qcate"] == "text" else ["image"])


def _plant(writer: _WebQAWriter, kind: str, value: dict[str, Any], earlier: tuple[str, str] | None) -> None:
  """Turns a valid entry into one carrying defect `kind` (in place); `earlier` is the (Guid, Q) of the
  split's first valid entry, which `duplicate_id` and `duplicate_question` repeat."""
  rng = writer.rng
  if kind in ("duplicate_id", "duplicate_question") and earlier is None:
    raise ValueError(f"planting {kind!r} needs a valid question of the same split to repeat")
  if kind == "malformed":
    del value["Q"]
  elif kind == "missing_image":
    value["img_negFacts"].append(writer.image_fact(writer.entities[0], _IMAGE_ID_BASE + 9_000_000))
  elif kind == "undecodable_image":
    image_id = writer.add_image(b"these bytes are not an image " + rng.randbytes(64), None)
    value["img_negFacts"].append(writer.image_fact(writer.entities[0], image_id))
  elif kind == "no_candidates":
    for key in ("txt_posFacts", "txt_negFacts", "img_posFacts", "img_negFacts"):
      value[key] = []
  elif kind == "no_gold":
    value["txt_posFacts"], value["img_posFacts"] = [], []
  elif kind == "empty_question":
    value["Q"] = '""'
  elif kind == "duplicate_id":
    value["Guid"] = earlier[0]  # written under the same key: the file holds that key twice
  elif kind == "duplicate_question":
    value["Q"] = earlier[1]
  elif kind == "empty_answer":
    value["A"] = ['""']
  elif kind == "long_answer":
    value["A"] = [_quoted(" ".join(["the answer goes on and on"] * 20))]
  elif kind == "small_pool":
    value["txt_negFacts"], value["img_negFacts"] = [], []
  elif kind == "truncated_image":
    e = writer.entities[1]
    data = encode_scene(dataclasses.replace(e.scene, image_format="JPEG"))
    image_id = writer.add_image(data[: len(data) * 2 // 3], None)
    value["img_negFacts"].append(writer.image_fact(e, image_id))
  else:
    raise ValueError(f"cannot plant {kind!r} in WebQA; choose from {WEBQA_PLANTABLE}")


def generate_webqa(out_dir: str, *, num_train: int, num_val: int, num_test: int, seed: int = 0,
                   plant: Mapping[str, int] | None = None, plant_split: str = "train",
                   num_entities: int | None = None, num_neg_images: int = 4, num_neg_texts: int = 3
                   ) -> SyntheticManifest:
  """Writes a synthetic WebQA into `out_dir` and returns (and saves) its manifest.

  `num_train` / `num_val` / `num_test` count the valid questions per split; `plant` adds that many extra
  questions of `plant_split` ("train" or "val") per defect kind (see `WEBQA_PLANTABLE`). Same
  arguments, same bytes.
  """
  if plant_split not in ("train", "val"):
    raise ValueError(f"plant_split must be 'train' or 'val', got {plant_split!r}")
  rng = random.Random(seed)
  os.makedirs(out_dir, exist_ok=True)
  entities = w.make_world(rng, num_entities or max(8, (num_train + num_val + num_test) // 2))
  writer = _WebQAWriter(rng, entities, num_neg_images, num_neg_texts)
  manifest = SyntheticManifest(dataset="webqa", seed=seed)
  # (Guid, entry) pairs rather than a dict: a planted `duplicate_id` repeats a key.
  train_val: list[tuple[str, dict[str, Any]]] = []
  test: list[tuple[str, dict[str, Any]]] = []
  for split, n, target in (("train", num_train, train_val), ("val", num_val, train_val), ("test", num_test, test)):
    for i in range(n):
      guid = w.hex_id(rng)
      target.append((guid, writer.entry(guid, split, _QCATES[i % len(_QCATES)])))
      manifest.questions[guid] = _expected_from_entry(target[-1][1])
  earlier = next(((g, v["Q"]) for g, v in train_val if v["split"] == plant_split), None)
  for kind, count in sorted((plant or {}).items()):
    for i in range(count):
      value = writer.entry(w.hex_id(rng), plant_split, _QCATES[i % len(_QCATES)])
      _plant(writer, kind, value, earlier)
      train_val.append((value["Guid"], value))
      manifest.plant(kind, value["Guid"])
      if kind not in READER_DEFECTS:
        manifest.questions[value["Guid"]] = _expected_from_entry(value)
  manifest.scenes = dict(writer.scenes)
  writer.write_images(out_dir)
  _write_json_object(os.path.join(out_dir, "WebQA_train_val.json"), train_val)
  _write_json_object(os.path.join(out_dir, "WebQA_test.json"), test)
  manifest.save(out_dir)
  return manifest


def _write_json_object(path: str, pairs: list[tuple[str, Any]]) -> None:
  """One JSON object with these members in order (repeated keys written as given), as `json.dump` would."""
  members = (f"{json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)}" for k, v in pairs)
  with open(path, "w", encoding="utf-8") as f:
    f.write("{" + ", ".join(members) + "}")
