"""English lemmatizer behind the WebQA keyword normalization.

The official WebQA script lemmatizes with spaCy `en_core_web_sm` (tagger-based lemmas). That model is
not installable from the package registries everywhere, so the default here is:

  * spaCy `en_core_web_sm` when both `spacy` and the model import (identical to the official script);
  * otherwise `simplemma`, a dictionary lemmatizer that ships its data. It lemmatizes whitespace tokens
    one at a time, without part-of-speech context and without spaCy's sub-word splitting (spaCy turns
    "10km" into "10 km" and "cant" into "ca nt"). Typical keyword answers (colors, shapes, numbers,
    yes/no, plural nouns, verb forms such as "is" -> "be") lemmatize the same way; rare words may not.

The backend in use is reported by `lemmatizer_name()` and recorded in every metrics file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import simplemma

__all__ = ["BACKENDS", "lemmatize", "lemmatizer_name", "set_lemmatizer"]

BACKENDS = ("auto", "spacy", "simplemma")

_requested_backend = "auto"


@functools.lru_cache(maxsize=1 << 16)
def _simplemma_word(word: str) -> str:
  lemma = simplemma.lemmatize(word, lang="en").lower()
  # An empty or multi-token lemma would change the token count of the bag.
  return lemma if lemma and len(lemma.split()) == 1 else word


def _simplemma_text(text: str) -> str:
  return " ".join(_simplemma_word(word) for word in text.split())


@functools.lru_cache(maxsize=1)
def _spacy_pipeline():
  """The official pipeline, or None when spaCy or its English model is missing."""
  try:
    import spacy

    return spacy.load("en_core_web_sm", disable=["ner", "textcat", "parser"])
  except (ImportError, OSError):
    return None


def _spacy_text(text: str) -> str:
  return " ".join(token.lemma_ for token in _spacy_pipeline()(text))


def set_lemmatizer(backend: str) -> None:
  """Choose the lemmatizer: 'auto' (spaCy if installed, else simplemma), 'spacy' or 'simplemma'.

  Raises ValueError for an unknown name, or for 'spacy' when spaCy or `en_core_web_sm` is missing.
  """
  global _requested_backend
  if backend not in BACKENDS:
    raise ValueError(f"lemmatizer must be one of {BACKENDS}, got {backend!r}")
  if backend == "spacy" and _spacy_pipeline() is None:
    raise ValueError("lemmatizer 'spacy' requested but spacy / en_core_web_sm cannot be loaded")
  _requested_backend = backend


def lemmatizer_name() -> str:
  """The backend that `lemmatize` uses right now: 'spacy' or 'simplemma'."""
  if _requested_backend == "auto":
    return "spacy" if _spacy_pipeline() is not None else "simplemma"
  return _requested_backend


def lemmatize(text: str, backend: str | None = None) -> str:
  """Space-joined lemmas of `text` (lowercased and punctuation-stripped by the caller).

  backend: "spacy" or "simplemma"; None means the current `lemmatizer_name()`.
  """
  backend = backend or lemmatizer_name()
  if backend not in ("spacy", "simplemma"):
    raise ValueError(f"lemmatize backend must be 'spacy' or 'simplemma', got {backend!r}")
  lemmatize_backend: Callable[[str], str] = _spacy_text if backend == "spacy" else _simplemma_text
  return lemmatize_backend(text)
