"""Reading JSON and JSON-lines files (benchmarks, predictions, scores, metrics) so that every failure names
the file and the place in it.

  load_json_object(path, "Guid")  -> [(key, value), ...] of the top-level JSON object, in file order,
                                     repeated keys kept (`json.load` silently keeps only the last)
  iter_lines(path)                -> (line number, byte offset, raw bytes) of a plain or gzipped file
  iter_json_lines(path)           -> (line number, "FILE line N", object) of every non-blank line of a
                                     plain or gzipped JSONL file; iter_json_lines(path, skipped=report)
                                     counts bad lines in a `SkipReport` instead of raising
  decode_utf8(raw, where, offset) -> str

Failures are `DataError`s (or the subclass the caller passes) such as
  "WebQA_train_val.json: not valid JSON: Expecting ',' delimiter at line 3 column 5"
  "WebQA_train_val.json: not UTF-8 text: byte 0xff at byte offset 1234"
  "MMQA_dev.jsonl.gz: truncated or corrupt gzip data after line 7 (Compressed file ended ...)"
Byte offsets of a gzipped file count bytes of its decompressed text.
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any, Iterator

from mmrag_jax.data.records import DataError, SkipReport

__all__ = ["JsonPairs", "iter_json_lines", "load_json_object"]

JsonPairs = list[tuple[str, Any]]


def _decode_utf8(raw: bytes, where: str, offset: int = 0, error: type[DataError] = DataError) -> str:
  """`raw` as text; a non-UTF-8 byte raises `error` naming `where` and the byte's offset (`offset` + index)."""
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise error(f"{where}: not UTF-8 text: byte {raw[e.start]:#04x} at byte offset {offset + e.start}") from e


def _iter_lines(path: str, error: type[DataError] = DataError) -> Iterator[tuple[int, int, bytes]]:
  """(1-based line number, byte offset of the line's start, raw line with its newline) of every line.

  `.gz` files are decompressed; a truncated or corrupt stream raises `error` naming the file and the last
  complete line, never a bare `EOFError` / `BadGzipFile`.
  """
  number, offset = 0, 0
  with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
    try:
      for number, raw in enumerate(f, start=1):
        yield number, offset, raw
        offset += len(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
      raise error(f"{path}: truncated or corrupt gzip data after line {number} ({e})") from e


def iter_json_lines(path: str, error: type[DataError] = DataError,
                    skipped: SkipReport | None = None) -> Iterator[tuple[int, str, dict[str, Any]]]:
  """(line number, "FILE line N", object) for every non-blank line of a plain or gzipped JSONL file.

  A line that is not UTF-8, not JSON or not a JSON object raises `error` naming it; with `skipped` it is
  reported there as 'malformed' instead (raised only when the report is strict) and reading goes on.
  """
  for number, offset, raw in _iter_lines(path, error):
    where = f"{path} line {number}"
    try:
      obj = _json_object(raw, where, offset, error)
    except error as e:
      if skipped is None:
        raise
      skipped.skip("malformed", where, str(e).removeprefix(f"{where}: "))
      continue
    if obj is not None:
      yield number, where, obj


def _json_object(raw: bytes, where: str, offset: int, error: type[DataError]) -> dict[str, Any] | None:
  """The JSON object of one raw line; None for a blank line."""
  line = _decode_utf8(raw, where, offset, error)
  if not line.strip():
    return None
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    raise error(f"{where}: invalid JSON: {e.msg} at column {e.colno}") from e
  if not isinstance(obj, dict):
    raise error(f"{where}: expected an object, got {type(obj).__name__}")
  return obj


def load_json_object(path: str, keyed_by: str, error: type[DataError] = DataError, hint: str = "") -> JsonPairs:
  """The (key, value) pairs of the file's top-level JSON object, in file order, repeated keys kept.

  Nested objects are plain dicts. Raises `error` naming the file (and line and column, or byte offset)
  for a non-UTF-8 byte, a syntax error or a top-level value that is not an object; `hint` is appended
  to the syntax-error message.
  """
  with open(path, "rb") as f:
    text = _decode_utf8(f.read(), path, error=error)
  finished: list[JsonPairs] = []

  def keep_pairs(pairs: JsonPairs) -> dict[str, Any]:
    finished[:] = [pairs]  # the decoder finishes the top-level object last
    return dict(pairs)

  try:
    value = json.loads(text, object_pairs_hook=keep_pairs)
  except json.JSONDecodeError as e:
    raise error(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}{hint}") from e
  if not isinstance(value, dict):
    raise error(f"{path}: expected a JSON object keyed by {keyed_by}, got {type(value).__name__}")
  return finished[0]
