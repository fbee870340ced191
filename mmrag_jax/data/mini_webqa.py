"""Mini-WebQA: our documented, deterministic "higher-quality subset" of WebQA train/val.

The paper trains on a Mini-WebQA whose recipe is not public. Ours applies these rules in order; a question
is removed by the first rule it breaks and the report counts (and lists) removals per rule:

  reader rules (read with every image decoded, `read_webqa(image_check="decode")`):
    malformed          entry lacks / mistypes a required field
    duplicate_id       a Guid the file already had (the first entry stays)
    missing_image      an image id with no line in imgs.tsv
    undecodable_image  an image that Pillow cannot decode (truncated JPEGs decode and are kept)
    no_candidates      empty candidate pool
    no_gold            no pos fact in the pool
  quality rules:
    empty_question     question empty after stripping quotes / spaces
    empty_answer       no answer sentence with any word
    long_answer        an answer longer than `max_answer_words` words (default 50)
    small_pool         fewer than `min_pool_size` candidates (default 4): too few to rank
    duplicate_question same normalized question text (lowercased, punctuation and extra spaces removed) as an
                       earlier kept question of the split (file order); the first one stays

then, optionally, a stratified subsample of train to `target_size` questions: each Qcate keeps its share
(largest-remainder rounding), chosen by a seeded permutation; kept questions stay in file order.

Output folder: `WebQA_train_val.json` with the kept entries unchanged, links to `imgs.tsv` / `imgs.lineidx`
(and `WebQA_test.json`), and `mini_webqa_report.json`; every reader and builder works on it as on WebQA.

  python -m mmrag_jax.data.mini_webqa --data_dir=/data/webqa --out_dir=/data/mini_webqa --target_size=12000
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from typing import Any, Callable, Sequence

import numpy as np
from absl import app, flags

from mmrag_jax.data.records import Question
from mmrag_jax.data.webqa import TEST_FILE, TRAIN_VAL_FILE, load_webqa_json, read_webqa

__all__ = [
    "MiniWebQAConfig", "QUALITY_RULES", "READER_RULES", "REPORT_FILE", "SplitReport", "build_mini_webqa",
    "normalize_question", "stratified_subsample",
]

READER_RULES = ("malformed", "duplicate_id", "missing_image", "undecodable_image", "no_candidates", "no_gold")
QUALITY_RULES = ("empty_question", "empty_answer", "long_answer", "small_pool", "duplicate_question")
REPORT_FILE = "mini_webqa_report.json"


@dataclasses.dataclass(frozen=True)
class MiniWebQAConfig:
  max_answer_words: int = 50
  min_pool_size: int = 4
  splits: tuple[str, ...] = ("train", "val")
  target_size: int | None = None  # train questions after stratified subsampling; None keeps all
  seed: int = 0


@dataclasses.dataclass
class SplitReport:
  split: str
  input_questions: int
  removed: dict[str, list[str]]  # rule -> Guids, in rule order
  kept_after_rules: int
  kept: list[str]  # final Guids, file order
  qcate_before: dict[str, int]
  qcate_after: dict[str, int]

  def removed_counts(self) -> dict[str, int]:
    return {rule: len(ids) for rule, ids in self.removed.items()}


def normalize_question(text: str) -> str:
  """Lowercase, punctuation removed, whitespace collapsed: the key for duplicate detection."""
  return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _quality_rule(question: Question, config: MiniWebQAConfig) -> str | None:
  if not question.question.strip():
    return "empty_question"
  if not any(a.split() for a in question.answers):
    return "empty_answer"
  if any(len(a.split()) > config.max_answer_words for a in question.answers):
    return "long_answer"
  if len(question.candidates) < config.min_pool_size:
    return "small_pool"
  return None


def _apply_rules(questions: Sequence[Question], config: MiniWebQAConfig) -> tuple[list[Question], dict[str, list[str]]]:
  """Quality rules in order; returns (kept questions in order, rule -> removed Guids)."""
  removed: dict[str, list[str]] = {rule: [] for rule in QUALITY_RULES}
  seen: set[str] = set()
  kept = []
  for q in questions:
    rule = _quality_rule(q, config)
    if rule is None:
      key = normalize_question(q.question)
      rule = "duplicate_question" if key in seen else None
      seen.add(key)
    if rule is None:
      kept.append(q)
    else:
      removed[rule].append(q.qid)
  return kept, removed


def stratified_subsample(questions: Sequence[Question], target_size: int, seed: int) -> list[Question]:
  """`target_size` questions with each Qcate's share kept (largest remainder), in the input order."""
  if target_size >= len(questions):
    return list(questions)
  by_cate: dict[str, list[int]] = collections.defaultdict(list)
  for i, q in enumerate(questions):
    by_cate[q.category].append(i)
  cates = sorted(by_cate)
  exact = np.array([target_size * len(by_cate[c]) / len(questions) for c in cates])
  quota = np.floor(exact).astype(int)
  # Hand the remaining slots to the largest fractional parts (ties: alphabetical Qcate order).
  for j in np.argsort(-(exact - quota), kind="stable")[: target_size - int(quota.sum())]:
    quota[j] += 1
  rng = np.random.default_rng(seed)
  chosen: list[int] = []
  for cate, n in zip(cates, quota):
    members = by_cate[cate]
    chosen.extend(members[k] for k in rng.permutation(len(members))[:n])
  return [questions[i] for i in sorted(chosen)]


def _filter_split(data_dir: str, split: str, config: MiniWebQAConfig) -> SplitReport:
  """Applies every rule (and, for train, the subsample) to one split. Reads each referenced image once."""
  data = read_webqa(data_dir, split, image_check="decode", verbose=False)
  removed = {rule: list(data.skipped.keys.get(rule, [])) for rule in READER_RULES}
  kept, quality_removed = _apply_rules(data.questions, config)
  removed.update(quality_removed)
  after_rules = len(kept)
  if split == "train" and config.target_size is not None:
    kept = stratified_subsample(kept, config.target_size, config.seed)
  return SplitReport(
      split=split, input_questions=len(data.questions) + data.skipped.total, removed=removed,
      kept_after_rules=after_rules, kept=[q.qid for q in kept],
      qcate_before=dict(collections.Counter(q.category for q in data.questions)),
      qcate_after=dict(collections.Counter(q.category for q in kept)))


def _link(src: str, dst: str) -> None:
  if os.path.lexists(dst):
    os.remove(dst)
  os.symlink(os.path.abspath(src), dst)


def build_mini_webqa(data_dir: str, out_dir: str, config: MiniWebQAConfig = MiniWebQAConfig(),
                     log: Callable[[str], None] = print) -> dict[str, SplitReport]:
  """Writes Mini-WebQA into `out_dir` (see the module docstring) and returns the per-split reports."""
  os.makedirs(out_dir, exist_ok=True)
  reports = {split: _filter_split(data_dir, split, config) for split in config.splits}
  _, raw = load_webqa_json(data_dir, "train")
  keep = {guid for r in reports.values() for guid in r.kept}
  subset: dict[str, Any] = {}
  for guid, entry in raw:
    if guid in keep:
      subset.setdefault(guid, entry)  # the entry the readers kept: a repeated Guid's first
  with open(os.path.join(out_dir, TRAIN_VAL_FILE), "w", encoding="utf-8") as f:
    json.dump(subset, f, ensure_ascii=False)
  for name in ("imgs.tsv", "imgs.lineidx", TEST_FILE):
    if os.path.exists(os.path.join(data_dir, name)):
      _link(os.path.join(data_dir, name), os.path.join(out_dir, name))
  with open(os.path.join(out_dir, REPORT_FILE), "w", encoding="utf-8") as f:
    json.dump({"config": dataclasses.asdict(config),
               "splits": {s: dataclasses.asdict(r) for s, r in reports.items()}}, f, indent=1)
  for r in reports.values():
    log(_format_report(r))
  return reports


def _format_report(report: SplitReport) -> str:
  lines = [f"Mini-WebQA {report.split}: {report.input_questions} questions in"]
  lines += [f"  - {rule:<20s} {len(ids):>7d}" for rule, ids in report.removed.items()]
  lines.append(f"  = after rules          {report.kept_after_rules:>7d}")
  if len(report.kept) != report.kept_after_rules:
    lines.append(f"  = stratified subsample {len(report.kept):>7d}")
  lines.append("  Qcate: " + ", ".join(f"{c} {report.qcate_before.get(c, 0)}->{n}"
                                        for c, n in sorted(report.qcate_after.items())))
  return "\n".join(lines)


def _define_flags() -> None:
  flags.DEFINE_string("data_dir", None, "Folder with the official WebQA files.", required=True)
  flags.DEFINE_string("out_dir", None, "Output folder for Mini-WebQA.", required=True)
  flags.DEFINE_integer("max_answer_words", 50, "Longest answer kept, in words.")
  flags.DEFINE_integer("min_pool_size", 4, "Smallest candidate pool kept.")
  flags.DEFINE_integer("target_size", None, "Train questions after stratified subsampling (default: all).")
  flags.DEFINE_integer("seed", 0, "Subsampling seed.")


def _main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  build_mini_webqa(f.data_dir, f.out_dir, MiniWebQAConfig(
      max_answer_words=f.max_answer_words, min_pool_size=f.min_pool_size, target_size=f.target_size, seed=f.seed))


if __name__ == "__main__":
  _define_flags()
  app.run(_main)
