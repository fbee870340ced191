"""Gold annotations for scoring: every annotated question of the split, the official denominators.

The official scripts score every question of the split that has an answer annotation — WebQA every entry
of the split (val: 4,966 questions), MultimodalQA every line with answers (dev: 2,441; the table-free
subset that RAMQA and the paper report: 1,176) — and a question without a prediction scores 0. So the
gold is read from the question file alone (no candidate pool, context file or image is needed) and the
training readers' filters (`no_gold`, `missing_document`, `missing_image`, `no_candidates`) do not
apply: a question the system cannot retrieve for is simply wrong.

Left out, counted in the returned `SkipReport` and announced by `add_gold_notes`: entries without any
answer annotation (`unannotated`; the public test files), entries whose annotation cannot be read
(`malformed`), repeats of a question id (`duplicate_id`: its first entry is scored, and a warning names
the id; the official scripts also count such a question once) and, by choice, MMQA table questions
(`table_question`).
"""

from __future__ import annotations

from typing import Any

from mmrag_jax.data import mmqa as mmqa_data
from mmrag_jax.data import webqa as webqa_data
from mmrag_jax.data.records import DUPLICATE_ID, DataError, SkipReport
from mmrag_jax.evaluation.coverage import log_warnings
from mmrag_jax.evaluation.mmqa_eval import MMQAGold
from mmrag_jax.evaluation.webqa_eval import WebQAGold

__all__ = ["add_gold_notes", "load_mmqa_gold", "load_webqa_gold"]

# Skips that are the caller's choice of subset, not a loss: no warning.
_CHOSEN_FILTERS = ("table_question",)


def _require_some(golds: list, report: SkipReport, what: str) -> None:
  if not golds:
    raise DataError(f"{what}: no question with answer annotations to score ({report.summary()})")


def _malformed(report: SkipReport, where: str, error: Exception, key: str | None) -> None:
  report.skip("malformed", where, f"missing field {error}" if isinstance(error, KeyError) else str(error), key=key)


def _webqa_gold(guid: str, entry: Any, split: str) -> WebQAGold | None:
  """One entry's gold (None when it has no answer annotation). Raises KeyError / TypeError / ValueError."""
  if not isinstance(entry, dict):
    raise TypeError(f"entry is a {type(entry).__name__}, not an object")
  if split != "test" and "split" not in entry:
    raise KeyError("split")
  keywords = entry.get("Keywords_A")
  if keywords is not None and not isinstance(keywords, str):
    raise TypeError(f"'Keywords_A' is a {type(keywords).__name__}, not a string")
  answers = webqa_data.webqa_answers(entry) if "A" in entry else ()
  if keywords is None and not answers:
    return None
  qcate = str(entry.get("Qcate", ""))
  if qcate not in webqa_data.WEBQA_QCATES:
    raise ValueError(f"unknown Qcate {qcate!r}")
  return WebQAGold(qid=str(entry.get("Guid", guid)), qcate=qcate, answers=answers, keywords=keywords,
                   gold_sources=None if split == "test" else webqa_data.webqa_gold_ids(entry))


def load_webqa_gold(data_dir: str, split: str) -> tuple[list[WebQAGold], SkipReport]:
  """WebQA gold of every entry of `split`: Qcate, answer sentences, gold sources (the pos facts, possibly
  none) and, when present, `Keywords_A`. Only Qcate and `A` / `Keywords_A` are required."""
  path, raw = webqa_data.load_webqa_json(data_dir, split)
  report = SkipReport(source=f"webqa/{split} gold")
  golds, seen = [], set()
  for guid, entry in webqa_data.select_split(raw, split):
    where = f"{path} Guid {guid}"
    if guid in seen:
      report.skip(DUPLICATE_ID, where, "the Guid is repeated in the file: its first entry is scored", key=guid)
      continue
    seen.add(guid)
    try:
      gold = _webqa_gold(guid, entry, split)
    except (KeyError, TypeError, ValueError) as error:
      _malformed(report, where, error, guid)
      continue
    if gold is None:
      report.skip("unannotated", where, key=guid)
      continue
    golds.append(gold)
  report.warn_duplicates(path, "Guid")
  _require_some(golds, report, path)
  return golds, report


def _answer_modality(modalities: tuple[str, ...]) -> str:
  # The official script asserts one modality per question; a mixed list is kept, labelled as such.
  distinct = sorted(set(m for m in modalities if m))
  return "+".join(distinct) if distinct else "unknown"


def load_mmqa_gold(data_dir: str, split: str, include_tables: bool = False) -> tuple[list[MMQAGold], SkipReport]:
  """MultimodalQA gold of every annotated line of `split` (the no-table subset unless `include_tables`):
  answers, question type, answer modality and the supporting doc ids (the gold sources)."""
  path = mmqa_data.question_file(data_dir, split)
  report = SkipReport(source=f"mmqa/{split} gold")
  golds, first_line = [], {}
  for number, where, line in mmqa_data.iter_mmqa_file(path, report):
    try:
      qid, metadata = str(line["qid"]), line["metadata"]
      if not isinstance(metadata, dict):
        raise TypeError(f"'metadata' is a {type(metadata).__name__}, not an object")
    except (KeyError, TypeError) as error:
      _malformed(report, where, error, None)
      continue
    where += f" qid {qid}"
    if qid in first_line:
      report.skip(DUPLICATE_ID, where, f"the qid of line {first_line[qid]}: that first line is scored", key=qid)
      continue
    first_line[qid] = number
    if not include_tables and mmqa_data.is_table_question(metadata):
      report.count("table_question", key=qid)
      continue
    try:
      answers, modalities = mmqa_data.parse_answers(line) if "answers" in line else ((), ())
      sources = mmqa_data.supporting_doc_ids(line) if "supporting_context" in line else None
    except (KeyError, TypeError) as error:
      _malformed(report, where, error, qid)
      continue
    if not answers:
      report.skip("unannotated", where, key=qid)
      continue
    golds.append(MMQAGold(qid=qid, answers=answers, question_type=str(metadata.get("type", "")),
                          answer_modality=_answer_modality(modalities), gold_sources=sources))
  report.warn_duplicates(path, "qid")
  _require_some(golds, report, path)
  return golds, report


def _gold_warnings(report: SkipReport) -> list[str]:
  """A warning when entries of the split are left out of the denominator for a reason other than the
  chosen subset (e.g. "webqa/val gold: 2 of the split's entries not scored (malformed 2); e.g. ...")."""
  left_out = {reason: n for reason, n in sorted(report.counts.items()) if reason not in _CHOSEN_FILTERS}
  if not left_out:
    return []
  reasons = ", ".join(f"{reason} {n}" for reason, n in left_out.items())
  examples = [report.examples[reason][0] for reason in left_out if report.examples.get(reason)]
  return [f"{report.source}: {sum(left_out.values())} of the split's entries not scored ({reasons})"
          + "".join(f"; e.g. {example}" for example in examples)]


def add_gold_notes(report: dict[str, Any], skipped: SkipReport) -> dict[str, Any]:
  """Adds `gold_skipped` (counts per reason) and the gold warnings (logged too) to a metrics report."""
  warnings = _gold_warnings(skipped)
  log_warnings(warnings)
  report["gold_skipped"] = skipped.as_dict()
  report["warnings"] = [*report.get("warnings", []), *warnings]
  return report
