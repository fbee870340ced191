"""Host-side batch reshaping: rows keep their own images, buckets, prompt + completion sequences."""

from __future__ import annotations

import numpy as np
import pytest

from mmrag_jax.sampling.host_batch import completion_batch, fit_length, images_per_row, select_rows, smallest_bucket

# The shared prompts hold images of 24, 4, 16 and 64 patches: row 0 -> patches [0, 24), row 1 -> [24, 44)
# (two images), row 2 -> none, row 3 -> [44, 108).
PATCHES_OF_ROW = {0: np.arange(0, 24), 1: np.arange(24, 44), 2: np.arange(0), 3: np.arange(44, 108)}
IMAGES_OF_ROW = {0: [0], 1: [1, 2], 2: [], 3: [3]}


def test_images_per_row_counts_whole_images(prompts, config):
  np.testing.assert_array_equal(images_per_row(prompts, config), [1, 2, 0, 1])


def test_select_rows_carries_each_rows_images(prompts, config):
  rows = [3, 1, 1, 2]
  out = select_rows(prompts, rows, config)
  np.testing.assert_array_equal(out["input_ids"], prompts["input_ids"][rows])
  np.testing.assert_array_equal(out["attention_mask"], prompts["attention_mask"][rows])
  patches = np.concatenate([PATCHES_OF_ROW[r] for r in rows])
  images = sum((IMAGES_OF_ROW[r] for r in rows), [])
  np.testing.assert_array_equal(out["pixel_values"], prompts["pixel_values"][patches])
  np.testing.assert_array_equal(out["image_grid_thw"], prompts["image_grid_thw"][images])


def test_images_per_row_rejects_a_split_image(prompts, config):
  broken = dict(prompts, image_grid_thw=prompts["image_grid_thw"][[1, 0, 2, 3]])  # 4-patch image first
  with pytest.raises(ValueError, match="row 0"):
    images_per_row(broken, config)


def test_fit_length_left_pads_and_trims_pad_columns(prompts, config):
  length = prompts["input_ids"].shape[1]
  longer = fit_length(prompts, length + 5, config.pad_token_id)
  np.testing.assert_array_equal(longer["input_ids"][:, 5:], prompts["input_ids"])
  assert np.all(longer["input_ids"][:, :5] == config.pad_token_id) and not longer["attention_mask"][:, :5].any()
  np.testing.assert_array_equal(longer["mm_token_type_ids"][:, 5:], prompts["mm_token_type_ids"])
  back = fit_length(longer, length, config.pad_token_id)
  np.testing.assert_array_equal(back["input_ids"], prompts["input_ids"])
  with pytest.raises(ValueError, match="more than the length"):
    fit_length(prompts, length - 1, config.pad_token_id)


def test_smallest_bucket():
  assert smallest_bucket(5, (4, 8, 16), "length") == 8
  assert smallest_bucket(8, (16, 8), "length") == 8
  with pytest.raises(ValueError, match="prompt length 17 exceeds the largest bucket 16"):
    smallest_bucket(17, (8, 16), "prompt length")


def test_completion_batch_appends_completions_to_repeated_prompts(prompts, config):
  completions = np.arange(8 * 3).reshape(8, 3)  # 4 prompts x 2 samples, 3 tokens each
  out = completion_batch(prompts, completions, 2, config)
  length = prompts["input_ids"].shape[1]
  np.testing.assert_array_equal(out["input_ids"][:, :length], np.repeat(prompts["input_ids"], 2, axis=0))
  np.testing.assert_array_equal(out["input_ids"][:, length:], completions)
  assert np.all(out["attention_mask"][:, length:] == 1) and np.all(out["mm_token_type_ids"][:, length:] == 0)
  np.testing.assert_array_equal(out["targets"][:, length - 1:length + 2], completions)
  assert np.all(out["targets"][:, -1] == config.pad_token_id)
  assert len(out["image_grid_thw"]) == 2 * len(prompts["image_grid_thw"])
  with pytest.raises(ValueError, match=r"\[B \* G, T\] = \[8, T\]"):
    completion_batch(prompts, completions[:7], 2, config)
