"""MultimodalQA reader: `MMQA_{train,dev,test}.jsonl.gz` + context files + image folder -> `Question`s.

File format (allenai/multimodalqa release):
  question line: {qid, question, answers: [{answer, type, modality, ...}], metadata: {type, modalities,
                  image_doc_ids, text_doc_ids, table_id, ...}, supporting_context: [{doc_id, doc_part}]}
                 (test lines have no `answers` / `supporting_context`)
  MMQA_texts.jsonl.gz   {title, url, id, text}
  MMQA_images.jsonl.gz  {title, url, id, path}   path relative to the image folder
  MMQA_tables.jsonl.gz  {title, url, id, table: {table_rows, table_name, header}}   (optional)

Default subset (retrieval-augmented setting of RAMQA and most likely the paper): questions whose modalities
involve tables are dropped; pool = text_doc_ids ∪ image_doc_ids; gold = supporting_context doc ids.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterator, NamedTuple

from mmrag_jax.data.files import iter_json_lines
from mmrag_jax.data.images import DirectoryImageStore, ImageChecker
from mmrag_jax.data.records import DUPLICATE_ID, IMAGE, TEXT, Candidate, Question, SkipReport

__all__ = [
    "MMQAData", "MMQA_SPLITS", "is_table_question", "iter_mmqa_file", "parse_answers", "question_file", "read_mmqa",
    "supporting_doc_ids",
]

MMQA_SPLITS = ("train", "dev", "test")
_TEXTS_FILE = "MMQA_texts.jsonl.gz"
_IMAGES_FILE = "MMQA_images.jsonl.gz"
_TABLES_FILE = "MMQA_tables.jsonl.gz"
_IMAGE_DIR = "final_dataset_images"
_TABLE = "table"

# Sub-question kinds inside a metadata.type such as "Compose(TableQ,ImageListQ)".
_TYPE_MODALITY = {"TextQ": TEXT, "ImageQ": IMAGE, "ImageListQ": IMAGE, "TableQ": _TABLE}


class MMQAData(NamedTuple):
  """What `read_mmqa` returns: the questions, the image store they reference, and the skip report."""

  questions: list[Question]
  images: DirectoryImageStore
  skipped: SkipReport


def question_file(data_dir: str, split: str) -> str:
  if split not in MMQA_SPLITS:
    raise ValueError(f"MMQA split must be one of {MMQA_SPLITS}, got {split!r}")
  return os.path.join(data_dir, f"MMQA_{split}.jsonl.gz")


def iter_mmqa_file(path: str, report: SkipReport) -> Iterator[tuple[int, str, dict[str, Any]]]:
  """(line number, "FILE line N", object) of every JSON-object line of an MMQA file (`iter_json_lines`).

  Lines that are not UTF-8 (the byte offset is named) or not a JSON object are reported as 'malformed'
  (raised in strict mode); blank lines are ignored. A truncated or corrupt gzip stream raises `DataError`.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"MMQA file not found: {path}")
  return iter_json_lines(path, skipped=report)


def _load_contexts(path: str, required: tuple[str, ...], report: SkipReport) -> dict[str, dict[str, Any]]:
  """Context file -> {id: entry}; entries missing a required field are reported as 'malformed'."""
  contexts = {}
  for _, where, obj in iter_mmqa_file(path, report):
    missing = [k for k in ("id", *required) if k not in obj]
    if missing:
      report.skip("malformed", where, f"missing field(s) {missing}")
      continue
    contexts[str(obj["id"])] = obj
  return contexts


def _question_modalities(metadata: dict[str, Any]) -> tuple[str, ...]:
  """Sorted `metadata.modalities`; inferred from `metadata.type` when the field is absent."""
  modalities = metadata.get("modalities")
  if modalities is None:
    kinds = re.findall(r"[A-Za-z]+Q", str(metadata.get("type", "")))
    modalities = {_TYPE_MODALITY[k] for k in kinds if k in _TYPE_MODALITY}
  return tuple(sorted(set(str(m) for m in modalities)))


def is_table_question(metadata: dict[str, Any]) -> bool:
  """Whether the question's modalities involve tables (dropped from the default no-table subset)."""
  return _TABLE in _question_modalities(metadata)


def parse_answers(line: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(answer strings, their `modality`s) of a labeled question line. Raises KeyError / TypeError."""
  answers = line["answers"]
  return tuple(str(a["answer"]) for a in answers), tuple(str(a.get("modality", "")) for a in answers)


def supporting_doc_ids(line: dict[str, Any]) -> tuple[str, ...]:
  """The `supporting_context` doc ids of a labeled question line, each once. Raises KeyError / TypeError."""
  return tuple(dict.fromkeys(str(s["doc_id"]) for s in line["supporting_context"]))


def _linearize_table(table_entry: dict[str, Any], max_rows: int = 30) -> str:
  """A table as one text: 'name. col1 | col2 ; cell | cell ; …' (first `max_rows` rows)."""
  table = table_entry["table"]
  header = " | ".join(str(h.get("column_name", "")) for h in table.get("header", []))
  rows = [" | ".join(str(cell.get("text", "")) for cell in row) for row in table.get("table_rows", [])[:max_rows]]
  return " ; ".join([f"{table.get('table_name', '')}. {header}", *rows])


class _Skip(Exception):
  """A question that cannot be used: `reason` is the skip-report key."""

  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason = reason


@dataclasses.dataclass
class _Contexts:
  """The context files, and the image checks, that turn a question's doc ids into its candidate pool."""

  texts: dict[str, dict[str, Any]]
  images: dict[str, dict[str, Any]]
  tables: dict[str, dict[str, Any]] | None  # None: tables excluded
  checker: ImageChecker

  def pool(self, metadata: dict[str, Any]) -> list[Candidate]:
    """Texts, then the table (when included), then images, each id once, in metadata order."""
    candidates = []
    for doc_id in dict.fromkeys(str(i) for i in metadata.get("text_doc_ids") or []):
      if doc_id not in self.texts:
        raise _Skip("missing_document", f"text doc {doc_id} not in {_TEXTS_FILE}")
      doc = self.texts[doc_id]
      candidates.append(Candidate(id=doc_id, kind=TEXT, title=str(doc.get("title", "")), text=str(doc["text"])))
    table_id = metadata.get("table_id")
    if self.tables is not None and table_id:
      if str(table_id) not in self.tables:
        raise _Skip("missing_document", f"table {table_id} not in {_TABLES_FILE}")
      doc = self.tables[str(table_id)]
      candidates.append(Candidate(id=str(table_id), kind=TEXT, title=str(doc.get("title", "")),
                                  text=_linearize_table(doc)))
    for doc_id in dict.fromkeys(str(i) for i in metadata.get("image_doc_ids") or []):
      if doc_id not in self.images:
        raise _Skip("missing_image", f"image doc {doc_id} not in {_IMAGES_FILE}")
      doc = self.images[doc_id]
      ref = str(doc["path"])
      bad_image = self.checker.problem(ref)
      if bad_image is not None:
        raise _Skip(bad_image.reason, str(bad_image))
      # MMQA images have no caption: the title is all the text they come with.
      candidates.append(Candidate(id=doc_id, kind=IMAGE, title=str(doc.get("title", "")), text="", image_ref=ref))
    return candidates


def _parse_line(line: dict[str, Any], split: str, contexts: _Contexts) -> Question:
  """One question line -> Question. Raises KeyError / TypeError (malformed) or `_Skip`."""
  qid, text, metadata = str(line["qid"]), line["question"], line["metadata"]
  if not isinstance(text, str) or not isinstance(metadata, dict):
    raise TypeError("'question' must be a string and 'metadata' an object")
  modalities = _question_modalities(metadata)
  labeled = split != "test"
  answers, answer_modalities, supporting = (), (), ()
  if labeled:
    answers, answer_modalities = parse_answers(line)
    supporting = supporting_doc_ids(line)
  if _TABLE in modalities and contexts.tables is None:
    raise _Skip("table_question", "")
  candidates = contexts.pool(metadata)
  if not candidates:
    raise _Skip("no_candidates", "empty text_doc_ids and image_doc_ids")
  gold_ids = None
  if labeled:
    pool = {c.id for c in candidates}
    gold_ids = tuple(d for d in supporting if d in pool)
    if not gold_ids:
      raise _Skip("no_gold", "no supporting_context doc in the candidate pool")
  return Question(qid=qid, question=text.strip(), answers=answers, category=str(metadata.get("type", "")),
                  modalities=modalities, candidates=tuple(candidates), gold_ids=gold_ids, split=split,
                  dataset="mmqa", answer_modalities=answer_modalities)


def read_mmqa(data_dir: str, split: str, *, image_dir: str | None = None, include_tables: bool = False,
              image_check: str = "exists", strict: bool = False, verbose: bool = True,
              limit: int | None = None) -> MMQAData:
  """Reads one MultimodalQA split into normalized `Question`s.

  Args:
    data_dir: folder with `MMQA_{split}.jsonl.gz`, `MMQA_texts.jsonl.gz`, `MMQA_images.jsonl.gz`
      (and `MMQA_tables.jsonl.gz` when `include_tables`).
    split: "train", "dev" or "test" (test: `gold_ids=None`, `answers=()`).
    image_dir: folder the image `path`s are relative to; default `data_dir/final_dataset_images`.
    include_tables: keep table questions, with the table as one extra text candidate (id = table_id).
      Default False: the no-table subset (removals counted as `table_question`, never an error).
    image_check: "off", "exists" (file present) or "decode" (every referenced image decoded once).
    strict: raise a `DataError` naming the file and line / qid at the first bad item.
    verbose: print the skip summary.
    limit: stop after this many accepted questions.

  Returns:
    `MMQAData(questions, images, skipped)`; questions in file order. Skip reasons: `malformed` (also a
    line that is not UTF-8), `duplicate_id` (a qid an earlier line had: the first is kept),
    `missing_document` (text/table id not in its context file), `missing_image` (image id not in
    MMQA_images or file absent), `undecodable_image`, `no_candidates`, `no_gold` (no supporting doc in
    the pool), and the subset filter `table_question`. A truncated or corrupt `.gz` raises `DataError`.
  """
  path = question_file(data_dir, split)
  report = SkipReport(source=f"mmqa/{split}", strict=strict)
  images = DirectoryImageStore(image_dir or os.path.join(data_dir, _IMAGE_DIR))
  contexts = _Contexts(
      texts=_load_contexts(os.path.join(data_dir, _TEXTS_FILE), ("text",), report),
      images=_load_contexts(os.path.join(data_dir, _IMAGES_FILE), ("path",), report),
      tables=_load_contexts(os.path.join(data_dir, _TABLES_FILE), ("table",), report) if include_tables else None,
      checker=ImageChecker(images, image_check))
  questions: list[Question] = []
  first_line: dict[str, int] = {}
  for number, where, line in iter_mmqa_file(path, report):
    key = str(line["qid"]) if "qid" in line else None
    where += f" qid {key}" if key is not None else ""
    if key in first_line:
      report.skip(DUPLICATE_ID, where, f"the qid of line {first_line[key]}: that first line is kept", key=key)
      continue
    if key is not None:
      first_line[key] = number
    try:
      questions.append(_parse_line(line, split, contexts))
    except (KeyError, TypeError) as e:
      report.skip("malformed", where, f"missing field {e}" if isinstance(e, KeyError) else str(e), key=key)
    except _Skip as e:
      if e.reason == "table_question":
        report.count(e.reason, key=key)
      else:
        report.skip(e.reason, where, str(e), key=key)
    if limit is not None and len(questions) >= limit:
      break
  report.warn_duplicates(path, "qid")
  if verbose:
    report.log()
  return MMQAData(questions, images, report)
