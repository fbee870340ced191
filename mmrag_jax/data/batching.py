"""Collation of encoded examples into static-shape numpy batches (pure numpy, runs in grain workers).

An encoded example is one prompt, unpadded: `input_ids` [n], its images' `pixel_values` [p, 1176] and
`image_grid_thw` [m, 3], an `error` ('' when fine) and its metadata. A batch has fixed shapes:

  input_ids       [B, L] int32   left-padded with the pad id; L = the smallest length bucket that fits
  attention_mask  [B, L] int32   1 = real token
  position_ids    [3, B, L] int32  M-RoPE (t, h, w) positions; 0 on pads
  rope_deltas     [B] int32      decode position of generated token j = delta + prompt length + j
  pixel_values    [P, 1176] float32  all images' patch rows back to back (row-major over (batch, prompt
                                 order)), zero rows after `num_patches`; P = the patch budget
  image_grid_thw  [I, 3] int32   (t, h, w) per image, zero rows after `num_images`; I = image budget
  image_counts    [B] int32      images of each row (rows' images are consecutive in image_grid_thw)
  num_patches, num_images  [] int32
  valid           [B] bool       False for padding rows and dropped examples
  drop_reason     [B] object     why a row was dropped (one of DROP_REASONS); '' for kept and padding rows
  + metadata      [B] or [B, k]  per-row fields (see `pipeline.stage1_pipeline` / `stage2_pipeline`)

A row is dropped (valid=False) when its example failed to encode (e.g. an unreadable image), its prompt
is longer than the largest bucket, or its images do not fit the remaining patch/image budget; drops are
logged with the question id. Dropped rows and the rows that pad a short last batch hold a single pad
token (mask 1 at the last position) and no image. Shapes therefore depend only on (B, bucket, P, I).

    left padding, B=2, L=8 (p = pad, x = prompt token):
      input_ids       p p p x x x x x        attention_mask  0 0 0 1 1 1 1 1
                      x x x x x x x x                        1 1 1 1 1 1 1 1
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np

from mmrag_jax.model.rope_index import mrope_positions

PATCH_DIM = 1176
# Why a row can be dropped: its image (ImageReadError reasons), its prompt length, or the batch budgets.
DROP_REASONS = ("missing_image", "undecodable_image", "prompt_too_long", "patch_budget", "image_budget")


@dataclasses.dataclass(frozen=True)
class MetaField:
  """One metadata column: dtype, optional fixed width (tuples padded to it), fill value for padding."""

  dtype: Any
  fill: Any
  width: int | None = None


@dataclasses.dataclass(frozen=True)
class BatchShapes:
  """Static batch geometry. patch_budget: pixel rows per batch; max_images: grid rows per batch."""

  batch_size: int
  length_buckets: tuple[int, ...]
  patch_budget: int
  max_images: int
  patch_dim: int = PATCH_DIM

  def __post_init__(self):
    if not self.length_buckets or list(self.length_buckets) != sorted(set(self.length_buckets)):
      raise ValueError(f"length_buckets must be strictly increasing and non-empty, got {self.length_buckets}")
    if self.batch_size < 1 or self.patch_budget < 0 or self.max_images < 0:
      raise ValueError(f"bad batch shapes {self}")

  def bucket(self, length: int) -> int:
    """The smallest bucket >= length (the smallest one for an empty batch)."""
    for bucket in self.length_buckets:
      if length <= bucket:
        return bucket
    raise ValueError(f"length {length} exceeds the largest bucket {self.length_buckets[-1]}")


@dataclasses.dataclass(frozen=True)
class Collator:
  """Picklable batch_fn: list of encoded examples (at most B) -> one static-shape batch dict."""

  shapes: BatchShapes
  meta_fields: dict[str, MetaField]
  pad_token_id: int
  image_token_id: int
  spatial_merge_size: int

  def _drop_reason(self, example: dict[str, Any], patches_used: int, images_used: int) -> tuple[str, str]:
    """(reason, message) of a row that cannot join the batch; ('', '') when it fits."""
    if example["error"]:
      return example.get("error_reason") or "undecodable_image", example["error"]
    if len(example["input_ids"]) > self.shapes.length_buckets[-1]:
      return "prompt_too_long", f"prompt of {len(example['input_ids'])} tokens exceeds the largest bucket"
    if patches_used + len(example["pixel_values"]) > self.shapes.patch_budget:
      return "patch_budget", "images exceed the batch patch budget"
    if images_used + len(example["image_grid_thw"]) > self.shapes.max_images:
      return "image_budget", "images exceed the batch image budget"
    return "", ""

  def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    s = self.shapes
    if len(examples) > s.batch_size:
      raise ValueError(f"got {len(examples)} examples for a batch of {s.batch_size}")
    kept: list[dict[str, Any] | None] = []
    drop_reason = np.full((s.batch_size,), "", dtype=object)
    patches_used = images_used = 0
    for b, example in enumerate(examples):
      drop_reason[b], message = self._drop_reason(example, patches_used, images_used)
      if message:
        logging.warning("dropping example of question %s: %s", example["meta"].get("qid", "?"), message)
        kept.append(None)
        continue
      kept.append(example)
      patches_used += len(example["pixel_values"])
      images_used += len(example["image_grid_thw"])

    lengths = [len(e["input_ids"]) if e is not None else 1 for e in kept]
    length = s.bucket(max(lengths, default=1))
    input_ids = np.full((s.batch_size, length), self.pad_token_id, np.int32)
    attention_mask = np.zeros((s.batch_size, length), np.int32)
    pixel_values = np.zeros((s.patch_budget, s.patch_dim), np.float32)
    grids = np.zeros((s.max_images, 3), np.int32)
    image_counts = np.zeros((s.batch_size,), np.int32)
    valid = np.zeros((s.batch_size,), bool)
    attention_mask[len(kept):, -1] = 1
    patch_row = image_row = 0
    for b, example in enumerate(kept):
      if example is None:
        # One real pad token, so every row ends in a real token as left-padded model inputs require.
        attention_mask[b, -1] = 1
        continue
      n = lengths[b]
      input_ids[b, length - n:] = example["input_ids"]
      attention_mask[b, length - n:] = 1
      p, m = len(example["pixel_values"]), len(example["image_grid_thw"])
      pixel_values[patch_row:patch_row + p] = example["pixel_values"]
      grids[image_row:image_row + m] = example["image_grid_thw"]
      patch_row, image_row = patch_row + p, image_row + m
      image_counts[b] = m
      valid[b] = True
    position_ids, rope_deltas = mrope_positions(
        input_ids, attention_mask, grids[:image_row], image_token_id=self.image_token_id,
        spatial_merge_size=self.spatial_merge_size)
    batch = {
        "input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
        "rope_deltas": rope_deltas, "pixel_values": pixel_values, "image_grid_thw": grids,
        "image_counts": image_counts, "num_patches": np.int32(patch_row), "num_images": np.int32(image_row),
        "valid": valid, "drop_reason": drop_reason,
    }
    batch.update(self._collate_meta([e["meta"] for e in examples]))
    return batch

  def _collate_meta(self, metas: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    out = {}
    for name, field in self.meta_fields.items():
      shape = (self.shapes.batch_size,) if field.width is None else (self.shapes.batch_size, field.width)
      column = np.empty(shape, dtype=field.dtype)
      if column.dtype == object:  # element-wise, so tuple fills stay single elements
        for index in np.ndindex(shape):
          column[index] = field.fill
      else:
        column.fill(field.fill)
      for b, meta in enumerate(metas):
        value = meta[name]
        if field.width is None:
          column[b] = value
        else:
          column[b, :len(value)] = value
      out[name] = column
    return out


def real_images(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The batch with only the real pixel rows and grids (`pixel_values` [num_patches, 1176],
  `image_grid_thw` [num_images, 3]), the form `model.qwen25vl.prepare_inputs` and the transformers model
  take; pass `num_patches=batch["pixel_values"].shape[0]` there to keep the static patch budget."""
  out = dict(batch)
  out["pixel_values"] = batch["pixel_values"][:int(batch["num_patches"])]
  out["image_grid_thw"] = batch["image_grid_thw"][:int(batch["num_images"])]
  return out
