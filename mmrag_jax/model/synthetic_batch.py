"""Random processor-shaped batches from a layout: for tests and benchmarks that need no tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmrag_jax.model.config import Qwen25VLConfig

__all__ = ["Part", "random_processor_batch"]

Part = int | tuple[int, int, int]


def random_processor_batch(rows: Sequence[Sequence[Part]], config: Qwen25VLConfig, *, seed: int = 0,
                           wrap_images: bool = True, text_ids_below: int = 400) -> dict[str, np.ndarray]:
  """A left-padded numpy batch shaped like the Qwen2.5-VL processor's output.

  rows: per row, a list of parts: an int n is n random text ids drawn from [0, text_ids_below) (below
  the tiny tokenizer's special ids, 496..); a grid (t, h, w) is an image: `<|vision_start|>`,
  t*h*w / merge**2 `<|image_pad|>` tokens, `<|vision_end|>` (the pads alone with `wrap_images=False`),
  with random-normal patch rows. Example: `[[3, (1, 4, 6), 2], [9]]` is two rows, the first with one
  image of 4x6 patches (6 image tokens) between text runs.

  Returns input_ids, attention_mask, mm_token_type_ids [B, L] int64 and, when there are images,
  pixel_values [sum(t*h*w), patch_dim] float32 and image_grid_thw [N_images, 3] int64.
  """
  rng = np.random.default_rng(seed)
  sequences, grids = [], []
  for row in rows:
    tokens: list[int] = []
    for part in row:
      if isinstance(part, (int, np.integer)):
        tokens += rng.integers(0, text_ids_below, int(part)).tolist()
        continue
      grids.append(tuple(part))
      pads = [config.image_token_id] * (int(np.prod(part)) // config.vision.merge_unit)
      tokens += [config.vision_start_token_id, *pads, config.vision_end_token_id] if wrap_images else pads
    sequences.append(tokens)
  length = max(map(len, sequences))
  input_ids = np.full((len(rows), length), config.pad_token_id, np.int64)
  attention_mask = np.zeros((len(rows), length), np.int64)
  for b, tokens in enumerate(sequences):
    input_ids[b, length - len(tokens):] = tokens
    attention_mask[b, length - len(tokens):] = 1
  batch = dict(input_ids=input_ids, attention_mask=attention_mask,
               mm_token_type_ids=(input_ids == config.image_token_id).astype(np.int64))
  if grids:
    num_patches = sum(int(np.prod(g)) for g in grids)
    batch["pixel_values"] = rng.normal(size=(num_patches, config.vision.patch_dim)).astype(np.float32)
    batch["image_grid_thw"] = np.asarray(grids, np.int64)
  return batch
