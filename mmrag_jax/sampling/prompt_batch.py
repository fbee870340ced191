"""The prompt batch: the one form prompts take from the input pipeline to the sampler, scorer and trainer.

    prompts = prompt_batch(processor(texts, images), model.config, length_buckets=(256,), patch_buckets=(1024,))
    out = sampler.generate(prompts, key, group_size=8)

The input pipeline builds one per batch (`data.batching.Collator`), in its workers; any other caller builds
one from processor output with `prompt_batch`. Nothing downstream pads or recomputes positions again, and
the vision index of its images is built once per batch: when the batch is built if it is built with the
model's layout (`PromptTokens.of(model.config)`, as in the recipe's pipelines), else at the first
`model_inputs`.
The fields and their shapes are listed in `PromptBatch` (B prompts, L a length bucket, P a patch bucket).

A row that only pads the batch holds one real pad token at the last position and no image:

    B=3, L=5 (p = pad id, x = prompt token)
      input_ids  p p x x x   attention_mask  0 0 1 1 1   valid  True
                 x x x x x                   1 1 1 1 1          True
                 p p p p p                   0 0 0 0 1          False
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmrag_jax.model.config import Qwen25VLConfig, VisionConfig
from mmrag_jax.model.qwen25vl import ModelInputs
from mmrag_jax.model.rope_index import image_scatter_indices, mrope_positions
from mmrag_jax.model.vision_index import VisionIndex
from mmrag_jax.sampling.host_batch import fit_length, image_counts, smallest_bucket

__all__ = ["Pick", "PromptBatch", "PromptTokens", "gather_prompts", "prompt_batch", "with_padding_rows"]

# (source batch index, row) of a gathered prompt; None: a row that only pads the batch.
Pick = tuple[int, int] | None


@dataclasses.dataclass(frozen=True)
class PromptTokens:
  """The token ids a prompt batch is laid out with (from the processor or the model config), and the
  vision layout its images are indexed for (the model's `vision` and `frame_block_size`; vision None: not
  known where the batch is built, so its vision index is built by the first `model_inputs`)."""

  pad_token_id: int
  image_token_id: int
  spatial_merge_size: int = 2
  vision: VisionConfig | None = None
  frame_block_size: int | None = None

  @classmethod
  def of(cls, config: Qwen25VLConfig | PromptTokens) -> PromptTokens:
    if isinstance(config, PromptTokens):
      return config
    return cls(pad_token_id=config.pad_token_id, image_token_id=config.image_token_id,
               spatial_merge_size=config.vision.spatial_merge_size, vision=config.vision,
               frame_block_size=config.frame_block_size)


@dataclasses.dataclass(frozen=True)
class PromptBatch:
  """B left-padded prompts with their images (the module docstring draws the layout). L is a length bucket,
  P a patch bucket, I the real images.

  input_ids:       [B, L] int32, left-padded with the pad id.
  attention_mask:  [B, L] int32, 1 = real token; every row ends in a real token.
  positions:       [3, B, L] int32, M-RoPE (t, h, w) positions; 0 on pads.
  rope_deltas:     [B] int32, decode position of generated token j = delta + real prompt tokens + j.
  pixel_values:    [P, 1176] float32, all images' patch rows back to back (row-major over (batch, prompt
                   order)), zero rows after the real ones; None for a batch without images.
  image_grid_thw:  [I, 3] int32, (t, h, w) of each real image.
  image_counts:    [B] int32, images of each row (a row's images are consecutive in image_grid_thw).
  valid:           [B] bool, False for rows that only pad the batch (their outputs are never used).
  """

  input_ids: np.ndarray
  attention_mask: np.ndarray
  positions: np.ndarray
  rope_deltas: np.ndarray
  pixel_values: np.ndarray | None
  image_grid_thw: np.ndarray
  image_counts: np.ndarray
  valid: np.ndarray

  @property
  def num_prompts(self) -> int:
    return self.input_ids.shape[0]

  @property
  def length(self) -> int:
    return self.input_ids.shape[1]

  @property
  def num_patches(self) -> int:
    """Real pixel rows (the rest of `pixel_values` is padding)."""
    return int(np.prod(self.image_grid_thw, axis=1).sum()) if len(self.image_grid_thw) else 0

  @property
  def row_patches(self) -> np.ndarray:
    """[B] int64 real pixel rows of each prompt's images."""
    per_image = np.prod(self.image_grid_thw, axis=1, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(self.image_counts)]).astype(np.int64)
    return np.add.reduceat(np.append(per_image, 0), starts[:-1]) * (self.image_counts > 0)

  @property
  def patch_rows(self) -> int:
    """P, the padded pixel rows (0 without images)."""
    return 0 if self.pixel_values is None else len(self.pixel_values)

  def model_inputs(self, config: Qwen25VLConfig | PromptTokens) -> ModelInputs:
    """The `ModelInputs` of one forward over these prompts for the model of `config` (or its
    `PromptTokens.of`): the vision index and image-token slots padded to P (the positions are this batch's
    own). Built once per batch and layout: the sampler, scorer and `build_train_batch` of one batch share
    it, and a batch built with the model's layout has it from its pipeline worker. Read-only."""
    layout = PromptTokens.of(config)
    cached = self.__dict__.get("_model_inputs")
    if cached is not None and cached[0] == layout:
      return cached[1]
    inputs = self._build_model_inputs(layout)
    object.__setattr__(self, "_model_inputs", (layout, inputs))  # a cache, not a field: eq / replace ignore it
    return inputs

  def _build_model_inputs(self, layout: PromptTokens) -> ModelInputs:
    common = dict(input_ids=self.input_ids, attention_mask=self.attention_mask, positions=self.positions,
                  rope_deltas=self.rope_deltas)
    if self.pixel_values is None:
      return ModelInputs(**common)
    if layout.vision is None:
      raise ValueError("model_inputs needs the model's vision layout: pass the model config (or "
                       "PromptTokens.of(model.config)), not tokens without `vision`")
    v, budget = layout.vision, self.patch_rows
    index = VisionIndex.build(self.image_grid_thw, v, num_patches_padded=budget,
                              frame_block_size=layout.frame_block_size)
    scatter = image_scatter_indices(self.input_ids, self.image_grid_thw, image_token_id=layout.image_token_id,
                                    spatial_merge_size=v.spatial_merge_size)
    padded_scatter = np.full((budget // v.merge_unit,), self.input_ids.size, np.int32)
    padded_scatter[:scatter.size] = scatter
    return ModelInputs(**common, pixel_values=self.pixel_values, vision_index=index, image_scatter=padded_scatter)


def _padded_pixels(pixels: np.ndarray, rows: int) -> np.ndarray:
  out = np.zeros((rows, pixels.shape[1]), np.float32)
  out[:len(pixels)] = pixels
  return out


def prompt_batch(batch: Mapping[str, Any], tokens: Qwen25VLConfig | PromptTokens, *,
                 length_buckets: Sequence[int] = (), patch_buckets: Sequence[int] = (),
                 valid: np.ndarray | None = None) -> PromptBatch:
  """The `PromptBatch` of a left-padded processor batch: positions computed, padded to buckets.

  batch: `input_ids` [B, L'], optional `attention_mask` [B, L'], and for images `pixel_values` [N, 1176] with
  `image_grid_thw` [I, 3] (the transformers processor's output; other keys are ignored). L = the smallest of
  `length_buckets` that holds the longest prompt (no buckets: the longest prompt); P = the smallest of
  `patch_buckets` that holds the N pixel rows (no buckets: N). A row without a real token becomes a padding
  row (one real pad token at the end). valid: [B] bool, default all True. With the vision layout in
  `tokens` (a model config, or `PromptTokens` with `vision`), the batch's `model_inputs` are built here too.
  """
  tokens = PromptTokens.of(tokens)
  mask = np.asarray(batch.get("attention_mask", np.ones_like(np.asarray(batch["input_ids"])))).astype(np.int32)
  longest = int(mask.astype(bool).sum(axis=1).max(initial=1))
  length = smallest_bucket(longest, length_buckets, "prompt length") if length_buckets else max(longest, 1)
  fitted = fit_length({"input_ids": batch["input_ids"], "attention_mask": mask}, length, tokens.pad_token_id)
  input_ids, mask = fitted["input_ids"].astype(np.int32), fitted["attention_mask"].astype(np.int32).copy()
  mask[mask.sum(axis=1) == 0, -1] = 1
  grid = batch.get("image_grid_thw")
  grid = np.zeros((0, 3), np.int32) if grid is None else np.asarray(grid).reshape(-1, 3).astype(np.int32)
  counts = image_counts(input_ids, grid, tokens.image_token_id, tokens.spatial_merge_size ** 2)
  positions, deltas = mrope_positions(input_ids, mask, grid, image_token_id=tokens.image_token_id,
                                      spatial_merge_size=tokens.spatial_merge_size)
  pixel_values = None
  if len(grid):
    pixels = np.asarray(batch["pixel_values"], np.float32)
    rows = smallest_bucket(len(pixels), patch_buckets, "image patch count") if patch_buckets else len(pixels)
    pixel_values = _padded_pixels(pixels, rows)
  valid = np.ones((len(input_ids),), bool) if valid is None else np.asarray(valid, bool)
  prompts = PromptBatch(input_ids=input_ids, attention_mask=mask, positions=positions, rope_deltas=deltas,
                        pixel_values=pixel_values, image_grid_thw=grid, image_counts=counts.astype(np.int32),
                        valid=valid)
  if tokens.vision is not None:
    prompts.model_inputs(tokens)
  return prompts


def gather_prompts(batches: Sequence[PromptBatch], picks: Sequence[Pick], *, pad_token_id: int,
                   patch_rows: int | None = None) -> PromptBatch:
  """One batch of the picked rows, in pick order, each with its own images; nothing is recomputed.

  picks: per output row, (b, row) of `batches[b]` (any order, repeats allowed), or None for a padding row.
  Rows are right-aligned to the widest batch's length (left padding grows); pixel rows are padded to
  `patch_rows` (None: the widest batch's P, or a multiple of it when the picked images need more).

      batch 0 ids  p p x x      batch 1 ids  p p p p y y        picks [(1, 0), (0, 0), None]
                                                          ->    p p p p y y
                                                                p p p p x x
                                                                p p p p p p   (valid False)
  """
  if not picks:
    raise ValueError("gather_prompts needs at least one pick")
  width = max(b.length for b in batches)
  n = len(picks)
  input_ids = np.full((n, width), pad_token_id, np.int32)
  mask = np.zeros((n, width), np.int32)
  mask[:, -1] = 1
  positions = np.zeros((3, n, width), np.int32)
  deltas, counts, valid = np.zeros((n,), np.int32), np.zeros((n,), np.int32), np.zeros((n,), bool)
  grids, pixels = [], []
  starts = [(np.concatenate([[0], np.cumsum(b.image_counts)]),
             np.concatenate([[0], np.cumsum(np.prod(b.image_grid_thw, axis=1, dtype=np.int64))])) for b in batches]
  for i, pick in enumerate(picks):
    if pick is None:
      continue
    b, row = pick
    source, length = batches[b], batches[b].length
    input_ids[i, width - length:] = source.input_ids[row]
    mask[i, width - length:] = source.attention_mask[row]
    positions[:, i, width - length:] = source.positions[:, row]
    deltas[i], counts[i], valid[i] = source.rope_deltas[row], source.image_counts[row], source.valid[row]
    image_start, patch_start = starts[b]
    first, end = image_start[row], image_start[row + 1]
    if end > first:
      grids.append(source.image_grid_thw[first:end])
      pixels.append(source.pixel_values[patch_start[first]:patch_start[end]])
  grid = np.concatenate(grids).astype(np.int32) if grids else np.zeros((0, 3), np.int32)
  pixel_values = None
  if grids:
    real = np.concatenate(pixels)
    if patch_rows is None:
      budget = max(b.patch_rows for b in batches)
      patch_rows = -(-len(real) // budget) * budget
    if patch_rows < len(real):
      raise ValueError(f"patch_rows={patch_rows} is smaller than the {len(real)} pixel rows of the picked prompts")
    pixel_values = _padded_pixels(real, patch_rows)
  return PromptBatch(input_ids=input_ids, attention_mask=mask, positions=positions, rope_deltas=deltas,
                     pixel_values=pixel_values, image_grid_thw=grid, image_counts=counts, valid=valid)


def with_padding_rows(prompts: PromptBatch, num_rows: int, pad_token_id: int) -> PromptBatch:
  """`prompts` followed by padding rows (one real pad token, no image, valid False) up to `num_rows` rows."""
  if num_rows < prompts.num_prompts:
    raise ValueError(f"batch has {prompts.num_prompts} rows, more than {num_rows}")
  if num_rows == prompts.num_prompts:
    return prompts
  picks = [(0, row) for row in range(prompts.num_prompts)] + [None] * (num_rows - prompts.num_prompts)
  return gather_prompts([prompts], picks, pad_token_id=pad_token_id, patch_rows=prompts.patch_rows or None)
