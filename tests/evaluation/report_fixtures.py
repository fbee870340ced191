"""Helpers for the report tests: an in-memory image store, synthetic prediction records with real images,
a small HTML tree parser for dumped DOMs, and headless Chromium runners."""

from __future__ import annotations

import dataclasses
import html.parser
import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from mmrag_jax.data.images import ImageReadError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_TIMEOUT_S = 60
SCRIPT_PAYLOAD = "<script>alert(1)</script>"


class DictImageStore:
  """An `ImageStore` over a dict of encoded images."""

  def __init__(self, images: Mapping[str, bytes]):
    self.images = dict(images)

  def contains(self, ref: str) -> bool:
    return ref in self.images

  def read_bytes(self, ref: str) -> bytes:
    if ref not in self.images:
      raise ImageReadError("missing_image", f"image {ref!r} is not in the store")
    return self.images[ref]


def solid_image_bytes(color: tuple[int, int, int], size: tuple[int, int], image_format: str = "PNG") -> bytes:
  buffer = io.BytesIO()
  Image.new("RGB", size, color).save(buffer, format=image_format)
  return buffer.getvalue()


# ref -> (colour, (width, height)) of the decodable images in the store.
IMAGES = {
    "red_wide": ((220, 30, 30), (600, 300)),
    "green_small": ((30, 200, 60), (120, 80)),
    "blue_tall": ((40, 60, 210), (200, 900)),
    "yellow": ((230, 210, 40), (320, 320)),
}
UNDECODABLE_REF = "broken"
MISSING_REF = "nowhere"


def image_store() -> DictImageStore:
  images = {ref: solid_image_bytes(color, size, "JPEG" if ref == "yellow" else "PNG")
            for ref, (color, size) in IMAGES.items()}
  images[UNDECODABLE_REF] = b"these bytes are not an image"
  return DictImageStore(images)


def candidate(cid: str, score: float, *, image_ref: str | None = None, kept: bool = False,
              number: int | None = None, gold: bool | None = False, title: str = "", text: str = "") -> dict:
  return {"id": cid, "kind": "image" if image_ref is not None else "text", "title": title or f"title {cid}",
          "text": text or f"text of {cid}", "image_ref": image_ref, "stage1_score": score, "kept": kept,
          "number": number, "gold": gold}


def record(qid: str, category: str, candidates: list[dict], *, correct: bool | None, evidence: list[int],
           dataset: str = "webqa", answer: str | list[str] = "an answer", gold_answers: list[str] | None = None,
           question: str = "", reasoning: str = "some reasoning", completion: str = "",
           format_ok: bool = True) -> dict:
  """A record in the pipeline's schema; kept candidates enter the prompt in their `number` order."""
  kept_ids = [c["id"] for c in sorted((c for c in candidates if c["kept"]), key=lambda c: c["number"])]
  unlabeled = correct is None
  return {
      "qid": qid, "dataset": dataset, "category": category, "question": question or f"question {qid}?",
      "answer": answer, "sources": [kept_ids[n - 1] for n in evidence if 1 <= n <= len(kept_ids)],
      "gold_answers": [] if unlabeled else (gold_answers or ["gold answer"]),
      "gold_ids": None if unlabeled else [c["id"] for c in candidates if c["gold"]],
      "candidates": candidates, "kept_ids": kept_ids, "reasoning": reasoning, "evidence_numbers": evidence,
      "completion": completion or f"<think>{reasoning}</think> evidence {evidence} answer {answer}",
      "format_ok": format_ok, "answer_score": None if unlabeled else (1.0 if correct else 0.0),
      "correct": correct,
  }


def build_records() -> list[dict]:
  """Six questions over four categories: correct, incorrect and unlabeled; missing and undecodable images;
  a citation outside the prompt; hostile text in the question, reasoning, completion and a title."""
  return [
      record("q-color-1", "color", [
          candidate("img-red", 0.93, image_ref="red_wide", kept=True, number=1, gold=True),
          candidate("txt-a", 0.71, kept=True, number=2, text="a long snippet " * 80),
          candidate("img-green", 0.40, image_ref="green_small", kept=True, number=3),
          candidate("img-blue", 0.12, image_ref="blue_tall", gold=True),
      ], correct=True, evidence=[1, 3], answer="The roof is red."),
      record("q-color-2", "color", [
          candidate("img-missing", 0.88, image_ref=MISSING_REF, kept=True, number=1),
          candidate("img-yellow", 0.52, image_ref="yellow", kept=True, number=2, gold=True),
          candidate("txt-b", 0.05),
      ], correct=False, evidence=[2, 7], answer="It is green."),
      record("q-shape-1", "shape", [
          candidate("img-broken", 0.77, image_ref=UNDECODABLE_REF, kept=True, number=1, gold=True),
          candidate("txt-c", 0.60, kept=True, number=2, title='Fish & "Chips" <i>shop</i>'),
      ], correct=False, evidence=[2], question="Is the <b>tower</b> round?",
             reasoning=f"I think {SCRIPT_PAYLOAD} it is square", completion=f"<think>x</think>{SCRIPT_PAYLOAD}",
             format_ok=False),
      record("q-yesno-1", "YesNo", [
          candidate("img-red-again", 0.66, image_ref="red_wide", kept=True, number=1, gold=None),
          candidate("txt-d", 0.20, gold=None),
      ], correct=None, evidence=[1], answer="Yes."),
      record("q-mmqa-1", "Compose(TableQ,ImageQ)", [
          candidate("mm-txt", 0.81, kept=True, number=1, gold=True),
          candidate("mm-img", 0.45, image_ref="blue_tall", kept=True, number=2),
      ], correct=True, evidence=[1], dataset="mmqa", answer=["Paris", "Lyon"], gold_answers=["Paris", "Lyon"]),
      record("q-number-1", "number", [candidate("txt-e", 0.50, kept=True, number=1, gold=None)],
             correct=None, evidence=[], answer="3", reasoning=""),
  ]


def webqa_like_metrics() -> dict:
  """Shaped like an `evaluate_webqa` report without BART, plus the pipeline's stage-1 entries."""
  return {
      "dataset": "webqa", "mode": "val", "acc_target": "answer_sentence",
      "fluency": {"available": False, "reason": "no --bart checkpoint given"},
      "num_questions": 6, "retrieval_f1": 0.625, "qa_fl": None, "qa_fl_reason": "no BART checkpoint",
      "qa_acc": 0.5, "qa": None,
      "by_category": {"color": {"count": 2, "retrieval_f1": 0.75, "qa_fl": None, "qa_acc": 0.5, "qa": None},
                      "shape": {"count": 1, "retrieval_f1": 0.0, "qa_fl": None, "qa_acc": 0.0, "qa": None}},
      "by_query_modality": {"image": {"count": 3, "qa_acc": 0.3333333}},
      "stage1/recall@1": 0.5, "stage1/recall@5": 1.0, "stage1/mean_kept_score": np.float32(0.75),
  }


# -- a small DOM tree from serialized HTML -------------------------------------------------------------

VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclasses.dataclass
class Node:
  tag: str
  attrs: dict[str, str | None]
  children: list["Node | str"] = dataclasses.field(default_factory=list)

  def text(self) -> str:
    return "".join(c if isinstance(c, str) else c.text() for c in self.children)

  def iter(self) -> Iterator["Node"]:
    yield self
    for child in self.children:
      if isinstance(child, Node):
        yield from child.iter()

  def find_all(self, tag: str, predicate: Callable[["Node"], bool] = lambda n: True) -> list["Node"]:
    return [n for n in self.iter() if n.tag == tag and predicate(n)]

  def has_class(self, name: str) -> bool:
    return name in (self.attrs.get("class") or "").split()


class _TreeBuilder(html.parser.HTMLParser):
  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.root = Node("#document", {})
    self.stack = [self.root]

  def handle_starttag(self, tag, attrs):
    node = Node(tag, dict(attrs))
    self.stack[-1].children.append(node)
    if tag not in VOID_TAGS:
      self.stack.append(node)

  def handle_startendtag(self, tag, attrs):
    self.stack[-1].children.append(Node(tag, dict(attrs)))

  def handle_endtag(self, tag):
    for depth in range(len(self.stack) - 1, 0, -1):
      if self.stack[depth].tag == tag:
        del self.stack[depth:]
        return

  def handle_data(self, data):
    self.stack[-1].children.append(data)


def parse_html(text: str) -> Node:
  builder = _TreeBuilder()
  builder.feed(text)
  builder.close()
  return builder.root


# -- headless Chromium ---------------------------------------------------------------------------------

def find_chromium() -> str | None:
  for name in CHROMIUM_NAMES:
    path = shutil.which(name)
    if path:
      return path
  return None


def _chromium_command(binary: str, profile_dir: str, *args: str) -> list[str]:
  # A profile per process: concurrent instances sharing one profile hand off to each other and exit early.
  return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
          f"--user-data-dir={profile_dir}", *args]


def dump_doms(binary: str, html_path: str, hashes: Sequence[str]) -> dict[str, str]:
  """The DOM after scripts ran, for `file://html_path#hash` per hash; the browsers run concurrently."""
  url = "file://" + os.path.abspath(html_path)
  with tempfile.TemporaryDirectory() as profiles:
    processes = {}
    for i, fragment in enumerate(hashes):
      command = _chromium_command(binary, os.path.join(profiles, str(i)), "--dump-dom",
                                  url + (f"#{fragment}" if fragment else ""))
      processes[fragment] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    doms = {}
    for fragment, process in processes.items():
      stdout, stderr = process.communicate(timeout=CHROMIUM_TIMEOUT_S)
      if process.returncode != 0 or "<html" not in stdout:
        raise RuntimeError(f"chromium --dump-dom #{fragment} failed (rc {process.returncode}): {stderr[-2000:]}")
      doms[fragment] = stdout
  return doms


def screenshot(binary: str, html_path: str, png_path: str, size: tuple[int, int]) -> None:
  with tempfile.TemporaryDirectory() as profile:
    command = _chromium_command(binary, profile, f"--screenshot={png_path}", f"--window-size={size[0]},{size[1]}",
                                "file://" + os.path.abspath(html_path))
    result = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
  if result.returncode != 0 or not os.path.isfile(png_path):
    raise RuntimeError(f"chromium --screenshot failed (rc {result.returncode}): {result.stderr[-2000:]}")
