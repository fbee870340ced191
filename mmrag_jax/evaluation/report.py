"""The explanation report: one self-contained HTML page of predictions, their evidence and the metrics.

Each question becomes a card: the question, the stage-1 candidates (score, kept mark with the prompt
number [n], gold mark; image candidates as downscaled JPEG data URIs), the stage-2 reasoning, the cited
evidence resolved from [n] to candidates, the answer against the gold answers, and a correct / incorrect /
unlabeled badge. Two selects filter the cards by category and correctness; both can be set from the URL
hash (`report.html#category=color&correct=incorrect`) so a filtered view can be shared.

Model output is untrusted: every piece of text is HTML-escaped, and a Content-Security-Policy lets only
the page's own script and style run (pinned by their SHA-256) and only data: images load, so the page
never touches the network.

Size: each embedded thumbnail costs ~10-35 KB (JPEG quality 85, longest side `thumbnail_px`). For a whole split with
many image candidates per question, `thumbnails="kept_and_gold"` embeds only the images a reader needs.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import html
import io
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from PIL import Image

from mmrag_jax.data.images import ImageReadError, ImageStore

__all__ = ["thumbnail_jpeg", "write_report"]

_RECORD_KEYS = ("qid", "dataset", "category", "question", "answer", "sources", "gold_answers", "gold_ids",
                "candidates", "kept_ids", "reasoning", "evidence_numbers", "completion", "format_ok",
                "answer_score", "correct")
_CANDIDATE_KEYS = ("id", "kind", "title", "text", "image_ref", "stage1_score", "kept", "number", "gold")
# record["correct"] -> the card's data-correct attribute; the correctness select's value -> the same.
_CORRECT_STATES = {True: "true", False: "false", None: "unlabeled"}
_CORRECT_FILTERS = {"correct": "true", "incorrect": "false", "unlabeled": "unlabeled"}
_TEXT_CLIP_CHARS = 300
_THUMBNAIL_CACHE_SIZE = 512  # cited evidence repeats a candidate's image; pools share images across questions

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:16px;color:#1d232b;background:#f4f5f7}
h1{font-size:22px;margin:4px 0 12px}h2{font-size:16px;margin:8px 0}h3{font-size:13px;margin:12px 0 4px;color:#56606d}
table.metrics{border-collapse:collapse;margin:8px 0 16px;background:#fff}
table.metrics th,table.metrics td{border:1px solid #d5d9df;padding:3px 8px;text-align:left}
.reason{color:#7a5a00}ul.warnings{background:#fff0c2;border:1px solid #e0a800;padding:6px 6px 6px 28px}.filters{position:sticky;top:0;background:#f4f5f7;padding:8px 0;border-bottom:1px solid #d5d9df}
.filters label{margin-right:16px}#shown-count{font-weight:600}
section.question{background:#fff;border:1px solid #d5d9df;border-radius:6px;margin:14px 0;padding:10px 14px}
.badge,.tag{display:inline-block;border-radius:10px;padding:0 8px;margin-right:6px;font-size:12px}
.badge.true{background:#d5f2dc;color:#11632a}.badge.false{background:#fadadd;color:#8c1622}
.badge.unlabeled{background:#e4e7eb;color:#3d4550}.tag{background:#eef1f5}.tag.warn{background:#fff0c2}
.qid{font-family:monospace;color:#56606d}dl.answers{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px}
dl.answers dt{font-weight:600}dl.answers dd{margin:0}.answer-span{background:#eef1f5;padding:0 4px;margin-right:4px}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f8fa;padding:6px 8px;margin:0}
.candidates{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:8px;align-items:start}
figure.candidate{margin:0;border:1px solid #d5d9df;border-radius:4px;padding:6px;font-size:12px}
figure.candidate.kept{border-color:#3b73c4}figure.candidate.gold{box-shadow:0 0 0 2px #e0a800}
figure.candidate img,ol.evidence img{max-width:100%;display:block}
.placeholder{background:#eef1f5;color:#6b7480;padding:18px 6px;text-align:center}
.mark{font-weight:600;margin-right:4px}.mark.kept{color:#3b73c4}.mark.gold{color:#a87b00}
ol.evidence{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
ol.evidence li{border:1px solid #d5d9df;border-radius:4px;padding:6px;width:220px;font-size:12px}
ol.evidence li.bad-citation{border-color:#c33;color:#8c1622}
"""

_JS = """
(function () {
  var CORRECT_FILTERS = {"correct": "true", "incorrect": "false", "unlabeled": "unlabeled"};
  var cards = Array.prototype.slice.call(document.querySelectorAll("section.question"));
  var category = document.getElementById("filter-category");
  var correct = document.getElementById("filter-correct");
  var count = document.getElementById("shown-count");
  function hasOption(select, value) {
    return Array.prototype.some.call(select.options, function (o) { return o.value === value; });
  }
  function readHash() {
    var params = new URLSearchParams(location.hash.slice(1));
    [[category, "category"], [correct, "correct"]].forEach(function (pair) {
      var value = params.get(pair[1]);
      pair[0].value = value !== null && hasOption(pair[0], value) ? value : "all";
    });
  }
  function writeHash() {
    var params = new URLSearchParams();
    if (category.value !== "all") params.set("category", category.value);
    if (correct.value !== "all") params.set("correct", correct.value);
    var hash = params.toString();
    history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
  }
  function apply() {
    var shown = 0;
    cards.forEach(function (card) {
      var visible = (category.value === "all" || card.dataset.category === category.value) &&
          (correct.value === "all" || card.dataset.correct === CORRECT_FILTERS[correct.value]);
      card.hidden = !visible;
      if (visible) shown += 1;
    });
    count.textContent = shown + " of " + cards.length + " questions shown";
  }
  [category, correct].forEach(function (select) {
    select.addEventListener("change", function () { writeHash(); apply(); });
  });
  window.addEventListener("hashchange", function () { readHash(); apply(); });
  readHash();
  apply();
})();
"""


def _csp_hash(source: str) -> str:
  return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii") + "'"


_CSP = f"default-src 'none'; img-src data:; style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_JS)}"


def _esc(value: object) -> str:
  return html.escape(str(value), quote=True)


class _Thumbnails:
  """Image reference -> (JPEG data URI, None) or (None, why there is no image), with a small LRU cache."""

  def __init__(self, store: ImageStore | None, max_px: int):
    self.store = store
    self.max_px = max_px
    self._cache: collections.OrderedDict[str, tuple[str | None, str | None]] = collections.OrderedDict()

  def get(self, ref: str | None) -> tuple[str | None, str | None]:
    if ref is None:
      return None, "no image reference"
    if self.store is None:
      return None, "no image store given"
    if ref in self._cache:
      self._cache.move_to_end(ref)
      return self._cache[ref]
    result = self._encode(ref)
    self._cache[ref] = result
    if len(self._cache) > _THUMBNAIL_CACHE_SIZE:
      self._cache.popitem(last=False)
    return result

  def _encode(self, ref: str) -> tuple[str | None, str | None]:
    try:
      jpeg = thumbnail_jpeg(self.store.read_bytes(ref), self.max_px, where=f"image {ref!r}")
    except ImageReadError as e:
      kind = "image missing" if e.reason == "missing_image" else "image cannot be decoded"
      return None, f"{kind}: {e}"
    except Exception as e:  # any store may fail in its own way; one bad image must not lose the report
      return None, f"image unavailable: {type(e).__name__}: {e}"
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii"), None


def thumbnail_jpeg(data: bytes, max_px: int, where: str = "image") -> bytes:
  """Encoded image -> RGB JPEG bytes whose longest side is at most `max_px` (never enlarged).

  The image is shrunk before it is fully decoded (JPEG draft mode decodes at 1/2..1/8 scale): about twice
  as fast as decoding a large photo at full size first. Raises `ImageReadError('undecodable_image')`.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
      rgb = image.convert("RGB")
  except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
    raise ImageReadError("undecodable_image", f"{where}: cannot decode image ({type(e).__name__})") from e
  buffer = io.BytesIO()
  rgb.save(buffer, format="JPEG", quality=85)
  return buffer.getvalue()


def _check_record(record: Mapping[str, Any], index: int) -> None:
  if not isinstance(record, Mapping):
    raise ValueError(f"record {index}: expected a dict, got {type(record).__name__}")
  where = f"record {index} (qid {record.get('qid')!r})"
  missing = [k for k in _RECORD_KEYS if k not in record]
  if missing:
    raise ValueError(f"{where}: missing key(s) {missing}")
  if record["correct"] not in _CORRECT_STATES:
    raise ValueError(f"{where}: 'correct' must be true, false or null, got {record['correct']!r}")
  for j, candidate in enumerate(record["candidates"]):
    missing = [k for k in _CANDIDATE_KEYS if k not in candidate]
    if missing:
      raise ValueError(f"{where}: candidate {j} is missing key(s) {missing}")


def _format_value(value: object) -> str:
  if value is None:
    return "n/a"
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):  # also numpy floats
    return f"{float(value):.4f}"
  return str(value)


def _metrics_summary(metrics: Mapping[str, Any]) -> str:
  """Top-level scalars (and dicts of scalars, as `parent.key`); a None metric shows its `<key>_reason`."""
  rows = []
  for key, value in metrics.items():
    if key.endswith("_reason") and key[: -len("_reason")] in metrics:
      continue  # shown next to its metric
    if isinstance(value, Mapping):
      if all(not isinstance(v, (Mapping, list)) for v in value.values()):
        rows.extend((f"{key}.{k}", v, None) for k, v in value.items())
      continue
    if isinstance(value, list):
      continue
    reason = metrics.get(f"{key}_reason") if value is None else None
    rows.append((key, value, reason))
  body = "".join(
      f'<tr data-metric="{_esc(k)}"><th>{_esc(k)}</th><td>{_esc(_format_value(v))}'
      + (f' <span class="reason">({_esc(r)})</span>' if isinstance(r, str) else "") + "</td></tr>"
      for k, v, r in rows)
  return f'<table class="metrics" id="metrics-summary"><tbody>{body}</tbody></table>'


def _metrics_breakdown(name: str, table: Mapping[str, Mapping[str, Any]]) -> str:
  """One `by_*` breakdown: a row per group, a column per metric (union over groups, first-seen order)."""
  columns: list[str] = []
  for group in table.values():
    columns.extend(k for k in group if k not in columns)
  head = "".join(f"<th>{_esc(c)}</th>" for c in [name.removeprefix("by_"), *columns])
  body = "".join(
      f'<tr data-group="{_esc(g)}"><th>{_esc(g)}</th>'
      + "".join(f"<td>{_esc(_format_value(values.get(c)))}</td>" for c in columns) + "</tr>"
      for g, values in table.items())
  return (f'<h3>{_esc(name)}</h3><table class="metrics" id="metrics-{_esc(name)}">'
          f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _metrics_html(metrics: Mapping[str, Any]) -> str:
  breakdowns = [k for k, v in metrics.items()
                if isinstance(v, Mapping) and v and all(isinstance(g, Mapping) for g in v.values())]
  breakdowns.sort(key=lambda k: k != "by_category")  # by_category first, the rest in the given order
  warnings = "".join(f"<li>{_esc(w)}</li>" for w in metrics.get("warnings") or ())
  return ((f'<ul class="warnings" id="metrics-warnings">{warnings}</ul>' if warnings else "")
          + _metrics_summary(metrics) + "".join(_metrics_breakdown(k, metrics[k]) for k in breakdowns))


def _image_html(thumbnails: _Thumbnails, ref: str | None, alt: str, embed: bool) -> str:
  if not embed:
    return '<div class="placeholder">thumbnail not embedded</div>'
  uri, problem = thumbnails.get(ref)
  if uri is None:
    return f'<div class="placeholder image-problem">{_esc(problem)}</div>'
  return f'<img src="{uri}" alt="{_esc(alt)}">'


def _clip(text: str) -> str:
  return text if len(text) <= _TEXT_CLIP_CHARS else text[:_TEXT_CLIP_CHARS] + "\u2026"


def _candidate_html(candidate: Mapping[str, Any], thumbnails: _Thumbnails, embed_image: bool) -> str:
  classes = ["candidate", candidate["kind"]] + (["kept"] if candidate["kept"] else []) + (
      ["gold"] if candidate["gold"] else [])
  marks = ""
  if candidate["kept"]:
    number = candidate["number"]
    marks += f'<span class="mark kept">kept{"" if number is None else f" [{_esc(number)}]"}</span>'
  if candidate["gold"]:
    marks += '<span class="mark gold">gold</span>'
  image = ""
  if candidate["kind"] == "image":
    image = _image_html(thumbnails, candidate["image_ref"], candidate["title"], embed_image)
  return (f'<figure class="{_esc(" ".join(classes))}" data-candidate-id="{_esc(candidate["id"])}">{image}'
          f'<figcaption>{marks}<span class="score">score {_esc(_format_value(candidate["stage1_score"]))}</span>'
          f'<br><b class="title">{_esc(candidate["title"])}</b> <span class="text">{_esc(_clip(candidate["text"]))}'
          f'</span> <span class="qid">{_esc(candidate["id"])}</span></figcaption></figure>')


def _evidence_html(record: Mapping[str, Any], by_id: Mapping[str, Mapping[str, Any]],
                   thumbnails: _Thumbnails) -> str:
  """The cited [n] in citation order, each resolved through the prompt order `kept_ids` to its candidate."""
  if not record["evidence_numbers"]:
    return '<p class="empty">no evidence cited</p>'
  items = []
  for number in record["evidence_numbers"]:
    kept = record["kept_ids"]
    if not isinstance(number, int) or not 1 <= number <= len(kept):
      items.append(f'<li class="bad-citation" data-number="{_esc(number)}">[{_esc(number)}] '
                   f"is not a prompt candidate (the prompt had {len(kept)})</li>")
      continue
    candidate = by_id.get(kept[number - 1])
    if candidate is None:
      items.append(f'<li class="bad-citation" data-number="{number}">[{number}] names unknown candidate '
                   f"{_esc(kept[number - 1])}</li>")
      continue
    image = ""
    if candidate["kind"] == "image":
      image = _image_html(thumbnails, candidate["image_ref"], candidate["title"], embed=True)
    gold = ' <span class="mark gold">gold</span>' if candidate["gold"] else ""
    items.append(f'<li data-number="{number}" data-candidate-id="{_esc(candidate["id"])}">{image}'
                 f'[{number}]{gold} <b class="title">{_esc(candidate["title"])}</b></li>')
  return f'<ol class="evidence">{"".join(items)}</ol>'


def _answer_html(answer: str | Sequence[str]) -> str:
  spans = [answer] if isinstance(answer, str) else list(answer)
  return "".join(f'<span class="answer-span">{_esc(s)}</span>' for s in spans) or "(empty)"


def _card_html(record: Mapping[str, Any], thumbnails: _Thumbnails, thumbnails_for: str) -> str:
  state = _CORRECT_STATES[record["correct"]]
  badge = {"true": "correct", "false": "incorrect", "unlabeled": "unlabeled"}[state]
  by_id = {c["id"]: c for c in record["candidates"]}
  kept = [c for c in record["candidates"] if c["kept"]]
  dropped = [c for c in record["candidates"] if not c["kept"]]

  def candidates(group: list[Mapping[str, Any]]) -> str:
    return "".join(_candidate_html(c, thumbnails, thumbnails_for == "all" or c["kept"] or bool(c["gold"]))
                   for c in group)

  gold = record["gold_answers"]
  score = record["answer_score"]
  reasoning = record["reasoning"]
  return (
      f'<section class="question" data-qid="{_esc(record["qid"])}" data-category="{_esc(record["category"])}"'
      f' data-correct="{state}"><div class="card-head"><span class="badge {state}">{badge}</span>'
      f'<span class="tag">{_esc(record["dataset"])}</span><span class="tag">{_esc(record["category"])}</span>'
      + ("" if record["format_ok"] else '<span class="tag warn">format not parsed</span>')
      + f'<span class="qid">{_esc(record["qid"])}</span></div>'
      f'<h2 class="question-text">{_esc(record["question"])}</h2>'
      f'<dl class="answers"><dt>Answer</dt><dd class="answer">{_answer_html(record["answer"])}</dd>'
      f'<dt>Gold</dt><dd class="gold-answers">{_answer_html(gold) if gold else "(unlabeled)"}</dd>'
      f'<dt>Score</dt><dd class="answer-score">{_esc(_format_value(score))}</dd></dl>'
      f"<h3>Reasoning</h3>"
      + (f'<pre class="reasoning">{_esc(reasoning)}</pre>' if reasoning else '<p class="empty">no reasoning</p>')
      + f"<h3>Cited evidence</h3>{_evidence_html(record, by_id, thumbnails)}"
      f'<h3>Prompt candidates ({len(kept)} kept by stage 1)</h3><div class="candidates kept">{candidates(kept)}</div>'
      f"<details><summary>Dropped by stage 1 ({len(dropped)})</summary>"
      f'<div class="candidates dropped">{candidates(dropped)}</div></details>'
      f'<details><summary>Raw completion</summary><pre class="completion">{_esc(record["completion"])}</pre>'
      "</details></section>\n")


def _filters_html(categories: Sequence[str], total: int) -> str:
  category_options = "".join(f'<option value="{_esc(c)}">{_esc(c)}</option>' for c in categories)
  correct_options = "".join(f'<option value="{k}">{k}</option>' for k in _CORRECT_FILTERS)
  return (f'<div class="filters"><label>Category <select id="filter-category"><option value="all">all</option>'
          f'{category_options}</select></label><label>Answer <select id="filter-correct">'
          f'<option value="all">all</option>{correct_options}</select></label>'
          f'<span id="shown-count">{total} of {total} questions shown</span></div>')


def write_report(path: str, records: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any], *,
                 images: ImageStore | None, title: str = "MMRAG-RFT predictions", thumbnail_px: int = 256,
                 thumbnails: Literal["all", "kept_and_gold"] = "all") -> str:
  """Writes the self-contained HTML report of `records` (one rich prediction record per question).

  records: dicts with the keys of `_RECORD_KEYS` (candidates sorted by stage-1 score, best first).
  metrics: an `evaluate_webqa` / `evaluate_mmqa` report plus extra scalars (e.g. "stage1/recall@1").
  images: resolves candidates' `image_ref`; None shows placeholders. thumbnail_px: longest side of the
  embedded thumbnails (pixels). thumbnails: "kept_and_gold" embeds only the images of prompt and gold
  candidates (smaller file). Returns `path`.
  """
  if thumbnail_px < 1:
    raise ValueError(f"thumbnail_px must be positive, got {thumbnail_px}")
  if thumbnails not in ("all", "kept_and_gold"):
    raise ValueError(f"thumbnails must be 'all' or 'kept_and_gold', got {thumbnails!r}")
  for index, record in enumerate(records):
    _check_record(record, index)
  categories = sorted({str(r["category"]) for r in records})
  counts = collections.Counter(_CORRECT_STATES[r["correct"]] for r in records)
  summary = (f'<p class="summary">{len(records)} questions: {counts["true"]} correct, {counts["false"]} '
             f'incorrect, {counts["unlabeled"]} unlabeled</p>')
  head = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
          f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
          f'<meta name="viewport" content="width=device-width, initial-scale=1">'
          f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n<body><h1>{_esc(title)}</h1>{summary}"
          f"{_metrics_html(metrics)}{_filters_html(categories, len(records))}\n")
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  thumbnail_source = _Thumbnails(images, thumbnail_px)
  partial = path + ".partial"  # a crashed run never leaves a half report under the real name
  with open(partial, "w", encoding="utf-8") as f:
    f.write(head)
    for record in records:  # streamed: a split's report can be far larger than one card
      f.write(_card_html(record, thumbnail_source, thumbnails))
    f.write(f"<script>{_JS}</script></body></html>\n")
  os.replace(partial, path)
  return path
