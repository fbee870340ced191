"""Checksums of a checkpoint step folder: `checksums.json` lists the size and sha256 of every file.

Written by process 0 before orbax commits the step (see `checkpointing.py`); verified before a restore,
so bytes changed on disk after the save are found instead of restored.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os

__all__ = ["CHECKSUMS", "verify_step", "write_checksums"]

CHECKSUMS = "checksums.json"
# Written by orbax after the post-finalization hook (commit timestamp, commit marker): not checksummed.
_COMMIT_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")
# What orbax itself needs to restore a step; checked for steps without checksums.
_REQUIRED_FILES = ("state/_METADATA", "meta/metadata")


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def _sha256_all(paths: list[str]) -> list[str]:
  # hashlib releases the GIL on large updates: files hash in parallel.
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    return list(pool.map(_sha256, paths))


def write_checksums(step_dir: str) -> None:
  """Writes `step_dir/checksums.json` (size and sha256 of every file but orbax's commit files), atomically."""
  names = sorted(os.path.relpath(os.path.join(root, name), step_dir)
                 for root, _, files in os.walk(step_dir) for name in files)
  names = [n for n in names if n not in _COMMIT_FILES + (CHECKSUMS, CHECKSUMS + ".tmp")]
  digests = _sha256_all([os.path.join(step_dir, n) for n in names])
  files = {n: {"size": os.path.getsize(os.path.join(step_dir, n)), "sha256": d} for n, d in zip(names, digests)}
  path = os.path.join(step_dir, CHECKSUMS)
  with open(path + ".tmp", "w") as f:
    json.dump({"files": files}, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + ".tmp", path)


def verify_step(step_dir: str) -> str | None:
  """Why the committed step folder `step_dir` is unusable (a short reason), or None when its files match
  `checksums.json`. Without checksums only orbax's metadata files are required (see the module docstring)."""
  path = os.path.join(step_dir, CHECKSUMS)
  if not os.path.exists(path):
    missing = [n for n in _REQUIRED_FILES if not os.path.isfile(os.path.join(step_dir, n))]
    return f"it has no {CHECKSUMS} and no {missing[0]}" if missing else None
  try:
    with open(path) as f:
      files = {name: (int(entry["size"]), str(entry["sha256"])) for name, entry in json.load(f)["files"].items()}
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
    return f"{CHECKSUMS} is unreadable ({type(error).__name__}: {error})"
  names = sorted(files)
  for name in names:
    full = os.path.join(step_dir, name)
    if not os.path.isfile(full):
      return f"{name} is missing"
    if os.path.getsize(full) != files[name][0]:
      return f"{name} has {os.path.getsize(full)} bytes, {files[name][0]} when written"
  for name, digest in zip(names, _sha256_all([os.path.join(step_dir, n) for n in names])):
    if digest != files[name][1]:
      return f"{name} does not match its sha256 checksum"
  return None
