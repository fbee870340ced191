"""Collation of encoded examples into static-shape batches (pure numpy, runs in grain workers).

An encoded example is one prompt, unpadded: `input_ids` [n], its images' `pixel_values` [p, 1176] and
`image_grid_thw` [m, 3], an `error` ('' when fine) and its metadata. A batch is a `PipelineBatch`:

  prompts  `sampling.prompt_batch.PromptBatch`: ids and mask [B, L] (L = the smallest length bucket that
           fits), M-RoPE positions, rope deltas, pixel rows [P, 1176] (P = the smallest patch bucket that
           fits; None in a batch without images), image grids and counts, `valid` [B] (False for padding
           rows and dropped examples); with the model's layout (`PipelineConfig.layout`) also the vision
           index and image-token slots of its `model_inputs`. This is exactly what the sampler, the scorer
           and the trainer's batch builder take.
  meta     per-row fields [B] or [B, k] (see `pipeline.stage1_pipeline` / `stage2_pipeline`), plus
           `drop_reason` [B] object: why a row was dropped (one of DROP_REASONS); '' for kept and padding rows.

A row is dropped (valid=False) when its example failed to encode (e.g. an unreadable image), its prompt
is longer than the largest length bucket, or its images do not fit the remaining patch budget (the largest
patch bucket) or image budget; drops are logged with the question id. Dropped rows and the rows that pad a
short last batch hold a single pad token (mask 1 at the last position) and no image. Shapes therefore
depend only on (B, length bucket, patch bucket).

    left padding, B=2, L=8 (p = pad, x = prompt token):
      input_ids       p p p x x x x x        attention_mask  0 0 0 1 1 1 1 1
                      x x x x x x x x                        1 1 1 1 1 1 1 1
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np

from mmrag_jax.sampling.prompt_batch import PromptBatch, PromptTokens, prompt_batch

__all__ = ["BatchShapes", "Collator", "DROP_REASONS", "MetaField", "PATCH_DIM", "PipelineBatch"]

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
class PipelineBatch:
  """One batch of the input pipeline: the model's prompts and, apart, the per-row metadata for rewards.

  prompts:  `PromptBatch` of B prompts.
  meta:     name -> [B] or [B, k] host array (object, int32 or bool; see `pipeline.stage1_pipeline` /
            `stage2_pipeline`), plus `drop_reason` [B] object.
  """

  prompts: PromptBatch
  meta: dict[str, np.ndarray]


def _increasing(name: str, buckets: tuple[int, ...]) -> None:
  if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
    raise ValueError(f"{name} must be strictly increasing positive sizes, got {buckets}")


@dataclasses.dataclass(frozen=True)
class BatchShapes:
  """Static batch geometry: prompts are left-padded to the smallest of `length_buckets` that fits, pixel rows
  to the smallest of `patch_buckets` (multiples of 4; the largest is the batch's patch budget); max_images:
  images per batch."""

  batch_size: int
  length_buckets: tuple[int, ...]
  patch_buckets: tuple[int, ...]
  max_images: int

  def __post_init__(self):
    _increasing("length_buckets", self.length_buckets)
    _increasing("patch_buckets", self.patch_buckets)
    if any(b % 4 for b in self.patch_buckets):  # the vision tower merges 2x2 patches
      raise ValueError(f"patch_buckets must be multiples of 4, got {self.patch_buckets}")
    if self.batch_size < 1 or self.max_images < 0:
      raise ValueError(f"bad batch shapes {self}")

  @property
  def patch_budget(self) -> int:
    return self.patch_buckets[-1]


@dataclasses.dataclass(frozen=True)
class Collator:
  """Picklable batch_fn: list of encoded examples (at most B) -> one static-shape `PipelineBatch`."""

  shapes: BatchShapes
  meta_fields: dict[str, MetaField]
  tokens: PromptTokens

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

  def __call__(self, examples: Sequence[dict[str, Any]]) -> PipelineBatch:
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

    length = max((len(e["input_ids"]) for e in kept if e is not None), default=1)
    input_ids = np.full((s.batch_size, length), self.tokens.pad_token_id, np.int32)
    attention_mask = np.zeros((s.batch_size, length), np.int32)
    valid = np.zeros((s.batch_size,), bool)
    pixels, grids = [], []
    for b, example in enumerate(kept):
      if example is None:
        continue
      n = len(example["input_ids"])
      input_ids[b, length - n:] = example["input_ids"]
      attention_mask[b, length - n:] = 1
      pixels.append(example["pixel_values"])
      grids.append(example["image_grid_thw"])
      valid[b] = True
    processed = {"input_ids": input_ids, "attention_mask": attention_mask}
    if any(len(g) for g in grids):
      processed["pixel_values"], processed["image_grid_thw"] = np.concatenate(pixels), np.concatenate(grids)
    # Rows without a prompt (dropped, or padding a short batch) become padding rows with one real pad token.
    prompts = prompt_batch(processed, self.tokens, length_buckets=s.length_buckets, patch_buckets=s.patch_buckets,
                           valid=valid)
    meta = self._collate_meta([e["meta"] for e in examples])
    meta["drop_reason"] = drop_reason
    return PipelineBatch(prompts=prompts, meta=meta)

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
