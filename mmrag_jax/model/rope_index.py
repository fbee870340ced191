"""Host-side (numpy) index math for the text decoder: M-RoPE positions and image-token scatter slots.

M-RoPE gives every token a (t, h, w) position. Per sample, over the non-pad tokens only, a counter `st`
starts at 0:

  text token (vision_start/end included)   -> (st, st, st), then st += 1
  image with merged grid (t, h', w')       -> token (i, r, c) gets (st + i, st + r, st + c) in raster
                                              order, then st += max(h', w')

Example, one 2x3 merged image between two text tokens (`T` text, `I` image_pad):

  tokens  T  I  I  I  I  I  I  T
  t-axis  0  1  1  1  1  1  1  4
  h-axis  0  1  1  1  2  2  2  4
  w-axis  0  1  2  3  1  2  3  4

Left pads get position 0 on every axis (they are masked out of attention anyway). The rope delta of a row
is (max position + 1) - (number of real tokens): generated token k (0-based) of that row sits at position
delta + length + k, equal on all three axes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["image_scatter_indices", "mrope_positions"]


def _runs(flags: np.ndarray) -> list[tuple[int, int, bool]]:
  """Maximal runs of equal values in a 1-D bool array as (start, end, value), end exclusive."""
  if flags.size == 0:
    return []
  change = np.flatnonzero(flags[1:] != flags[:-1]) + 1
  starts = np.concatenate([[0], change])
  ends = np.concatenate([change, [flags.size]])
  return [(int(s), int(e), bool(flags[s])) for s, e in zip(starts, ends)]


def _merged_token_counts(image_grid_thw: np.ndarray, spatial_merge_size: int) -> np.ndarray:
  """Language-model tokens per image: t * (h / m) * (w / m). image_grid_thw: [N, 3] -> [N]."""
  grid = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
  if np.any(grid[:, 1:] % spatial_merge_size):
    raise ValueError(f"image_grid_thw has a side not divisible by spatial_merge_size={spatial_merge_size}: "
                     f"{grid.tolist()}")
  return grid[:, 0] * (grid[:, 1] // spatial_merge_size) * (grid[:, 2] // spatial_merge_size)


def _image_positions(grid_thw: np.ndarray, start: int, spatial_merge_size: int) -> np.ndarray:
  """(t, h, w) positions [3, t*h'*w'] of one image's merged tokens in raster order, offset by `start`."""
  t, h, w = (int(grid_thw[0]), int(grid_thw[1]) // spatial_merge_size, int(grid_thw[2]) // spatial_merge_size)
  tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
  return np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + start


def _row_positions(ids: np.ndarray, grids: Iterator[np.ndarray], *, image_token_id: int,
                   spatial_merge_size: int, row: int) -> np.ndarray:
  """Positions [3, n] for one row's real tokens `ids` [n], consuming images from `grids` in order."""
  positions = np.empty((3, ids.size), dtype=np.int64)
  counter = 0
  for start, end, is_image in _runs(ids == image_token_id):
    if not is_image:
      positions[:, start:end] = counter + np.arange(end - start)
      counter += end - start
      continue
    cursor = start
    while cursor < end:  # a run may hold several images placed back to back
      grid = next(grids, None)
      if grid is None:
        raise ValueError(f"input_ids row {row} has more <|image_pad|> tokens than image_grid_thw describes")
      image = _image_positions(grid, counter, spatial_merge_size)
      if cursor + image.shape[1] > end:
        raise ValueError(
            f"input_ids row {row}: a run of {end - start} <|image_pad|> tokens does not split into whole "
            f"images; image with grid {grid.tolist()} needs {image.shape[1]} tokens")
      positions[:, cursor:cursor + image.shape[1]] = image
      cursor += image.shape[1]
      counter += max(int(grid[1]), int(grid[2])) // spatial_merge_size
  return positions


def mrope_positions(input_ids: np.ndarray, attention_mask: np.ndarray | None,
                    image_grid_thw: np.ndarray | None, *, image_token_id: int,
                    spatial_merge_size: int) -> tuple[np.ndarray, np.ndarray]:
  """M-RoPE positions and rope deltas for a (left-)padded batch, as transformers' `get_rope_index`.

  Args:
    input_ids: [B, L] token ids; images appear as runs of `image_token_id`, in the same row-major
      (batch, sequence) order as the rows of `image_grid_thw`.
    attention_mask: [B, L], 1 for real tokens and 0 for pads (None: all real).
    image_grid_thw: [N_images, 3] patch grids (t, h, w), or None for text-only batches.
  Returns:
    positions [3, B, L] int32 (axes t, h, w; pads hold 0) and rope_deltas [B] int32.
  """
  input_ids = np.asarray(input_ids)
  if input_ids.ndim != 2:
    raise ValueError(f"input_ids must be [B, L], got shape {input_ids.shape}")
  batch, length = input_ids.shape
  mask = np.ones_like(input_ids, dtype=bool) if attention_mask is None else np.asarray(attention_mask) != 0
  if mask.shape != input_ids.shape:
    raise ValueError(f"attention_mask shape {mask.shape} differs from input_ids shape {input_ids.shape}")
  if np.any((input_ids == image_token_id) & ~mask):
    raise ValueError("an <|image_pad|> token sits at a position where attention_mask is 0")
  grid_rows = np.zeros((0, 3), np.int64) if image_grid_thw is None else np.asarray(image_grid_thw).reshape(-1, 3)
  _merged_token_counts(grid_rows, spatial_merge_size)  # validates divisibility
  grids = iter(grid_rows)

  positions = np.zeros((3, batch, length), dtype=np.int64)
  deltas = np.zeros((batch,), dtype=np.int64)
  for b in range(batch):
    row = _row_positions(input_ids[b][mask[b]], grids, image_token_id=image_token_id,
                         spatial_merge_size=spatial_merge_size, row=b)
    positions[:, b, mask[b]] = row
    deltas[b] = (row.max() + 1 - row.shape[1]) if row.size else 0
  leftover = sum(1 for _ in grids)
  if leftover:
    raise ValueError(f"image_grid_thw describes {leftover} more image(s) than input_ids holds")
  return positions.astype(np.int32), deltas.astype(np.int32)


def image_scatter_indices(input_ids: np.ndarray, image_grid_thw: np.ndarray | None, *, image_token_id: int,
                          spatial_merge_size: int) -> np.ndarray:
  """Flat (b * L + l) slots of the `<|image_pad|>` tokens in row-major (batch, sequence) order.

  Merged image embeddings (images in `image_grid_thw` order, raster order within each) are written to
  these slots of the flattened [B * L, D] input embeddings. input_ids: [B, L]; returns [N_tokens] int32.
  Raises if the number of image tokens differs from the merged-token count of `image_grid_thw`.
  """
  input_ids = np.asarray(input_ids)
  slots = np.flatnonzero(input_ids.reshape(-1) == image_token_id)
  expected = 0 if image_grid_thw is None else int(_merged_token_counts(image_grid_thw, spatial_merge_size).sum())
  if slots.size != expected:
    raise ValueError(f"input_ids hold {slots.size} <|image_pad|> tokens but image_grid_thw describes "
                     f"{expected} merged image tokens")
  return slots.astype(np.int32)
