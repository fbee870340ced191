"""Host-side (numpy) index math of the Qwen2.5-VL vision tower.

Everything here depends on image sizes, so it runs outside jit; the tower only sees the resulting
integer arrays, whose shapes depend on static budgets (`num_patches_padded`, the frame block size, the block counts).

Layout of `pixel_values` rows ("patches"): images one after another, each frame by frame, and inside a
frame block-major: every spatial-merge block of 2x2 patches is 4 consecutive rows. E.g. a 4x4-patch
frame (2x2 merged tokens) is laid out as

    patch (h, w):  (0,0) (0,1) (1,0) (1,1) | (0,2) (0,3) (1,2) (1,3) | (2,0) (2,1) (3,0) (3,1) | ...
    merged token:  ---------- 0 ---------- | ---------- 1 ---------- | ---------- 2 ---------- | ...

Windows tile each frame's merged grid in squares of `window_size // patch_size // merge` merged tokens
(4x4 = 8x8 patches for the real model), raster order, ragged at the bottom/right edges.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from mmrag_jax.model.config import VisionConfig

__all__ = [
    "AttentionBlocks", "VisionIndex", "frame_cu_seqlens", "max_frame_patches", "pack_windows_next_fit",
    "rotary_position_ids", "window_block_bound", "window_partition",
]


def _checked_grid(grid_thw: np.ndarray | list, merge: int) -> np.ndarray:
  grid = np.asarray(grid_thw)
  if grid.ndim != 2 or grid.shape[1] != 3:
    raise ValueError(f"image_grid_thw must have shape [num_images, 3], got {grid.shape}")
  if grid.size and not np.issubdtype(grid.dtype, np.integer):
    raise ValueError(f"image_grid_thw must hold integers, got dtype {grid.dtype}")
  grid = grid.astype(np.int64)
  for i, (t, h, w) in enumerate(grid.tolist()):
    if t < 1 or h < 1 or w < 1 or h % merge or w % merge:
      raise ValueError(f"image_grid_thw[{i}] = {(t, h, w)}: t, h, w must be positive and h, w multiples of "
                       f"spatial_merge_size={merge}")
  return grid


def rotary_position_ids(grid_thw: np.ndarray, spatial_merge_size: int) -> np.ndarray:
  """(h, w) patch coordinates in block-major row order, repeated for each frame.

  grid_thw: [N_img, 3] (t, h, w) in patches. Returns [P, 2] int32, P = sum(t * h * w).
  """
  m = spatial_merge_size
  rows = []
  for t, h, w in _checked_grid(grid_thw, m).tolist():
    hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    # [h, w] -> [h/m, m, w/m, m] -> [h/m, w/m, m, m]: each merge block becomes contiguous.
    block_major = lambda a: a.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
    frame = np.stack([block_major(hh), block_major(ww)], axis=-1)
    rows.append(np.tile(frame, (t, 1)))
  if not rows:
    return np.zeros((0, 2), np.int32)
  return np.concatenate(rows).astype(np.int32)


def frame_cu_seqlens(grid_thw: np.ndarray) -> np.ndarray:
  """Cumulative patch counts at every frame boundary (full-attention segments): [N_frames + 1] int32."""
  grid = _checked_grid(grid_thw, 1)
  lengths = np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0])
  return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


def window_partition(grid_thw: np.ndarray, *, spatial_merge_size: int, window_size: int,
                     patch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Window order of merged tokens and the window boundaries in patches.

  Returns `window_index` [M] int64 (M = P / merge**2): the merged tokens listed window by window
  (raster order inside a window), and `cu_window_seqlens` [N_windows + 1] int32: cumulative patch
  counts at window boundaries, empty windows dropped.
  """
  m = spatial_merge_size
  side = window_size // m // patch_size  # window side in merged tokens
  order, cu = [], [0]
  offset = 0
  for t, h, w in _checked_grid(grid_thw, m).tolist():
    gh, gw = h // m, w // m
    # The reference pads by `side - n % side`, i.e. a whole empty band when n is a multiple of `side`;
    # those windows are empty and vanish below, so padding to the next multiple is equivalent.
    nh, nw = -(-gh // side), -(-gw // side)
    tokens = np.full((t, nh * side, nw * side), -1, np.int64)
    tokens[:, :gh, :gw] = np.arange(t * gh * gw).reshape(t, gh, gw) + offset
    windows = tokens.reshape(t, nh, side, nw, side).transpose(0, 1, 3, 2, 4).reshape(t * nh * nw, side * side)
    for window in windows:
      members = window[window >= 0]
      if members.size:
        order.append(members)
        cu.append(cu[-1] + members.size * m * m)
    offset += t * gh * gw
  window_index = np.concatenate(order) if order else np.zeros((0,), np.int64)
  return window_index, np.asarray(cu, np.int32)


def window_block_bound(num_patches: int, block_size: int) -> int:
  """Most blocks next-fit packing can need for `num_patches` patches in groups of <= `block_size` (any grids).

  Two consecutive next-fit blocks always hold more than `block_size` patches together, so
  B <= 2 * floor(num_patches / (block_size + 1)) + 1.
  """
  return 2 * (num_patches // (block_size + 1)) + 1


# Padded block counts are multiples of this, so that the block dim of a budgeted index divides any
# data-parallel mesh of up to 16 chips (and 32, 64 ... whenever the patch budget allows).
_BLOCK_MULTIPLE = 16


def _padded_block_count(num_patches: int, block_size: int) -> int:
  """The static block count of a budget of `num_patches` patches: the next-fit worst case
  (`window_block_bound`) rounded up to a multiple of `_BLOCK_MULTIPLE`."""
  bound = window_block_bound(num_patches, block_size)
  return -(-bound // _BLOCK_MULTIPLE) * _BLOCK_MULTIPLE


def max_frame_patches(max_pixels: int, config: VisionConfig) -> int:
  """Most patches one frame can have when images are resized to at most `max_pixels` pixels: sides are
  multiples of patch_size * spatial_merge_size (28 px), so a frame is whole 2x2 merge units."""
  unit_side = config.patch_size * config.spatial_merge_size
  return max_pixels // unit_side**2 * config.merge_unit


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionBlocks:
  """Attention groups (windows or frames) packed whole, in order, into B blocks of S slots (next-fit).

  patches: [B, S] int32 patch row held by each slot; 0 in empty slots.
  ids:     [B, S] int32 group (window or frame number) of each slot; -1 in empty slots. A block may hold
           several small groups; a slot attends to the slots of its own group only.
  slots:   [P] int32 flat slot (block * S + j) of each patch; B * S for patches in no group (padding).
  """

  patches: np.ndarray
  ids: np.ndarray
  slots: np.ndarray

  @classmethod
  def pack(cls, members: list[np.ndarray], num_patches: int, block_size: int,
           num_blocks: int | None, what: str) -> "AttentionBlocks":
    """Blocks holding group g's patch rows `members[g]` (in that order); `num_blocks` None = as many as needed."""
    lengths = np.array([len(m) for m in members], np.int64)
    if lengths.size and lengths.max() > block_size:
      raise ValueError(f"a {what} of {int(lengths.max())} patches does not fit {what} blocks of {block_size} "
                       f"slots")
    starts = pack_windows_next_fit(lengths, block_size)
    needed = starts[-1][0] + 1 if starts else 0
    num_blocks = needed if num_blocks is None else num_blocks
    if needed > num_blocks:
      raise ValueError(f"num_{what}_blocks={num_blocks} is too small: these images need {needed}")
    num_blocks = max(num_blocks, 1)
    patches = np.zeros((num_blocks, block_size), np.int32)
    ids = np.full((num_blocks, block_size), -1, np.int32)
    slots = np.full((num_patches,), num_blocks * block_size, np.int32)
    for group, ((block, offset), rows) in enumerate(zip(starts, members)):
      patches[block, offset:offset + len(rows)] = rows
      ids[block, offset:offset + len(rows)] = group
      slots[rows] = block * block_size + offset + np.arange(len(rows))
    return cls(patches=patches, ids=ids, slots=slots)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VisionIndex:
  """Integer inputs of `VisionTower`, all in the ORIGINAL (un-permuted) patch order.

  P = padded patch count, M = P / merge**2. Padding patches (rows >= the real count) belong to no image,
  no window and no frame.

  position_ids:         [P, 2] int32 rotary (h, w) of each patch; 0 for padding.
  segment_ids:          [P] int32 frame number; -1 for padding.
  window_index:         [M] int32 merged tokens in window order (the reference's permutation);
                        identity on padding.
  reverse_window_index: [M] int32 inverse permutation (argsort of window_index).
  windows:              `AttentionBlocks` of the windows (S = 64 patches for the real model), in window
                        order: the window-attention layers.
  frames:               `AttentionBlocks` of the frames (S = the largest frame allowed): the full-attention
                        layers, each frame attending to itself.
  """

  position_ids: np.ndarray
  segment_ids: np.ndarray
  window_index: np.ndarray
  reverse_window_index: np.ndarray
  windows: AttentionBlocks
  frames: AttentionBlocks

  @property
  def num_patches_padded(self) -> int:
    return self.segment_ids.shape[0]

  @property
  def num_real_patches(self) -> int:
    return int(np.sum(np.asarray(self.segment_ids) >= 0))

  @staticmethod
  def window_block_size(config: VisionConfig) -> int:
    """Patches of one window (64 for the real model): the window blocks' S."""
    side = config.window_size // config.spatial_merge_size // config.patch_size  # in merged tokens
    return (side * config.spatial_merge_size) ** 2

  @classmethod
  def shapes(cls, config: VisionConfig, num_patches: int, frame_block_size: int | None = None) -> "VisionIndex":
    """The index `build` gives a budget of `num_patches` patches, as int32 ShapeDtypeStructs (no images)."""
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, np.int32)
    merged = num_patches // config.merge_unit

    def blocks(size: int) -> AttentionBlocks:
      count = _padded_block_count(num_patches, size)
      return AttentionBlocks(patches=i32(count, size), ids=i32(count, size), slots=i32(num_patches))

    frame = num_patches if frame_block_size is None else min(frame_block_size, num_patches)
    return cls(position_ids=i32(num_patches, 2), segment_ids=i32(num_patches), window_index=i32(merged),
               reverse_window_index=i32(merged), windows=blocks(cls.window_block_size(config)),
               frames=AttentionBlocks(patches=i32(1, frame), ids=i32(1, frame), slots=i32(num_patches))
               if frame_block_size is None else blocks(frame))

  @classmethod
  def build(cls, grid_thw: np.ndarray | list, config: VisionConfig, *, num_patches_padded: int | None = None,
            frame_block_size: int | None = None, num_window_blocks: int | None = None,
            num_frame_blocks: int | None = None) -> "VisionIndex":
    """Index arrays for images of `grid_thw` [N_img, 3], optionally padded to static budgets.

    num_patches_padded: static patch budget (a multiple of merge**2, >= the real count); None = exact.
    frame_block_size: slots of a frame block, >= the largest frame (`max_frame_patches` of the pipeline's
      max_pixels); None = one block of all P patches (full attention then costs O(P^2), not O(P * S)).
    num_window_blocks, num_frame_blocks: static block counts; None = the exact count without a patch
      budget, `_padded_block_count` with one (shapes then depend on the budget only).
    """
    m = config.spatial_merge_size
    unit = m * m
    grid = _checked_grid(grid_thw, m)
    real = int(np.sum(np.prod(grid, axis=1))) if grid.size else 0
    padded = real if num_patches_padded is None else int(num_patches_padded)
    if padded < real:
      raise ValueError(f"num_patches_padded={padded} is smaller than the {real} patches of image_grid_thw")
    if padded % unit:
      raise ValueError(f"num_patches_padded={padded} must be a multiple of spatial_merge_size**2={unit}")
    budgeted = num_patches_padded is not None

    position_ids = np.zeros((padded, 2), np.int32)
    position_ids[:real] = rotary_position_ids(grid, m)
    cu_frames = frame_cu_seqlens(grid)
    segment_ids = np.full((padded,), -1, np.int32)
    segment_ids[:real] = np.repeat(np.arange(len(cu_frames) - 1), np.diff(cu_frames))

    window_index, cu_windows = window_partition(grid, spatial_merge_size=m, window_size=config.window_size,
                                                patch_size=config.patch_size)
    tokens = padded // unit
    full_window_index = np.arange(tokens, dtype=np.int32)
    full_window_index[:real // unit] = window_index
    reverse = np.argsort(full_window_index).astype(np.int32)

    window_size = cls.window_block_size(config)
    # Patches in window order: merged token k of the order covers patch rows unit*k .. unit*k + unit-1.
    patches_in_window_order = (window_index[:, None] * unit + np.arange(unit)).reshape(-1)
    window_members = [patches_in_window_order[lo:hi] for lo, hi in zip(cu_windows[:-1], cu_windows[1:])]
    if num_window_blocks is None and budgeted:
      num_window_blocks = _padded_block_count(padded, window_size)
    windows = AttentionBlocks.pack(window_members, padded, window_size, num_window_blocks, "window")

    frame_members = [np.arange(lo, hi) for lo, hi in zip(cu_frames[:-1], cu_frames[1:])]
    if frame_block_size is None:  # one block of every patch, frames told apart by their ids
      frame_size, num_frame_blocks = max(padded, 1), 1
    else:
      frame_size = min(int(frame_block_size), max(padded, 1))
      if num_frame_blocks is None and budgeted:
        num_frame_blocks = _padded_block_count(padded, frame_size)
    frames = AttentionBlocks.pack(frame_members, padded, frame_size, num_frame_blocks, "frame")

    return cls(position_ids=position_ids, segment_ids=segment_ids, window_index=full_window_index,
               reverse_window_index=reverse, windows=windows, frames=frames)


def pack_windows_next_fit(window_lengths: np.ndarray, block_size: int) -> list[tuple[int, int]]:
  """(block, offset) of each group of `window_lengths` [N_groups] (patches, each <= block_size) when
  groups (windows or frames) are packed whole and in order into blocks of `block_size` slots, opening a
  new block when the next group does not fit."""
  starts, block, fill = [], 0, 0
  for length in window_lengths.tolist():
    if fill + length > block_size:
      block, fill = block + 1, 0
    starts.append((block, fill))
    fill += length
  return starts
