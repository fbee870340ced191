"""Generic reading skills over the synthetic world's documents: the base model's pretraining examples.

Every example asks about ONE given document (a picture with its title and caption, or a text fact),
something a general instruction-tuned model can do with it:

  describe      picture -> "The photo of Kenmi Tower shows 3 red circles."
  restate       text    -> the sentence itself
  ask           one question about the document (its color / count / shape, its city / year)
                -> one answer sentence, plain, inside <answer>, after a <think> observation, or
                   also naming the document's number inside <evidence>
  check         a yes/no question about one document shown alone (is it a photo of / a text about a
                named landmark, the picture's color or shapes, what the text states)
                -> <answer>yes</answer> | <answer>no</answer>

Documents are listed as "[n] Image (title: …): <image> Caption: …" / "[n] Text (title: …): …"; a question
may list up to MAX_LISTED documents, and then names the one it is about by its number ("Question about
document [2]: …"). None of them is a relevance judgment: which document matters is always given, so the
stage-1 and stage-2 tasks (judging a candidate against a question, finding and citing the gold ones among
the top k) stay for RL to learn.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import Any

from mmrag_jax.data.records import IMAGE, Candidate
from mmrag_jax.data.synthetic import COLORS, SHAPES, Scene
from mmrag_jax.data.synthetic.scenes import describe
from mmrag_jax.data.synthetic.world import Entity, plural

__all__ = ["MAX_LISTED", "PretrainExample", "TASKS", "document_examples"]

MAX_LISTED = 3  # documents shown in one prompt at most
TASKS = ("describe", "restate", "ask", "check")
_PLAIN = "Answer with one sentence."
_TAGGED = "Write the answer sentence inside <answer></answer>."
_THINK = "First say what the document shows inside <think></think>, then write the answer sentence inside <answer></answer>."
_CITE = ("First say what the document shows inside <think></think>, then give its number inside "
         "<evidence></evidence>, then write the answer sentence inside <answer></answer>.")
_YES_NO = "Reply with <answer>yes</answer> or <answer>no</answer>."
_ANSWER_FORMATS = (_PLAIN, _TAGGED, _THINK, _CITE)


@dataclasses.dataclass(frozen=True)
class PretrainExample:
  """One prompt (chat messages, one image part per image document, in order) and its reference completion."""

  task: str
  candidates: tuple[Candidate, ...]
  messages: list[dict[str, Any]]
  target: str


def _listing(documents: Sequence[Candidate]) -> list[dict[str, Any]]:
  """Content parts that list numbered documents, images inline: '[2] Image (title: X): <image> Caption: …'."""
  parts: list[dict[str, Any]] = []
  text = ""
  for number, doc in enumerate(documents, start=1):
    if doc.kind == IMAGE:
      parts.append({"type": "text", "text": text + f"[{number}] Image (title: {doc.title}): "})
      parts.append({"type": "image"})
      text = f" Caption: {doc.text}\n"
    else:
      text += f"[{number}] Text (title: {doc.title}): {doc.text}\n"
  return parts + [{"type": "text", "text": text}]


def _single(doc: Candidate, request: str) -> list[dict[str, Any]]:
  """One document shown alone, with its title and caption or text, then the request."""
  if doc.kind == IMAGE:
    parts = [{"type": "image"}, {"type": "text", "text": f"\nImage title: {doc.title}\nImage caption: {doc.text}\n"}]
  else:
    parts = [{"type": "text", "text": f"Text title: {doc.title}\nText: {doc.text}\n"}]
  parts[-1]["text"] += request
  return [{"role": "user", "content": parts}]


def _messages(documents: Sequence[Candidate], header: str, request: str) -> list[dict[str, Any]]:
  parts = [{"type": "text", "text": header + "Documents:\n"}, *_listing(documents)]
  parts[-1] = {"type": "text", "text": parts[-1]["text"] + request}
  return [{"role": "user", "content": parts}]


def _formatted(answer: str, observation: str, instruction: str) -> str:
  """The answer in the instruction's format; '{n}' stands for the document's number."""
  if instruction == _PLAIN:
    return answer
  if instruction == _TAGGED:
    return f"<answer>{answer}</answer>"
  if instruction == _THINK:
    return f"<think>{observation}</think><answer>{answer}</answer>"
  return f"<think>{observation}</think><evidence>[{{n}}]</evidence><answer>{answer}</answer>"


def _picture_questions(name: str, scene: Scene) -> list[tuple[str, str]]:
  return [(f"What color are the shapes in the photo of {name}?", f"The shapes in the photo of {name} are {scene.color}."),
          (f"How many shapes are in the photo of {name}?", f"There are {scene.count} shapes in the photo of {name}."),
          (f"What shape is drawn in the photo of {name}?", f"The photo of {name} shows {plural(scene.shape)}."),
          (f"What is shown in the photo of {name}?", f"The photo of {name} shows {describe(scene)}.")]


def _text_questions(name: str, kind: str, value: str) -> list[tuple[str, str]]:
  if kind == "city":
    return [(f"In which city is {name} located?", f"{name} is located in {value}.")]
  return [(f"In what year was {name} founded?", f"{name} was founded in {value}.")]


def _confusable_name(rng: random.Random, name: str, names: Sequence[str]) -> str:
  """Another landmark's name, sharing a word or the first syllable with `name` when one does."""
  others = [n for n in names if n != name]
  close = [n for n in others if n.split()[-1] == name.split()[-1] or n[:3] == name[:3]]
  return rng.choice(close or others or [name])


def _checks(rng: random.Random, candidate: Candidate, scene: Scene | None, fact: tuple[str, str, str] | None,
            names: Sequence[str]) -> list[tuple[str, bool]]:
  """Yes/no questions about the document's content: its subject, its picture or its fact (half true)."""
  name = candidate.title if rng.random() < 0.5 else _confusable_name(rng, candidate.title, names)
  if scene is not None:
    color = scene.color if rng.random() < 0.5 else rng.choice([c for c in COLORS if c != scene.color])
    shape = scene.shape if rng.random() < 0.5 else rng.choice([s for s in SHAPES if s != scene.shape])
    return [(f"Is this a photo of {name}?", name == candidate.title),
            (f"Are the shapes in this picture {color}?", color == scene.color),
            (f"Does this picture show {plural(shape)}?", shape == scene.shape)]
  title, kind, value = fact
  asked = kind if rng.random() < 0.5 else next(k for k in ("city", "year") if k != kind)
  where = f"where {title} is located" if asked == "city" else f"when {title} was founded"
  return [(f"Is this text about {name}?", name == candidate.title),
          (f"Does this text say {where}?", asked == kind),
          (f"Does the text say that {title} {'is located in' if kind == 'city' else 'was founded in'} {value}?", True)]


def document_examples(rng: random.Random, candidate: Candidate, scene: Scene | None,
                      values: Mapping[str, Sequence[str]] | None = None,
                      others: Sequence[Candidate] = ()) -> list[PretrainExample]:
  """Every skill's examples for one document (`scene`: the picture's content, None for text).

  values: the world's cities and years by fact kind, for false text checks; names of other landmarks
    come from `others`.
  others: documents that may be listed next to it in a question's prompt (the question names the
    document by its number, so the extra documents are context to skip, not candidates to judge).
  """
  out: list[PretrainExample] = []

  def add(task: str, request: str, target: str, *, question: str = "", listed: int = 1) -> None:
    extra = rng.sample(list(others), min(listed - 1, len(others)))
    documents = [*extra]
    number = rng.randint(1, len(documents) + 1)
    documents.insert(number - 1, candidate)
    header = f"Question about document [{number}]: {question}\n" if question else ""
    request = request.format(n=number)
    target = target.format(n=number)
    out.append(PretrainExample(task, tuple(documents), _messages(documents, header, request), target))

  if scene is not None:
    observation = f"Document [{{n}}] shows {describe(scene)}."
    add("describe", "Describe document [{n}] in one sentence.", f"The photo of {candidate.title} shows {describe(scene)}.")
    questions = _picture_questions(candidate.title, scene)
    fact = None
  else:
    fact = Entity.parse_fact(candidate.text)
    if fact is None:
      return []
    observation = f"Document [{{n}}] names {fact[2]}."
    add("restate", "Repeat document [{n}].", candidate.text)
    questions = _text_questions(*fact)
  for question, answer in questions:
    listed = rng.randint(1, MAX_LISTED)
    # With several documents listed the answer names the one it used.
    instruction = rng.choice(_ANSWER_FORMATS) if listed == 1 else _CITE
    add("ask", instruction, _formatted(answer, observation, instruction), question=question, listed=listed)
  checks = _checks(rng, candidate, scene, fact, sorted({o.title for o in others}))
  if fact is not None and values:
    name, kind, value = fact
    wrong = rng.choice([v for v in values.get(kind, ()) if v != value] or [value])
    verb = "is located in" if kind == "city" else "was founded in"
    checks.append((f"Does the text say that {name} {verb} {wrong}?", wrong == value))
  for question, truth in checks:
    out.append(PretrainExample("check", (candidate,), _single(candidate, f"Question: {question}\n{_YES_NO}"),
                               f"<answer>{'yes' if truth else 'no'}</answer>"))
  return out
