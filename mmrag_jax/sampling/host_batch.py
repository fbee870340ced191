"""Host-side (numpy) reshaping of processor batches: row selection with images, length buckets.

A processor batch is the dict the Qwen2.5-VL processor returns: `input_ids` [B, L] and `attention_mask`
[B, L] (left-padded), optional `mm_token_type_ids` [B, L], and for images `pixel_values` [N_patches,
patch_dim] with `image_grid_thw` [N_images, 3], images in row-major (batch, sequence) order. The
functions here return new batches with exactly these keys; other keys are dropped.

Rows own their images: row b's images are the next `images_per_row[b]` grid rows, and its patch rows
follow the same order. That is all it takes to select, repeat or reorder rows of a multimodal batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmrag_jax.model.config import Qwen25VLConfig

__all__ = [
    "Batch", "completion_batch", "fit_length", "image_counts", "images_per_row", "select_rows", "smallest_bucket",
]

Batch = dict[str, np.ndarray]
_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def smallest_bucket(value: int, buckets: Sequence[int], what: str) -> int:
  """The smallest bucket >= value; raises naming `what` when none fits."""
  for bucket in sorted(buckets):
    if value <= bucket:
      return int(bucket)
  raise ValueError(f"{what} {value} exceeds the largest bucket {max(buckets)} of {tuple(buckets)}")


def images_per_row(batch: Mapping[str, Any], config: Qwen25VLConfig) -> np.ndarray:
  """Number of images of each row: [B] int64, from the `<|image_pad|>` counts and the image grids."""
  grid = batch.get("image_grid_thw")
  grid = np.zeros((0, 3), np.int64) if grid is None else np.asarray(grid).reshape(-1, 3)
  return image_counts(np.asarray(batch["input_ids"]), grid, config.image_token_id, config.vision.merge_unit)


def image_counts(input_ids: np.ndarray, grid: np.ndarray, image_token_id: int, merge_unit: int) -> np.ndarray:
  """[B] int64 images of each row of input_ids [B, L], whose `<|image_pad|>` runs hold the images of grid
  [I, 3] in order (t * h * w / merge_unit tokens each)."""
  tokens_per_row = np.sum(input_ids == image_token_id, axis=1)
  tokens_per_image = np.prod(grid, axis=1) // merge_unit
  counts = np.zeros(len(input_ids), np.int64)
  image = 0
  for b, needed in enumerate(tokens_per_row.tolist()):
    while needed > 0 and image < len(grid):
      needed -= int(tokens_per_image[image])
      counts[b] += 1
      image += 1
    if needed != 0:
      raise ValueError(f"row {b}: its <|image_pad|> tokens do not match whole images of image_grid_thw")
  if image != len(grid):
    raise ValueError(f"image_grid_thw has {len(grid) - image} image(s) beyond the <|image_pad|> tokens")
  return counts


def select_rows(batch: Mapping[str, Any], rows: Sequence[int] | np.ndarray, config: Qwen25VLConfig) -> Batch:
  """The batch made of rows `rows` (any order, repeats allowed), each with its own images.

  E.g. rows = np.repeat(np.arange(B), G) gives G consecutive copies of every prompt.
  """
  rows = np.asarray(rows, np.int64)
  out = {key: np.asarray(batch[key])[rows] for key in _TOKEN_KEYS if batch.get(key) is not None}
  if batch.get("image_grid_thw") is None:
    return out
  grid = np.asarray(batch["image_grid_thw"]).reshape(-1, 3)
  pixels = np.asarray(batch["pixel_values"])
  image_starts = np.concatenate([[0], np.cumsum(images_per_row(batch, config))])
  patch_starts = np.concatenate([[0], np.cumsum(np.prod(grid, axis=1))])
  images = np.concatenate([np.arange(image_starts[r], image_starts[r + 1]) for r in rows]).astype(np.int64)
  patches = np.concatenate([np.arange(patch_starts[i], patch_starts[i + 1]) for i in images] or [[]])
  out["image_grid_thw"] = grid[images]
  out["pixel_values"] = pixels[patches.astype(np.int64)]
  return out


def fit_length(batch: Mapping[str, Any], length: int, pad_token_id: int) -> Batch:
  """Left-pads (or drops leading all-pad columns) so every token array is [B, length].

  Raises if a row has more than `length` real tokens.
  """
  input_ids = np.asarray(batch["input_ids"])
  mask = np.asarray(batch.get("attention_mask", np.ones_like(input_ids)))
  longest = int(mask.astype(bool).sum(axis=1).max(initial=0))
  if longest > length:
    raise ValueError(f"a prompt has {longest} tokens, more than the length {length}")
  current = input_ids.shape[1]
  out = dict(batch)
  out["attention_mask"] = mask
  fills = {"input_ids": pad_token_id, "attention_mask": 0, "mm_token_type_ids": 0}
  for key, fill in fills.items():
    if out.get(key) is None:
      continue
    values = np.asarray(out[key])
    if current >= length:
      out[key] = values[:, current - length:]
    else:
      out[key] = np.concatenate([np.full((len(values), length - current), fill, values.dtype), values], axis=1)
  return out


def completion_batch(prompt_batch: Mapping[str, Any], completions: np.ndarray, group_size: int,
                     config: Qwen25VLConfig) -> Batch:
  """Prompt + completion sequences for recomputing the completions' log-probs with a full forward.

  prompt_batch: the B prompts (left-padded, length L); completions: [B * G, T] sampled tokens, prompt-major
  (rows b * G ... b * G + G - 1 belong to prompt b), pads after each stop. Returns a processor batch of
  B * G rows and length L + T (each prompt with its images, repeated G times, then its completion) plus
  `targets` [B * G, L + T]: the next token at every position (pad at the last).

  The whole completion span is marked real in `attention_mask`, pads after a stop included: attention
  is causal, so those pads cannot change any earlier position; mask them out of the loss with the
  sampler's `completion_mask`. The log-prob of completion token t sits at position L - 1 + t.
  """
  completions = np.asarray(completions)
  batch_size = len(np.asarray(prompt_batch["input_ids"]))
  if completions.ndim != 2 or len(completions) != batch_size * group_size:
    raise ValueError(f"completions must be [B * G, T] = [{batch_size * group_size}, T], got {completions.shape}")
  out = select_rows(prompt_batch, np.repeat(np.arange(batch_size), group_size), config)
  if "attention_mask" not in out:
    out["attention_mask"] = np.ones_like(out["input_ids"])
  dtypes = {key: np.asarray(out[key]).dtype for key in _TOKEN_KEYS if key in out}
  out["input_ids"] = np.concatenate([out["input_ids"], completions.astype(dtypes["input_ids"])], axis=1)
  out["attention_mask"] = np.concatenate(
      [out["attention_mask"], np.ones(completions.shape, dtypes["attention_mask"])], axis=1)
  if "mm_token_type_ids" in out:
    out["mm_token_type_ids"] = np.concatenate(
        [out["mm_token_type_ids"], np.zeros(completions.shape, dtypes["mm_token_type_ids"])], axis=1)
  targets = np.full_like(out["input_ids"], config.pad_token_id)
  targets[:, :-1] = out["input_ids"][:, 1:]
  out["targets"] = targets
  return out
