"""The prompt batch: built once from processor output (positions, buckets), rows gathered without recomputing."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from mmrag_jax.model import prepare_inputs
from mmrag_jax.model.rope_index import mrope_positions
from mmrag_jax.sampling import prompt_batch
from mmrag_jax.sampling.host_batch import fit_length, select_rows
from mmrag_jax.sampling.prompt_batch import PromptTokens, gather_prompts, with_padding_rows

# The shared prompts (tests/sampling/conftest.py) hold images of 24, 4 + 16 and 64 patches (rows 0, 1, 3);
# the longest prompt has 21 tokens.
PATCHES_OF_ROW = (24, 20, 0, 64)


def _positions(prompts, config):
  return mrope_positions(prompts.input_ids, prompts.attention_mask, prompts.image_grid_thw,
                         image_token_id=config.image_token_id, spatial_merge_size=config.vision.spatial_merge_size)


def test_prompt_batch_pads_to_the_smallest_buckets_that_fit(prompts, config):
  out = prompt_batch(prompts, config, length_buckets=(16, 32, 128), patch_buckets=(100, 128, 512))
  assert out.input_ids.shape == out.attention_mask.shape == (4, 32) and out.positions.shape == (3, 4, 32)
  assert out.pixel_values.shape == (128, config.vision.patch_dim) and out.num_patches == 108
  np.testing.assert_array_equal(out.input_ids[:, -prompts["input_ids"].shape[1]:], prompts["input_ids"])
  np.testing.assert_array_equal(out.pixel_values[:108], prompts["pixel_values"])
  assert not out.pixel_values[108:].any()
  np.testing.assert_array_equal(out.image_counts, [1, 2, 0, 1])
  np.testing.assert_array_equal(out.row_patches, PATCHES_OF_ROW)
  assert out.valid.all()


def test_without_buckets_the_batch_keeps_its_own_shapes(prompts, config):
  out = prompt_batch(prompts, config)
  assert out.input_ids.shape == prompts["input_ids"].shape and out.patch_rows == 108


def test_model_inputs_equal_prepare_inputs_of_the_padded_batch(prompts, config):
  out = prompt_batch(prompts, config, length_buckets=(32,), patch_buckets=(128,))
  want = prepare_inputs(fit_length(prompts, 32, config.pad_token_id), config, num_patches=128)
  got = out.model_inputs(config)
  for name in ("input_ids", "attention_mask", "positions", "rope_deltas", "pixel_values", "image_scatter"):
    np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
  np.testing.assert_array_equal(got.vision_index.window_index, want.vision_index.window_index)


def test_model_inputs_are_built_once_per_batch_and_layout(prompts, config):
  out = prompt_batch(prompts, PromptTokens(pad_token_id=config.pad_token_id, image_token_id=config.image_token_id))
  with pytest.raises(ValueError, match="vision layout"):  # tokens alone cannot index the images
    out.model_inputs(PromptTokens(pad_token_id=config.pad_token_id, image_token_id=config.image_token_id))
  first = out.model_inputs(config)
  assert out.model_inputs(config) is first and out.model_inputs(PromptTokens.of(config)) is first
  # Another layout (frames in blocks of 64 slots) gets its own index, not the first one.
  blocked = out.model_inputs(config.replace(frame_block_size=64))
  assert blocked is not first and blocked.vision_index.frames.patches.shape != first.vision_index.frames.patches.shape
  # Built with the model's layout, the batch has its inputs at once: those of the model's own `prepare_inputs`.
  ready = prompt_batch(prompts, config)
  cached = ready.__dict__["_model_inputs"][1]
  assert ready.model_inputs(config) is cached and dataclasses.replace(ready).model_inputs(config) is not cached
  want = prepare_inputs(prompts, config, num_patches=ready.patch_rows)
  assert jax.tree.structure(cached) == jax.tree.structure(want)
  for got_leaf, want_leaf in zip(jax.tree.leaves(cached), jax.tree.leaves(want)):
    np.testing.assert_array_equal(got_leaf, want_leaf)


def test_a_text_only_batch_has_no_vision_inputs(prompts, config):
  out = prompt_batch(select_rows(prompts, [2, 2], config), config, patch_buckets=(128,))
  assert out.pixel_values is None and out.model_inputs(config).vision_index is None


def test_gathered_rows_keep_their_positions_and_images(prompts, config):
  short = prompt_batch(select_rows(prompts, [2, 0], config), config)
  long = prompt_batch(prompts, config, length_buckets=(32,), patch_buckets=(128,))
  out = gather_prompts([short, long], [(1, 3), (0, 1), None, (1, 1)], pad_token_id=config.pad_token_id)
  assert out.input_ids.shape == (4, 32) and out.patch_rows == 128  # the widest batch's length and patch rows
  np.testing.assert_array_equal(out.valid, [True, True, False, True])
  np.testing.assert_array_equal(out.image_counts, [1, 1, 0, 2])
  positions, deltas = _positions(out, config)  # what a fresh computation gives the gathered rows
  np.testing.assert_array_equal(out.positions, positions)
  np.testing.assert_array_equal(out.rope_deltas, deltas)
  pixels = np.asarray(prompts["pixel_values"])
  np.testing.assert_array_equal(out.pixel_values[:108], np.concatenate([pixels[44:108], pixels[:24], pixels[24:44]]))
  assert out.input_ids[2, -1] == config.pad_token_id and out.attention_mask[2].tolist() == [0] * 31 + [1]


def test_gathered_images_beyond_the_patch_rows_round_up_to_a_multiple_of_them(prompts, config):
  one = prompt_batch(select_rows(prompts, [3], config), config)  # 64 patch rows
  out = gather_prompts([one], [(0, 0), (0, 0), (0, 0)], pad_token_id=config.pad_token_id)
  assert out.patch_rows == 192
  with pytest.raises(ValueError, match="smaller than the 192"):
    gather_prompts([one], [(0, 0)] * 3, pad_token_id=config.pad_token_id, patch_rows=128)


def test_padding_rows_are_single_real_pad_tokens(prompts, config):
  base = prompt_batch(prompts, config, length_buckets=(32,), patch_buckets=(128,))
  out = with_padding_rows(base, 6, config.pad_token_id)
  assert out.input_ids.shape == (6, 32) and np.all(out.input_ids[4:] == config.pad_token_id)
  np.testing.assert_array_equal(out.attention_mask[4:].sum(axis=1), [1, 1])
  np.testing.assert_array_equal(out.valid, [True] * 4 + [False] * 2)
  np.testing.assert_array_equal(out.pixel_values, base.pixel_values)
  assert with_padding_rows(base, 4, config.pad_token_id) is base
