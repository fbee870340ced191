"""Image stores: lazy random access to benchmark images by reference, and decoding with Pillow.

- `WebQAImageStore`: `imgs.tsv` (one `image_id \\t base64(image)` line per image) indexed by
  `imgs.lineidx` (the byte offset of every line). The image of id `i` sits on line
  `int(i) % 10_000_000`. Only the offsets (8 bytes per image) are held in memory; each read is one
  `os.pread` of one line, which is safe from several threads at once.
- `DirectoryImageStore`: MultimodalQA image files under a folder, referenced by relative path.

Stores are picklable (grain workers are spawned processes): open file handles are dropped on pickling and
reopened lazily in the new process.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from typing import Protocol

import numpy as np
from PIL import Image, ImageFile

from mmrag_jax.data.records import DataError

__all__ = ["DirectoryImageStore", "ImageChecker", "ImageReadError", "ImageStore", "WebQAImageStore", "decode_image"]

# WebQA ships truncated JPEGs; the official loaders decode them anyway (missing rows come out grey).
ImageFile.LOAD_TRUNCATED_IMAGES = True

_WEBQA_ID_MODULUS = 10_000_000


class ImageReadError(Exception):
  """An image reference that cannot be resolved or decoded. `reason` is 'missing_image' or 'undecodable_image'."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


class ImageStore(Protocol):
  """Random access to encoded images by reference (WebQA image id, MMQA relative path)."""

  def contains(self, ref: str) -> bool:
    """Cheap existence check (no image bytes are read)."""
    ...

  def read_bytes(self, ref: str) -> bytes:
    """The encoded image (JPEG/PNG bytes). Raises `ImageReadError('missing_image', ...)`."""
    ...


def decode_image(data: bytes, where: str = "image") -> Image.Image:
  """Decodes encoded bytes into an RGB PIL image, fully loaded. Raises `ImageReadError('undecodable_image')`."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      return im.convert("RGB")
  except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
    raise ImageReadError("undecodable_image", f"{where}: cannot decode image ({type(e).__name__})") from e


class WebQAImageStore:
  """Lazy random access into WebQA's `imgs.tsv` through `imgs.lineidx`."""

  def __init__(self, tsv_path: str, lineidx_path: str):
    self.tsv_path = os.fspath(tsv_path)
    self.lineidx_path = os.fspath(lineidx_path)
    for path in (self.tsv_path, self.lineidx_path):
      if not os.path.isfile(path):
        raise FileNotFoundError(f"WebQA image file not found: {path}")
    self._offsets: np.ndarray | None = None
    self._fd: int | None = None
    self._fd_pid: int | None = None
    self._size = 0

  @classmethod
  def from_dir(cls, data_dir: str) -> "WebQAImageStore":
    return cls(os.path.join(data_dir, "imgs.tsv"), os.path.join(data_dir, "imgs.lineidx"))

  def __getstate__(self):
    state = dict(self.__dict__)
    state.update(_offsets=None, _fd=None, _fd_pid=None)
    return state

  def __del__(self):
    if getattr(self, "_fd", None) is not None and self._fd_pid == os.getpid():
      try:
        os.close(self._fd)
      except OSError:
        pass

  @property
  def offsets(self) -> np.ndarray:
    """Byte offset of every line of imgs.tsv, [num_lines] int64 (loaded on first use)."""
    if self._offsets is None:
      with open(self.lineidx_path, "rb") as f:
        lines = f.read().splitlines()
      while lines and not lines[-1].strip():
        lines.pop()
      bad = next((i for i, line in enumerate(lines) if not line.strip().isdigit()), None)
      if bad is not None:
        raise DataError(f"{self.lineidx_path} line {bad + 1}: {lines[bad][:32]!r} is not an integer byte offset")
      self._offsets = np.asarray(lines, dtype=np.int64) if lines else np.zeros((0,), np.int64)
    return self._offsets

  def __len__(self) -> int:
    return len(self.offsets)

  def _line_index(self, ref: str) -> int:
    try:
      return int(ref) % _WEBQA_ID_MODULUS
    except ValueError as e:
      raise ImageReadError("missing_image", f"image id {ref!r} is not an integer") from e

  def contains(self, ref: str) -> bool:
    try:
      return self._line_index(ref) < len(self.offsets)
    except ImageReadError:
      return False

  def _file(self) -> int:
    if self._fd is None or self._fd_pid != os.getpid():
      self._fd = os.open(self.tsv_path, os.O_RDONLY)
      self._fd_pid = os.getpid()
      self._size = os.fstat(self._fd).st_size
    return self._fd

  def read_bytes(self, ref: str) -> bytes:
    line = self._line_index(ref)
    offsets = self.offsets
    if line >= len(offsets):
      raise ImageReadError("missing_image",
                           f"image {ref}: line {line} is beyond {self.lineidx_path} ({len(offsets)} lines)")
    fd = self._file()
    start = int(offsets[line])
    end = int(offsets[line + 1]) if line + 1 < len(offsets) else self._size
    raw = os.pread(fd, end - start, start).rstrip(b"\r\n")
    stored_id, sep, payload = raw.partition(b"\t")
    if not sep:
      raise ImageReadError("undecodable_image", f"{self.tsv_path} line {line}: no tab separator")
    if stored_id.decode("ascii", "replace").strip() != str(ref).strip():
      raise ImageReadError(
          "missing_image",
          f"image {ref}: {self.tsv_path} line {line} holds image {stored_id[:32]!r} (lineidx out of sync)")
    try:
      return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
      raise ImageReadError("undecodable_image", f"image {ref}: {self.tsv_path} line {line}: bad base64 ({e})")


class DirectoryImageStore:
  """Image files under one folder, referenced by relative path (MultimodalQA `path`)."""

  def __init__(self, image_dir: str):
    self.image_dir = os.fspath(image_dir)

  def _path(self, ref: str) -> str:
    path = os.path.normpath(os.path.join(self.image_dir, ref))
    if not path.startswith(os.path.normpath(self.image_dir) + os.sep):
      raise ImageReadError("missing_image", f"image path {ref!r} escapes {self.image_dir}")
    return path

  def contains(self, ref: str) -> bool:
    try:
      return os.path.isfile(self._path(ref))
    except ImageReadError:
      return False

  def read_bytes(self, ref: str) -> bytes:
    path = self._path(ref)
    try:
      with open(path, "rb") as f:
        return f.read()
    except OSError as e:
      raise ImageReadError("missing_image", f"image {ref!r}: cannot read {path} ({e.strerror})") from e


def _check_image(store: ImageStore, ref: str, mode: str) -> None:
  """Verifies an image reference: mode 'off' (nothing), 'exists' (cheap index/file check), 'decode'.

  Raises `ImageReadError` with reason 'missing_image' or 'undecodable_image'.
  """
  if mode == "off":
    return
  if mode == "exists":
    if not store.contains(ref):
      raise ImageReadError("missing_image", f"image {ref!r} is not in the image store")
    return
  if mode == "decode":
    decode_image(store.read_bytes(ref), where=f"image {ref!r}")
    return
  raise ValueError(f"image_check must be 'off', 'exists' or 'decode', got {mode!r}")


class ImageChecker:
  """`_check_image` with one check per reference: pools share images, so each is read at most once."""

  def __init__(self, store: ImageStore | None, mode: str):
    if mode not in ("off", "exists", "decode"):
      raise ValueError(f"image_check must be 'off', 'exists' or 'decode', got {mode!r}")
    self.store = store
    self.mode = mode
    self._problems: dict[str, ImageReadError | None] = {}

  def problem(self, ref: str) -> ImageReadError | None:
    """None when the image passes the check, else the error (reason 'missing_image' / 'undecodable_image')."""
    if self.mode == "off" or self.store is None:
      return None
    if ref not in self._problems:
      try:
        _check_image(self.store, ref, self.mode)
        self._problems[ref] = None
      except ImageReadError as e:
        self._problems[ref] = e
    return self._problems[ref]
