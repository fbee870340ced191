"""Prompt builders for the two stages, as chat messages in the Hugging Face format.

Each builder returns `[{"role": "user", "content": [...]}]` (plus a system turn when one is configured),
where images appear as `{"type": "image"}` parts, one per image candidate, in candidate order; the caller
passes the decoded images in that same order to the processor. The output formats follow DESIGN.md:

  stage 1 (one candidate):  <answer>yes</answer> | <answer>no</answer>   (optionally after <think>…</think>)
  stage 2 (k candidates):   <think>…</think><evidence>[3], [1]</evidence><answer>…</answer>

Stage-1 user turn for an image candidate (the image comes first, as in RagVL's reranker prompt):

  <image>
  Image title: Varnok Tower
  Image caption: A photo of Varnok Tower.
  Question: What color are the shapes in the photo of Varnok Tower?
  Is this image relevant to answering the question? Reply with <answer>yes</answer> or <answer>no</answer>.

Stage-2 user turn:

  Question: …
  Candidates:
  [1] Image (title: Varnok Tower): <image> Caption: A photo of Varnok Tower.
  [2] Text (title: Varnok Tower): Varnok Tower was founded in 1873 …
  Use the candidates to answer the question. First reason step by step inside <think></think>. …
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

__all__ = [
    "ANSWER_STYLE", "CandidateLike", "PromptConfig", "STAGE1_ANSWER", "STAGE1_THINK", "STAGE2_INSTRUCTION",
    "image_positions", "stage1_messages", "stage2_messages",
]

_IMAGE_KIND = "image"

STAGE1_ANSWER = "Reply with <answer>yes</answer> or <answer>no</answer>."
STAGE1_THINK = "First think briefly inside <think></think>, then reply with <answer>yes</answer> or <answer>no</answer>."
STAGE2_INSTRUCTION = (
    "Use the candidates to answer the question. First reason step by step inside <think></think>. "
    "Then list the numbers of the candidates you used as evidence, most relevant first, inside "
    "<evidence></evidence>, for example <evidence>[2], [1]</evidence>. "
    "Finally write the answer inside <answer></answer>.")
# The same without reasoning (the "think off" ablation).
_STAGE2_INSTRUCTION_NO_THINK = (
    "Use the candidates to answer the question. List the numbers of the candidates you used as evidence, "
    "most relevant first, inside <evidence></evidence>, for example <evidence>[2], [1]</evidence>. "
    "Then write the answer inside <answer></answer>.")
# WebQA references are full sentences, MultimodalQA references short spans.
ANSWER_STYLE = {
    "webqa": "The answer is one complete sentence.",
    "mmqa": "The answer is a short phrase. If there are several answers, separate them with semicolons.",
}


class CandidateLike(Protocol):
  """What a prompt needs of a candidate (`mmrag_jax.data.Candidate` satisfies it)."""

  kind: str
  title: str
  text: str


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """Prompt choices (ours; the paper's prompts are not public).

  stage1_think: ask stage 1 for a short <think> before the answer.
  stage2_think: ask stage 2 to reason inside <think> first (off: evidence and answer only).
  max_text_words: text facts and captions are cut to this many words.
  system_prompt: a system turn; None keeps the chat template's default ("You are a helpful assistant.").
  """

  stage1_think: bool = False
  stage2_think: bool = True
  max_text_words: int = 200
  system_prompt: str | None = None


def _clip(text: str, max_words: int) -> str:
  words = text.split()
  return " ".join(words[:max_words]) + (" …" if len(words) > max_words else "")


def _lines(*pairs: tuple[str, str]) -> str:
  """'Label: value' lines for the non-empty values."""
  return "".join(f"{label}: {value}\n" for label, value in pairs if value)


def _with_system(user_content: list[dict[str, Any]], config: PromptConfig) -> list[dict[str, Any]]:
  messages = [{"role": "user", "content": user_content}]
  if config.system_prompt is not None:
    messages.insert(0, {"role": "system", "content": [{"type": "text", "text": config.system_prompt}]})
  return messages


def stage1_messages(question: str, candidate: CandidateLike, config: PromptConfig = PromptConfig()
                    ) -> list[dict[str, Any]]:
  """Point-wise relevance prompt for one candidate; one image part iff the candidate is an image."""
  instruction = STAGE1_THINK if config.stage1_think else STAGE1_ANSWER
  body = _clip(candidate.text, config.max_text_words)
  if candidate.kind == _IMAGE_KIND:
    content: list[dict[str, Any]] = [{"type": "image"}]
    text = "\n" + _lines(("Image title", candidate.title), ("Image caption", body))
    noun = "image"
  else:
    content = []
    text = _lines(("Text title", candidate.title), ("Text", body))
    noun = "text"
  text += f"Question: {question}\nIs this {noun} relevant to answering the question? {instruction}"
  content.append({"type": "text", "text": text})
  return _with_system(content, config)


def stage2_messages(question: str, candidates: Sequence[CandidateLike], config: PromptConfig = PromptConfig(),
                    answer_style: str = "") -> list[dict[str, Any]]:
  """List-wise prompt: candidates numbered [1]..[k] in the given order, images inline.

  answer_style: an extra sentence about the expected answer form (see `ANSWER_STYLE`).
  """
  content: list[dict[str, Any]] = []
  text = f"Question: {question}\nCandidates:\n"
  for number, candidate in enumerate(candidates, start=1):
    body = _clip(candidate.text, config.max_text_words)
    is_image = candidate.kind == _IMAGE_KIND
    text += f"[{number}] {'Image' if is_image else 'Text'}" + (f" (title: {candidate.title})" if candidate.title else "")
    if is_image:
      content.append({"type": "text", "text": text + ": "})
      content.append({"type": "image"})
      text = (f" Caption: {body}" if body else "") + "\n"
    else:
      text += f": {body}\n"
  text += (STAGE2_INSTRUCTION if config.stage2_think else _STAGE2_INSTRUCTION_NO_THINK) + (
      f" {answer_style}" if answer_style else "")
  content.append({"type": "text", "text": text})
  return _with_system(content, config)


def image_positions(candidates: Sequence[CandidateLike]) -> list[int]:
  """Indices of the image candidates: the order in which the prompt expects their images."""
  return [i for i, c in enumerate(candidates) if c.kind == _IMAGE_KIND]
