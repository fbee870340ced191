"""Synthetic MultimodalQA in the official file format: `MMQA_{train,dev,test}.jsonl.gz`,
`MMQA_texts.jsonl.gz`, `MMQA_images.jsonl.gz`, `MMQA_tables.jsonl.gz` and `final_dataset_images/`.

Question types: TextQ (text), ImageQ and ImageListQ (image), Compose(ImageQ,TextQ) (image+text), plus
TableQ and Compose(TableQ,ImageListQ) questions that the default (no-table) subset drops. Every question
has 10 text docs and 0-6 image docs; answers are short spans as in the real data.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from typing import Any, Mapping

from mmrag_jax.data.synthetic import world as w
from mmrag_jax.data.synthetic.manifest import READER_DEFECTS, ExpectedQuestion, SyntheticManifest
from mmrag_jax.data.synthetic.scenes import SHAPES, encode_scene

__all__ = ["MMQA_PLANTABLE", "generate_mmqa"]

_NON_TABLE_TYPES = ("TextQ", "ImageQ", "ImageListQ", "Compose(ImageQ,TextQ)")
_TABLE_TYPES = ("TableQ", "Compose(TableQ,ImageListQ)")
_MODALITIES = {"TextQ": ["text"], "ImageQ": ["image"], "ImageListQ": ["image"],
               "Compose(ImageQ,TextQ)": ["image", "text"], "TableQ": ["table"],
               "Compose(TableQ,ImageListQ)": ["image", "table"]}
MMQA_PLANTABLE = ("malformed", "duplicate_id", "missing_image", "undecodable_image", "no_candidates", "no_gold",
                  "missing_document")
_TEXTS_PER_QUESTION = 10


class _MMQAWriter:

  def __init__(self, rng: random.Random, entities: list[w.Entity]):
    self.rng = rng
    self.entities = entities
    self.text_doc = {(e.index, k): w.hex_id(rng) for e in entities for k in w.FACT_KINDS}
    self.image_doc = {e.index: w.hex_id(rng) for e in entities}
    self.image_path = {e.index: f"{e.name.replace(' ', '_')}.{'png' if e.scene.image_format == 'PNG' else 'jpg'}"
                       for e in entities}
    # One table per 4 landmarks: name, city, founding year.
    self.tables = []
    for start in range(0, len(entities), 4):
      group = entities[start:start + 4]
      self.tables.append((w.hex_id(rng), group))
    self.table_of = {e.index: tid for tid, group in self.tables for e in group}
    self.questions_seen: set[str] = set()
    self.extra_images: list[dict[str, Any]] = []
    self.extra_files: dict[str, bytes] = {}

  def _answer(self, text: str, modality: str, docs: list[str], kind: str = "string") -> dict[str, Any]:
    return {"answer": text, "type": kind, "modality": modality,
            "text_instances": [{"doc_id": d, "part": "text", "start_byte": 0, "text": text}
                               for d in docs if modality == "text"],
            "table_indices": [[0, 1]] if modality == "table" else [],
            "image_instances": [{"doc_id": d, "doc_part": "image"} for d in docs if modality == "image"]}

  def draft(self, qtype: str) -> tuple[str, list[dict[str, Any]], list[tuple[str, str]], list[w.Entity]]:
    """(question, answers, supporting (doc_id, part) pairs, entities the question is about)."""
    rng, ents = self.rng, self.entities
    e = rng.choice(ents)
    s = e.scene
    img, txt = self.image_doc, self.text_doc
    if qtype == "TextQ":
      if rng.random() < 0.5:
        doc = txt[(e.index, "city")]
        return f"In which city is {e.name} located?", [self._answer(e.city, "text", [doc])], [(doc, "text")], [e]
      doc = txt[(e.index, "year")]
      return f"In what year was {e.name} founded?", [self._answer(str(e.year), "text", [doc])], [(doc, "text")], [e]
    if qtype == "ImageQ":
      doc = img[e.index]
      if rng.random() < 0.5:
        return (f"What color are the shapes in the picture of {e.name}?", [self._answer(s.color, "image", [doc])],
                [(doc, "image")], [e])
      shape = rng.choice([s.shape, rng.choice(SHAPES)])
      answer = "yes" if shape == s.shape else "no"
      return (f"Are there {w.plural(shape)} in the picture of {e.name}?",
              [self._answer(answer, "image", [doc], "yesno")], [(doc, "image")], [e])
    if qtype == "ImageListQ":
      matching = [o for o in ents if o.scene.color == s.color and o is not e][:1]
      group = [e] + matching
      return (f"Which landmarks have pictures with {s.color} shapes?",
              [self._answer(o.name, "image", [img[o.index]]) for o in group],
              [(img[o.index], "image") for o in group], group)
    if qtype == "Compose(ImageQ,TextQ)":
      doc_t, doc_i = txt[(e.index, "city")], img[e.index]
      return (f"What color are the shapes in the picture of the landmark located in {e.city}?",
              [self._answer(s.color, "image", [doc_i])], [(doc_t, "text"), (doc_i, "image")], [e])
    if qtype == "TableQ":
      tid = self.table_of[e.index]
      return (f"According to the table, in what year was {e.name} founded?",
              [self._answer(str(e.year), "table", [])], [(tid, "table")], [e])
    if qtype == "Compose(TableQ,ImageListQ)":
      tid = self.table_of[e.index]
      return (f"Which landmark founded in {e.year} has a picture of {s.color} shapes?",
              [self._answer(e.name, "image", [img[e.index]])], [(tid, "table"), (img[e.index], "image")], [e])
    raise ValueError(qtype)

  def line(self, qtype: str, split: str) -> dict[str, Any]:
    for _ in range(100):  # a question text not drawn before
      question, answers, supporting, about = self.draft(qtype)
      if question not in self.questions_seen:
        break
    self.questions_seen.add(question)
    rng = self.rng
    gold_texts = [d for d, part in supporting if part == "text"]
    gold_images = [d for d, part in supporting if part == "image"]
    hard = [self.text_doc[(e.index, k)] for e in about for k in w.FACT_KINDS]
    distractors = [self.text_doc[(e.index, rng.choice(w.FACT_KINDS))] for e in w.others(rng, self.entities, about,
                                                                                        _TEXTS_PER_QUESTION)]
    text_ids = list(dict.fromkeys(gold_texts + hard + distractors))[:_TEXTS_PER_QUESTION]
    text_ids = rng.sample(text_ids, len(text_ids))
    n_image_distractors = rng.randint(2, 4) if "image" in _MODALITIES[qtype] else rng.randint(0, 2)
    image_ids = gold_images + [self.image_doc[o.index] for o in w.others(rng, self.entities, about,
                                                                           n_image_distractors)]
    image_ids = rng.sample(image_ids, len(image_ids))
    metadata = {"type": qtype, "modalities": _MODALITIES[qtype], "wiki_entities_in_question": [],
                "wiki_entities_in_answers": [], "pseudo_language_question": question,
                "rephrasing_meta": {"accuracy": 1.0, "edit_distance": 0.0, "confidence": 1.0},
                "image_doc_ids": image_ids, "text_doc_ids": text_ids, "intermediate_answers": [],
                "table_id": self.table_of[about[0].index]}
    line = {"qid": w.hex_id(rng), "question": question, "metadata": metadata}
    if split != "test":
      line["answers"] = answers
      line["supporting_context"] = [{"doc_id": d, "doc_part": part} for d, part in supporting]
    return line

  def contexts(self) -> tuple[list[dict], list[dict], list[dict]]:
    texts = [{"title": e.name, "url": e.url, "id": self.text_doc[(e.index, k)], "text": e.fact(k)}
             for e in self.entities for k in w.FACT_KINDS]
    images = [{"title": e.name, "url": e.url, "id": self.image_doc[e.index], "path": self.image_path[e.index]}
              for e in self.entities] + self.extra_images
    tables = [{"title": "Landmarks", "url": "https://en.wikipedia.org/wiki/Landmarks", "id": tid,
               "table": {"table_name": "Landmarks and their cities",
                         "header": [{"column_name": c, "metadata": {}} for c in ("Name", "City", "Founded")],
                         "table_rows": [[{"text": t, "links": []} for t in (e.name, e.city, str(e.year))]
                                        for e in group]}}
              for tid, group in self.tables]
    return texts, images, tables


def _expected_from_line(line: dict[str, Any], split: str, include_tables: bool = False) -> ExpectedQuestion:
  """What the reader must make of one valid line: texts (then the table), then images; gold in file order."""
  md = line["metadata"]
  ids = list(md["text_doc_ids"]) + ([md["table_id"]] if include_tables else []) + list(md["image_doc_ids"])
  gold = None
  answers: list[str] = []
  if split != "test":
    gold = [s["doc_id"] for s in line["supporting_context"] if s["doc_id"] in ids]
    answers = [a["answer"] for a in line["answers"]]
  return ExpectedQuestion(qid=line["qid"], split=split, category=md["type"], question=line["question"],
                          answers=answers, candidate_ids=ids, gold_ids=gold, modalities=sorted(md["modalities"]))


def _plant(writer: _MMQAWriter, kind: str, line: dict[str, Any], earlier_qid: str | None) -> str | None:
  """Alters a valid line to carry defect `kind`; returns raw text for a malformed line. `earlier_qid` is
  the split's first qid, which `duplicate_id` repeats."""
  md = line["metadata"]
  if kind == "malformed":
    return json.dumps(line)[:-20]
  if kind == "duplicate_id":
    if earlier_qid is None:
      raise ValueError("planting 'duplicate_id' needs a valid question of the same split to repeat")
    line["qid"] = earlier_qid
  elif kind in ("missing_image", "undecodable_image"):
    doc_id = w.hex_id(writer.rng)
    path = f"planted_{kind}.jpg"
    writer.extra_images.append({"title": "Planted", "url": "https://example.org", "id": doc_id, "path": path})
    if kind == "undecodable_image":
      writer.extra_files[path] = b"\x00not an image\x00" * 8
    md["image_doc_ids"].append(doc_id)
  elif kind == "no_candidates":
    md["image_doc_ids"], md["text_doc_ids"] = [], []
  elif kind == "no_gold":
    line["supporting_context"] = [{"doc_id": w.hex_id(writer.rng), "doc_part": "text"}]
  elif kind == "missing_document":
    md["text_doc_ids"][0] = w.hex_id(writer.rng)
  else:
    raise ValueError(f"cannot plant {kind!r} in MMQA; choose from {MMQA_PLANTABLE}")
  return None


def _write_jsonl_gz(path: str, lines: list[dict[str, Any] | str]) -> None:
  # mtime=0 keeps the gzip bytes identical across runs with the same seed.
  with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
    for line in lines:
      f.write(((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n").encode("utf-8"))


def generate_mmqa(out_dir: str, *, num_train: int, num_dev: int, num_test: int, seed: int = 0,
                  plant: Mapping[str, int] | None = None, plant_split: str = "train",
                  num_entities: int | None = None, table_fraction: float = 0.2) -> SyntheticManifest:
  """Writes a synthetic MultimodalQA into `out_dir` and returns (and saves) its manifest.

  `num_*` count the non-table questions per split; about `table_fraction` as many table questions are
  added on top (the default reader drops them). `plant` adds defective questions of `plant_split`
  ("train" or "dev") per kind.
  """
  if plant_split not in ("train", "dev"):
    raise ValueError(f"plant_split must be 'train' or 'dev', got {plant_split!r}")
  rng = random.Random(seed)
  image_dir = os.path.join(out_dir, "final_dataset_images")
  os.makedirs(image_dir, exist_ok=True)
  entities = w.make_world(rng, num_entities or max(12, (num_train + num_dev + num_test) // 2))
  writer = _MMQAWriter(rng, entities)
  manifest = SyntheticManifest(dataset="mmqa", seed=seed)
  for split, n in (("train", num_train), ("dev", num_dev), ("test", num_test)):
    lines: list[dict[str, Any] | str] = []
    n_tables = max(1, round(n * table_fraction)) if n and table_fraction > 0 else 0
    for i in range(n + n_tables):
      table = i >= n
      qtype = _TABLE_TYPES[i % 2] if table else _NON_TABLE_TYPES[i % len(_NON_TABLE_TYPES)]
      line = writer.line(qtype, split)
      lines.append(line)
      target = manifest.table_questions if table else manifest.questions
      target[line["qid"]] = _expected_from_line(line, split, include_tables=table)
    if split == plant_split:
      earlier_qid = next((line["qid"] for line in lines if not isinstance(line, str)), None)
      for kind, count in sorted((plant or {}).items()):
        for i in range(count):
          line = writer.line(_NON_TABLE_TYPES[i % len(_NON_TABLE_TYPES)], split)
          raw = _plant(writer, kind, line, earlier_qid)
          lines.append(raw if raw is not None else line)
          manifest.plant(kind, line["qid"])
          if kind not in READER_DEFECTS:
            manifest.questions[line["qid"]] = _expected_from_line(line, split)
    _write_jsonl_gz(os.path.join(out_dir, f"MMQA_{split}.jsonl.gz"), lines)
  texts, images, tables = writer.contexts()
  _write_jsonl_gz(os.path.join(out_dir, "MMQA_texts.jsonl.gz"), texts)
  _write_jsonl_gz(os.path.join(out_dir, "MMQA_images.jsonl.gz"), images)
  _write_jsonl_gz(os.path.join(out_dir, "MMQA_tables.jsonl.gz"), tables)
  for e in entities:
    with open(os.path.join(image_dir, writer.image_path[e.index]), "wb") as f:
      f.write(encode_scene(e.scene))
    manifest.scenes[writer.image_path[e.index]] = e.scene
  for path, data in writer.extra_files.items():
    with open(os.path.join(image_dir, path), "wb") as f:
      f.write(data)
  manifest.save(out_dir)
  return manifest

