"""WebQA reader: `WebQA_train_val.json` / `WebQA_test.json` + `imgs.tsv` / `imgs.lineidx` -> `Question`s.

File format (WebQnA/WebQA release): one JSON dict keyed by Guid. Each value has `Guid`, `split`
("train" | "val" | "test"), `Qcate`, `Q` (often wrapped in literal double quotes), `A` (list of answer
sentences, also often quoted). Train/val carry labeled pools `txt_posFacts` / `txt_negFacts`
({fact, snippet_id, title, url}) and `img_posFacts` / `img_negFacts` ({image_id, caption, title, url,
imgUrl}); the test file has unlabeled `txt_Facts` / `img_Facts` instead. Pool = pos + neg facts (texts,
then images); gold = the pos facts.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, NamedTuple

from mmrag_jax.data.files import JsonPairs, load_json_object
from mmrag_jax.data.images import ImageChecker, WebQAImageStore
from mmrag_jax.data.records import DUPLICATE_ID, IMAGE, TEXT, Candidate, Question, SkipReport

__all__ = [
    "TEST_FILE", "TRAIN_VAL_FILE", "WEBQA_QCATES", "WEBQA_SPLITS", "WebQAData", "load_webqa_json", "read_webqa",
    "select_split", "webqa_answers", "webqa_gold_ids",
]

WEBQA_SPLITS = ("train", "val", "test")
WEBQA_QCATES = ("text", "YesNo", "Others", "choose", "number", "color", "shape")
TRAIN_VAL_FILE = "WebQA_train_val.json"
TEST_FILE = "WebQA_test.json"


class WebQAData(NamedTuple):
  """What `read_webqa` returns: the questions, the lazy image store they reference, and the skip report."""

  questions: list[Question]
  images: WebQAImageStore | None
  skipped: SkipReport


def _strip_quotes(text: str) -> str:
  """Removes the literal double quotes WebQA wraps around many questions and answers, and outer spaces."""
  text = text.strip()
  if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
    text = text[1:-1].strip()
  return text


def _text_id(fact: dict[str, Any]) -> str:
  return str(fact["snippet_id"])


def _image_id(fact: dict[str, Any]) -> str:
  return str(int(fact["image_id"]))


def _text_candidate(fact: dict[str, Any]) -> Candidate:
  return Candidate(id=_text_id(fact), kind=TEXT, title=str(fact.get("title", "")), text=str(fact["fact"]))


def _image_candidate(fact: dict[str, Any]) -> Candidate:
  image_id = _image_id(fact)
  return Candidate(id=image_id, kind=IMAGE, title=str(fact.get("title", "")),
                   text=str(fact.get("caption", "")), image_ref=image_id)


def webqa_answers(entry: dict[str, Any]) -> tuple[str, ...]:
  """The answer sentences `A`, literal quotes stripped. Raises KeyError / TypeError when absent or not a list."""
  answers = entry["A"]
  if not isinstance(answers, list):
    raise TypeError(f"'A' is a {type(answers).__name__}, not a list")
  return tuple(_strip_quotes(str(a)) for a in answers)


def webqa_gold_ids(entry: dict[str, Any]) -> tuple[str, ...]:
  """Ids of the pos facts (texts, then images), each once: the gold sources. Absent lists count as empty."""
  ids = ([_text_id(f) for f in entry.get("txt_posFacts") or []]
         + [_image_id(f) for f in entry.get("img_posFacts") or []])
  return tuple(dict.fromkeys(ids))


def _parse_webqa_entry(guid: str, entry: Any, split: str) -> tuple[Question, list[str]]:
  """Parses one JSON value into a Question (no image checks). Returns (question, ids of image candidates).

  Raises KeyError / TypeError / ValueError on a malformed entry.
  """
  if not isinstance(entry, dict):
    raise TypeError(f"entry is a {type(entry).__name__}, not an object")
  if split != "test" and "split" not in entry:
    raise KeyError("split")
  question = entry["Q"]
  if not isinstance(question, str):
    raise TypeError(f"'Q' is a {type(question).__name__}, not a string")
  labeled = split != "test"
  if labeled:
    pos = [_text_candidate(f) for f in entry["txt_posFacts"]] + [_image_candidate(f) for f in entry["img_posFacts"]]
    neg = [_text_candidate(f) for f in entry["txt_negFacts"]] + [_image_candidate(f) for f in entry["img_negFacts"]]
    # Texts first, then images; positives before negatives within each kind.
    candidates = ([c for c in pos if c.kind == TEXT] + [c for c in neg if c.kind == TEXT]
                  + [c for c in pos if c.kind == IMAGE] + [c for c in neg if c.kind == IMAGE])
    gold_ids: tuple[str, ...] | None = webqa_gold_ids(entry)
    answers = webqa_answers(entry)
  else:
    candidates = ([_text_candidate(f) for f in entry.get("txt_Facts", [])]
                  + [_image_candidate(f) for f in entry.get("img_Facts", [])])
    gold_ids = None
    answers = tuple(_strip_quotes(str(a)) for a in entry.get("A", []) or [])
  # A source listed twice (e.g. as pos and neg) appears once in the pool, at its first place.
  unique: dict[str, Candidate] = {}
  for c in candidates:
    unique.setdefault(c.id, c)
  candidates = list(unique.values())
  category = str(entry.get("Qcate", ""))
  modalities = (TEXT,) if category == "text" else (IMAGE,)
  q = Question(qid=str(entry.get("Guid", guid)), question=_strip_quotes(question), answers=answers,
               category=category, modalities=modalities, candidates=tuple(candidates), gold_ids=gold_ids,
               split=split, dataset="webqa")
  return q, [c.id for c in candidates if c.kind == IMAGE]


def load_webqa_json(data_dir: str, split: str) -> tuple[str, JsonPairs]:
  """Loads the raw JSON object that holds `split`. Returns (path, its (Guid, entry) pairs in file order).

  A Guid the file repeats stays repeated here (Python's json would keep only its last entry): readers
  keep the first and report the others as `duplicate_id`. Raises `DataError` naming the file and the
  line and column of a syntax error, or the byte offset of a non-UTF-8 byte.
  """
  if split not in WEBQA_SPLITS:
    raise ValueError(f"WebQA split must be one of {WEBQA_SPLITS}, got {split!r}")
  path = os.path.join(data_dir, TEST_FILE if split == "test" else TRAIN_VAL_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"WebQA file not found: {path}")
  return path, load_json_object(path, "Guid")


def select_split(raw: JsonPairs, split: str) -> Iterable[tuple[str, Any]]:
  """Entries of `split`, plus entries whose split cannot be told (not an object, no `split` field) so
  that the caller reports them as malformed. Every entry of the test file belongs to the test split."""
  for guid, entry in raw:
    if split == "test" or not isinstance(entry, dict) or "split" not in entry or entry["split"] == split:
      yield guid, entry


def read_webqa(data_dir: str, split: str, *, image_check: str = "exists", strict: bool = False,
               verbose: bool = True, limit: int | None = None) -> WebQAData:
  """Reads one WebQA split into normalized `Question`s.

  Args:
    data_dir: folder with `WebQA_train_val.json` and/or `WebQA_test.json`, `imgs.tsv`, `imgs.lineidx`
      (the image files may be absent when `image_check="off"`).
    split: "train", "val" or "test" (test: `gold_ids=None`, `answers=()`).
    image_check: "off" (no image access), "exists" (id within imgs.lineidx: cheap), "decode" (read and
      decode every referenced image once: slow on the full 50 GB file, meant for builds and Mini-WebQA).
    strict: raise a `DataError` naming the file and Guid at the first bad question instead of skipping.
    verbose: print the skip summary.
    limit: stop after this many accepted questions (quick runs).

  Returns:
    `WebQAData(questions, images, skipped)`; questions in file order. Skip reasons: `malformed`
    (missing / mistyped fields), `duplicate_id` (a Guid the file already had: the first entry is kept),
    `missing_image`, `undecodable_image`, `no_candidates`, `no_gold` (labeled question without any pos
    fact). A file that is not valid UTF-8 JSON raises `DataError` naming the file and the place.
  """
  path, raw = load_webqa_json(data_dir, split)
  report = SkipReport(source=f"webqa/{split}", strict=strict)
  has_image_files = all(os.path.isfile(os.path.join(data_dir, f)) for f in ("imgs.tsv", "imgs.lineidx"))
  images = WebQAImageStore.from_dir(data_dir) if image_check != "off" or has_image_files else None
  checker = ImageChecker(images, image_check)
  questions: list[Question] = []
  seen: set[str] = set()
  for guid, entry in select_split(raw, split):
    where = f"{path} Guid {guid}"
    if guid in seen:
      report.skip(DUPLICATE_ID, where, "the Guid is repeated in the file: its first entry is kept", key=guid)
      continue
    seen.add(guid)
    try:
      question, image_ids = _parse_webqa_entry(guid, entry, split)
    except (KeyError, TypeError, ValueError) as e:
      detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
      report.skip("malformed", where, detail, key=guid)
      continue
    if not question.candidates:
      report.skip("no_candidates", where, key=question.qid)
      continue
    if question.gold_ids is not None and not question.gold_ids:
      report.skip("no_gold", where, "no txt_posFacts or img_posFacts", key=question.qid)
      continue
    bad_image = next((e for e in map(checker.problem, image_ids) if e is not None), None)
    if bad_image is not None:
      report.skip(bad_image.reason, where, str(bad_image), key=question.qid)
      continue
    questions.append(question)
    if limit is not None and len(questions) >= limit:
      break
  report.warn_duplicates(path, "Guid")
  if verbose:
    report.log()
  return WebQAData(questions, images, report)
