"""Qwen2.5-VL: vision tower + text decoder + LM head, and host-side input preparation.

Typical use, with the numpy dict the transformers processor returns:

    inputs = prepare_inputs(batch, model.config, num_patches=4096)    # host, numpy
    logits = nnx.jit(forward)(model, inputs)                          # [B, L, V]

`model(**batch)` does both in one call. Token log-probs: `logprobs.chunked_logprobs` on `model.hidden_states`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmrag_jax.model.config import Qwen25VLConfig
from mmrag_jax.model.layers import linear
from mmrag_jax.model.rope_index import image_scatter_indices, mrope_positions
from mmrag_jax.model.text import TextModel, causal_padding_mask
from mmrag_jax.model.vision import VisionTower
from mmrag_jax.model.vision_index import AttentionBlocks, VisionIndex

__all__ = ["ModelInputs", "Qwen25VL", "abstract_model", "forward", "map_input_arrays", "prepare_inputs"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ModelInputs:
  """Everything one forward pass needs, as arrays (built on the host by `prepare_inputs`).

  input_ids:       [B, L] int32, left-padded.
  attention_mask:  [B, L] int32, 1 real / 0 pad.
  positions:       [3, B, L] int32, M-RoPE (t, h, w) positions.
  rope_deltas:     [B] int32, position offset of generated tokens (see `rope_index`).
  pixel_values:    [P, 1176] float32, patch rows (vision.patch_dim = 3 * 2 * 14 * 14) padded to the budget P;
                   None (text only).
  vision_index:    `VisionIndex` of the images (padded to P), or None.
  image_scatter:   [P / merge**2] int32, flat (b * L + l) slot of each merged image token; padding entries
                   hold B * L and are dropped. None without images.
  """

  input_ids: jax.Array
  attention_mask: jax.Array
  positions: jax.Array
  rope_deltas: jax.Array
  pixel_values: jax.Array | None = None
  vision_index: VisionIndex | None = None
  image_scatter: jax.Array | None = None


def map_input_arrays(inputs: ModelInputs, fn: Callable[[Any, tuple[str | None, ...]], Any]) -> ModelInputs:
  """`inputs` with every array x replaced by fn(x, the logical axis names of x); None fields stay None.

  Text rows are 'batch'; pixel rows and per-patch index arrays are 'vis_rows', merged image tokens
  'vis_tokens', attention blocks 'vis_blocks'. The default rules shard all four over the data-parallel
  chips, so each chip runs its share of the vision tower, not the whole batch's. Works on arrays,
  ShapeDtypeStructs or shardings alike (e.g. fn = lambda x, names: logical_sharding(mesh, names, ...)).
  """
  def each(x: Any, names: tuple[str | None, ...]) -> Any:
    return None if x is None else fn(x, names)

  def blocks(b: AttentionBlocks) -> AttentionBlocks:
    return AttentionBlocks(patches=each(b.patches, ("vis_blocks", None)), ids=each(b.ids, ("vis_blocks", None)),
                           slots=each(b.slots, ("vis_rows",)))

  index = inputs.vision_index
  if index is not None:
    index = VisionIndex(position_ids=each(index.position_ids, ("vis_rows", None)),
                        segment_ids=each(index.segment_ids, ("vis_rows",)),
                        window_index=each(index.window_index, ("vis_tokens",)),
                        reverse_window_index=each(index.reverse_window_index, ("vis_tokens",)),
                        windows=blocks(index.windows), frames=blocks(index.frames))
  return ModelInputs(input_ids=each(inputs.input_ids, ("batch", "length")),
                     attention_mask=each(inputs.attention_mask, ("batch", "length")),
                     positions=each(inputs.positions, (None, "batch", "length")),
                     rope_deltas=each(inputs.rope_deltas, ("batch",)),
                     pixel_values=each(inputs.pixel_values, ("vis_rows", None)), vision_index=index,
                     image_scatter=each(inputs.image_scatter, ("vis_tokens",)))


def prepare_inputs(batch: Mapping[str, Any], config: Qwen25VLConfig, *,
                   num_patches: int | None = None) -> ModelInputs:
  """Turns a processor batch into `ModelInputs` (host side, numpy).

  batch: `input_ids` [B, L], optional `attention_mask` [B, L] (left padding), and for images
  `pixel_values` [N_patches, patch_dim] with `image_grid_thw` [N_images, 3]. Other keys (e.g.
  `mm_token_type_ids`, recomputed from the ids) are ignored. num_patches: static patch budget (a multiple
  of merge**2) that pixel rows are zero-padded to, so batches with different images (or none) share
  one compiled shape; None pads nothing and leaves image-free batches without vision inputs.
  """
  if "input_ids" not in batch:
    raise ValueError("batch has no 'input_ids'")
  input_ids = np.asarray(batch["input_ids"])
  if input_ids.ndim != 2 or not np.issubdtype(input_ids.dtype, np.integer):
    raise ValueError(f"input_ids must be an integer [B, L] array, got {input_ids.dtype} {input_ids.shape}")
  mask = batch.get("attention_mask")
  mask = np.ones_like(input_ids, np.int32) if mask is None else np.asarray(mask).astype(np.int32)
  if mask.shape != input_ids.shape:
    raise ValueError(f"attention_mask shape {mask.shape} differs from input_ids shape {input_ids.shape}")
  if np.any(mask[:, -1] == 0):
    raise ValueError("attention_mask has padding at the end of a row: batches must be left-padded")

  grid = batch.get("image_grid_thw")
  pixels = batch.get("pixel_values")
  if (grid is None) != (pixels is None):
    raise ValueError("pixel_values and image_grid_thw must be given together")
  grid = np.zeros((0, 3), np.int64) if grid is None else np.asarray(grid).reshape(-1, 3).astype(np.int64)
  v, ids = config.vision, dict(image_token_id=config.image_token_id,
                               spatial_merge_size=config.vision.spatial_merge_size)
  positions, deltas = mrope_positions(input_ids, mask, grid, **ids)
  scatter = image_scatter_indices(input_ids, grid, **ids)
  common = dict(input_ids=input_ids.astype(np.int32), attention_mask=mask, positions=positions,
                rope_deltas=deltas)
  if len(grid) == 0 and num_patches is None:
    return ModelInputs(**common)

  # With a budget, even an image-free batch carries (all-padding) vision arrays: one compiled shape.
  real = int(np.prod(grid, axis=1).sum())
  pixels = np.zeros((0, v.patch_dim), np.float32) if pixels is None else np.asarray(pixels, np.float32)
  if pixels.shape != (real, v.patch_dim):
    raise ValueError(f"pixel_values has shape {pixels.shape}; image_grid_thw needs ({real}, {v.patch_dim})")
  budget = real if num_patches is None else num_patches
  if budget < real:
    raise ValueError(f"num_patches={num_patches} is smaller than the {real} patches of this batch")
  index = VisionIndex.build(grid, v, num_patches_padded=None if num_patches is None else budget,
                            frame_block_size=config.frame_block_size)
  padded_pixels = np.zeros((budget, v.patch_dim), np.float32)
  padded_pixels[:real] = pixels
  padded_scatter = np.full((budget // v.merge_unit,), input_ids.size, np.int32)
  padded_scatter[:scatter.size] = scatter
  return ModelInputs(**common, pixel_values=padded_pixels, vision_index=index, image_scatter=padded_scatter)


class Qwen25VL(nnx.Module):
  """Qwen2.5-VL for conditional generation. Submodules: `visual`, `language_model`, `lm_head`.

  `lm_head` is None when the head is tied to the token embedding (logits = h @ embedding.T).
  """

  def __init__(self, config: Qwen25VLConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.visual = VisionTower(config.vision, dtype=config.compute_dtype, param_dtype=config.storage_dtype,
                              remat=config.remat, unroll_layers=config.unroll_layers, rngs=rngs)
    self.language_model = TextModel(config, rngs=rngs)
    t = config.text
    self.lm_head = None if t.tie_word_embeddings else linear(
        t.hidden_size, t.vocab_size, use_bias=False, axes=("embed", "vocab"), dtype=config.compute_dtype,
        param_dtype=config.storage_dtype, rngs=rngs)

  def head_weight(self) -> jax.Array:
    """The output projection as [D, V] in the compute dtype."""
    if self.lm_head is None:
      return self.language_model.embed_tokens.embedding[...].astype(self.config.compute_dtype).T
    return self.lm_head.kernel[...].astype(self.config.compute_dtype)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """hidden [..., D] -> logits [..., V] in the compute dtype."""
    return hidden.astype(self.config.compute_dtype) @ self.head_weight()

  def embed(self, inputs: ModelInputs, image_slots: jax.Array | None = None) -> jax.Array:
    """Token embeddings [B, L, D] with merged image features written over the `<|image_pad|>` slots.

    The vision tower runs once on the P pixel rows. image_slots: None writes its output at
    `inputs.image_scatter`; [G, P / merge**2] flat (b * L + l) slots (padding B * L, dropped) write G
    copies of it, e.g. one per member of a GRPO group sharing a prompt (`rl.batch.TrainBatch`).
    """
    embeds = self.language_model.embed_tokens(inputs.input_ids)
    if inputs.pixel_values is None:
      return embeds
    batch, length, dim = embeds.shape
    image_embeds = self.visual(inputs.pixel_values, inputs.vision_index).astype(embeds.dtype)  # [P / merge**2, D]
    slots = inputs.image_scatter
    if image_slots is not None:
      slots, image_embeds = image_slots.reshape(-1), jnp.tile(image_embeds, (image_slots.shape[0], 1))
    flat = embeds.reshape(batch * length, dim)
    flat = flat.at[slots].set(image_embeds, mode="drop")
    return flat.reshape(batch, length, dim)

  def hidden_states(self, inputs: ModelInputs, image_slots: jax.Array | None = None) -> jax.Array:
    """Final-norm hidden states [B, L, D] (image_slots: see `embed`). Pad rows are finite but meaningless."""
    mask = causal_padding_mask(inputs.attention_mask)
    hidden, _ = self.language_model(self.embed(inputs, image_slots), inputs.positions, mask)
    return hidden

  def __call__(self, input_ids: Any = None, attention_mask: Any = None, pixel_values: Any = None,
               image_grid_thw: Any = None, *, num_patches: int | None = None, **extra: Any) -> jax.Array:
    """Logits [B, L, V] for a processor batch given as numpy arrays (prepared on the host, then jitted).

    Extra processor keys such as `mm_token_type_ids` are accepted and ignored.
    """
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                 image_grid_thw=image_grid_thw, **extra)
    return _jitted_forward(self, prepare_inputs(batch, self.config, num_patches=num_patches))


class _ConcreteCountStream(nnx.RngStream):
  """An RNG stream whose counter stays a concrete array while the model is traced abstractly.

  flax updates a traced counter through a sharding lookup on the tracer whose cost grows with the size
  of the trace, so building a 3B/7B model under `nnx.eval_shape` is quadratic in its parameter count;
  a concrete counter keeps it linear (about 4x faster for the 3B preset). Keys are the same as
  `nnx.Rngs`' (fold_in(key, count)).
  """

  def __call__(self) -> jax.Array:
    with jax.ensure_compile_time_eval():
      count = self.count[...]
      self.count[...] = count + 1
    return jax.random.fold_in(self.key[...], count)


def abstract_model(config: Qwen25VLConfig, seed: int = 0) -> Qwen25VL:
  """The model with `jax.ShapeDtypeStruct` leaves (plus sharding metadata): nothing is allocated."""

  def build() -> Qwen25VL:
    with jax.ensure_compile_time_eval():
      rngs = nnx.Rngs()
      rngs.default = _ConcreteCountStream(key=jax.random.key(seed), tag="default")
    return Qwen25VL(config, rngs=rngs)

  return nnx.eval_shape(build)


def forward(model: Qwen25VL, inputs: ModelInputs) -> jax.Array:
  """Logits [B, L, V] in the compute dtype. Pure given the model's parameters; wrap in `nnx.jit`."""
  return model.logits(model.hidden_states(inputs))


_jitted_forward = nnx.jit(forward)
