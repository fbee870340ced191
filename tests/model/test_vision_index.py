"""Vision index math: exact integer equality with the transformers reference, and the padded layout."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from transformers import vision_utils

from mmrag_jax.model.config import VisionConfig
from mmrag_jax.model.vision_index import (
    VisionIndex,
    frame_cu_seqlens,
    rotary_position_ids,
    max_frame_patches,
    window_block_bound,
    pack_windows_next_fit,
    window_partition,
)

CONFIG = VisionConfig()  # window 112 px = 8x8 patches, merge 2, patch 14

# Sides (in patches) below, equal to and not multiples of the 8-patch window; several images; video frames.
GRIDS = [
    [[1, 2, 2]],
    [[1, 4, 6]],
    [[1, 8, 8]],
    [[1, 16, 16]],
    [[1, 10, 18]],
    [[1, 34, 2]],
    [[1, 2, 30], [1, 16, 8], [1, 6, 6]],
    [[2, 12, 20]],
    [[1, 24, 16], [3, 4, 4], [1, 2, 2], [1, 18, 26]],
]


def _reference(grid: list[list[int]]) -> dict[str, np.ndarray]:
  g = torch.tensor(grid)
  window_index, cu_windows = vision_utils.get_vision_window_index(
      g, spatial_merge_size=CONFIG.spatial_merge_size, window_size=CONFIG.window_size,
      patch_size=CONFIG.patch_size)
  return dict(position_ids=vision_utils.get_vision_position_ids(g, CONFIG.spatial_merge_size).numpy(),
              cu_seqlens=vision_utils.get_vision_cu_seqlens(g).numpy(),
              window_index=window_index.numpy(), cu_window_seqlens=cu_windows.numpy())


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_index_functions_equal_reference(grid):
  ref = _reference(grid)
  np.testing.assert_array_equal(rotary_position_ids(np.array(grid), 2), ref["position_ids"])
  np.testing.assert_array_equal(frame_cu_seqlens(np.array(grid)), ref["cu_seqlens"])
  window_index, cu_windows = window_partition(np.array(grid), spatial_merge_size=2, window_size=112, patch_size=14)
  np.testing.assert_array_equal(window_index, ref["window_index"])
  np.testing.assert_array_equal(cu_windows, ref["cu_window_seqlens"])


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_vision_index_fields_equal_reference_and_pad_cleanly(grid):
  ref = _reference(grid)
  real = int(np.prod(grid, axis=1).sum())
  padded = real + 4 * 7
  index = VisionIndex.build(grid, CONFIG, num_patches_padded=padded)

  np.testing.assert_array_equal(index.position_ids[:real], ref["position_ids"])
  np.testing.assert_array_equal(index.position_ids[real:], 0)
  # Segments: frame numbers, as delimited by the reference's cu_seqlens; padding in none.
  expected_segments = np.searchsorted(ref["cu_seqlens"], np.arange(real), side="right") - 1
  np.testing.assert_array_equal(index.segment_ids[:real], expected_segments)
  np.testing.assert_array_equal(index.segment_ids[real:], -1)
  # Window permutation: the reference's on real tokens, identity on padding, and its inverse.
  tokens = real // 4
  np.testing.assert_array_equal(index.window_index[:tokens], ref["window_index"])
  np.testing.assert_array_equal(index.window_index[tokens:], np.arange(tokens, padded // 4))
  np.testing.assert_array_equal(index.window_index[index.reverse_window_index], np.arange(padded // 4))
  np.testing.assert_array_equal(index.reverse_window_index, np.argsort(index.window_index))

  # Window blocks: window w holds exactly the patches between the reference's boundaries w and w+1
  # of the window-ordered sequence, in that order; padding patches are in no window.
  permuted_patches = (ref["window_index"][:, None] * 4 + np.arange(4)).reshape(-1)
  cu = ref["cu_window_seqlens"]
  for w in range(len(cu) - 1):
    slots = np.nonzero(index.windows.ids.reshape(-1) == w)[0]
    np.testing.assert_array_equal(index.windows.patches.reshape(-1)[slots], permuted_patches[cu[w]:cu[w + 1]])
    assert len(set(slots // index.windows.patches.shape[1])) == 1, f"window {w} split across blocks"
  assert index.windows.ids.max() == len(cu) - 2
  # Each real patch's slot holds that patch; padding points past the last slot.
  flat_patches = index.windows.patches.reshape(-1)
  np.testing.assert_array_equal(flat_patches[index.windows.slots[:real]], np.arange(real))
  np.testing.assert_array_equal(index.windows.slots[real:], index.windows.patches.size)


@pytest.mark.parametrize("frame_block_size", [None, 256])
def test_index_shapes_depend_only_on_the_budget(frame_block_size):
  kw = dict(num_patches_padded=512, frame_block_size=frame_block_size)
  a = VisionIndex.build([[1, 2, 2]], CONFIG, **kw)
  b = VisionIndex.build([[1, 16, 16], [1, 10, 18]], CONFIG, **kw)
  shapes = lambda idx: jax.tree.map(np.shape, idx)
  assert shapes(a) == shapes(b) == shapes(VisionIndex.shapes(CONFIG, 512, frame_block_size))
  assert a.windows.patches.shape == (16, 64)  # the next-fit bound, 15, rounded up to BLOCK_MULTIPLE
  assert window_block_bound(512, 64) == 15
  assert a.frames.patches.shape == ((1, 512) if frame_block_size is None else (16, 256))
  assert (a.num_real_patches, b.num_real_patches) == (4, 436)


@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize("frame_block_size", [None, 2048])
def test_frame_blocks_hold_each_frame_whole(grid, frame_block_size):
  ref = _reference(grid)
  cu = ref["cu_seqlens"]
  real = int(cu[-1])
  index = VisionIndex.build(grid, CONFIG, num_patches_padded=real + 8, frame_block_size=frame_block_size)
  frames = index.frames
  for f in range(len(cu) - 1):
    slots = np.nonzero(frames.ids.reshape(-1) == f)[0]
    np.testing.assert_array_equal(frames.patches.reshape(-1)[slots], np.arange(cu[f], cu[f + 1]))
    assert len(set(slots // frames.patches.shape[1])) == 1, f"frame {f} split across blocks"
  np.testing.assert_array_equal(frames.patches.reshape(-1)[frames.slots[:real]], np.arange(real))
  np.testing.assert_array_equal(frames.slots[real:], frames.patches.size)


def test_a_frame_larger_than_its_block_is_an_error():
  with pytest.raises(ValueError, match="frame of 256 patches does not fit frame blocks of 64"):
    VisionIndex.build([[1, 16, 16]], CONFIG, num_patches_padded=512, frame_block_size=64)


def test_max_frame_patches_bounds_resized_images():
  # 448x448 px: 32x32 patches; sides are multiples of 28 px, so 300x300 px allows 280x308 = 20x22 patches.
  assert max_frame_patches(448 * 448, CONFIG) == 1024
  assert max_frame_patches(300 * 300, CONFIG) == 4 * (300 * 300 // 784) == 456


def test_next_fit_block_bound_holds_for_adversarial_window_sizes():
  # Windows of 36 patches (3x3 merged tokens) never share a 64-slot block: the worst case.
  rng = np.random.default_rng(0)
  for lengths in [np.full(40, 36), np.full(40, 4), rng.choice(np.arange(4, 65, 4), size=200)]:
    starts = pack_windows_next_fit(lengths, 64)
    blocks = starts[-1][0] + 1
    assert blocks <= window_block_bound(int(lengths.sum()), 64)
    for (block, offset), length in zip(starts, lengths):
      assert offset + length <= 64


def test_exact_index_has_no_padding():
  index = VisionIndex.build([[1, 10, 18], [1, 2, 2]], CONFIG)
  assert index.num_patches_padded == index.num_real_patches == 184
  assert (index.windows.ids[:, 0] >= 0).all()  # no empty block


@pytest.mark.parametrize("grid, kwargs, message", [
    ([[1, 3, 4]], {}, r"image_grid_thw\[0\]"),
    ([[1, 4, 4], [0, 4, 4]], {}, r"image_grid_thw\[1\]"),
    ([1, 4, 4], {}, "shape"),
    ([[1, 4, 4]], dict(num_patches_padded=8), "smaller than the 16 patches"),
    ([[1, 4, 4]], dict(num_patches_padded=18), "multiple of"),
    ([[1, 16, 16], [1, 16, 16]], dict(num_window_blocks=3), "num_window_blocks=3"),
    ([[1, 16, 16], [1, 16, 16]], dict(frame_block_size=256, num_frame_blocks=1), "num_frame_blocks=1"),
])
def test_bad_inputs_name_the_field(grid, kwargs, message):
  with pytest.raises(ValueError, match=message):
    VisionIndex.build(grid, CONFIG, **kwargs)
