"""The training example of one GRPO micro-batch, assembled on the host from prompts and their completions.

N = num_prompts * G rows, group-major (rows b*G ... b*G + G - 1 continue prompt b). Each row is the
left-padded prompt followed by its completion, right-padded after the stop token:

    prompt (Lp, left pad)         completion (T, right pad)
    p p a b c                     x y <im_end> p p          input_ids
    0 0 1 1 1                     1 1 1        0 0          attention_mask
                                  1 1 1        0 0          completion_mask (loss tokens)

Completion token j of a row has the M-RoPE position rope_delta + (real prompt tokens) + j on all three
axes, the position the sampler's KV cache gave it. The prompt's images are encoded once per prompt and
written into all G rows of its group (`image_slots`), as the sampler shares one prefill per group; the
log-prob pass (`rl.policy`) usually runs each prompt once instead, reading prompt b from row b * G and its
image slots from group member 0's.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from mmrag_jax.model.config import Qwen25VLConfig
from mmrag_jax.model.qwen25vl import ModelInputs
from mmrag_jax.sampling.prompt_batch import PromptBatch

__all__ = ["TrainBatch", "build_train_batch", "group_image_slots"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainBatch:
  """One micro-batch (arrays; numpy on the host, jax once placed on the mesh).

  inputs:            `ModelInputs` of prompt + completion, rows [N, Lp + T]; its `image_scatter` is unused.
  image_slots:       [G, P / merge**2] int32, flat slot (row * (Lp + T) + column) of every merged image
                     token in group member g's copy of its prompt; N * (Lp + T) for padding. None
                     without images.
  completion_ids:    [N, T] int32, sampled tokens (pad id after the stop token).
  completion_mask:   [N, T] bool, True on loss tokens (generated tokens up to and including the stop).
  sampler_logprobs:  [N, T] float32, log-probs the sampler reported for the completion tokens (0 off the mask).
  advantages:        [N] float32 (zeros until computed for the whole rollout batch).
  sampling_logprobs: [N, T] float32, log-probs of the distribution the tokens were drawn from (after
                     temperature / top-k / top-p; the rollout importance correction's pi_samp), 0 off the
                     mask. None where nothing was sampled (the teacher-forced warm-up).
  group_size:        G (static, not an array): rows b * G ... b * G + G - 1 repeat prompt b token for token,
                     so the log-prob pass can run each prompt once (`rl.policy`); 1 claims no sharing.
  """

  inputs: ModelInputs | None
  image_slots: jax.Array | None
  completion_ids: jax.Array
  completion_mask: jax.Array
  sampler_logprobs: jax.Array
  advantages: jax.Array
  sampling_logprobs: jax.Array | None = None
  group_size: int = dataclasses.field(default=1, metadata=dict(static=True))

  @property
  def completion_length(self) -> int:
    return self.completion_ids.shape[1]


def _repeat_rows(x: np.ndarray, group_size: int, axis: int = 0) -> np.ndarray:
  return np.repeat(np.asarray(x), group_size, axis=axis)


def group_image_slots(image_scatter: np.ndarray, num_prompts: int, prompt_length: int, total_length: int,
                      group_size: int) -> np.ndarray:
  """[G, P / merge**2] flat image-token slots in the [N, total_length] batch (see `TrainBatch`).

  image_scatter: [P / merge**2] flat slot b * prompt_length + l in the prompt batch, num_prompts *
  prompt_length for padding (as `PromptBatch.model_inputs` builds it).
  """
  scatter = np.asarray(image_scatter, np.int64)
  padding = scatter >= num_prompts * prompt_length
  prompt_row, column = np.divmod(np.where(padding, 0, scatter), prompt_length)
  members = np.arange(group_size)[:, None]
  slots = (prompt_row[None] * group_size + members) * total_length + column[None]
  return np.where(padding[None], num_prompts * group_size * total_length, slots).astype(np.int32)


def build_train_batch(prompts: PromptBatch, completion_ids: np.ndarray, completion_lengths: np.ndarray,
                      sampler_logprobs: np.ndarray, *, group_size: int, config: Qwen25VLConfig,
                      sampling_logprobs: np.ndarray | None = None) -> TrainBatch:
  """Joins the B prompts [B, Lp] the completions [B * G, T] were sampled for with those completions.

  completion_lengths: [B * G] tokens generated per row, the stop token included. Completions of prompts
  with `prompts.valid` False get an all-zero mask. sampler_logprobs, sampling_logprobs [B * G, T]: see
  `TrainBatch` (sampling_logprobs optional). config: the policy's (pad id, vision layout). Advantages start
  at zero.
  """
  prompt_inputs, pad_token_id = prompts.model_inputs(config), config.pad_token_id
  input_ids = np.asarray(prompt_inputs.input_ids)
  num_prompts, prompt_length = input_ids.shape
  completion_ids = np.asarray(completion_ids)
  num_rows, width = completion_ids.shape
  if num_rows != num_prompts * group_size:
    raise ValueError(f"completion_ids has {num_rows} rows; {num_prompts} prompts x group_size={group_size} "
                     f"need {num_prompts * group_size}")
  lengths = np.asarray(completion_lengths)
  if lengths.shape != (num_rows,) or np.any(lengths < 0) or np.any(lengths > width):
    raise ValueError(f"completion_lengths must be [{num_rows}] in [0, {width}], got {lengths}")
  if np.shape(sampler_logprobs) != (num_rows, width):
    raise ValueError(f"sampler_logprobs has shape {np.shape(sampler_logprobs)}, expected {(num_rows, width)}")
  if sampling_logprobs is not None and np.shape(sampling_logprobs) != (num_rows, width):
    raise ValueError(f"sampling_logprobs has shape {np.shape(sampling_logprobs)}, expected {(num_rows, width)}")
  mask = np.arange(width)[None, :] < lengths[:, None]
  mask &= _repeat_rows(np.asarray(prompts.valid, bool), group_size)[:, None]
  completion_ids = np.where(mask, completion_ids, pad_token_id).astype(np.int32)

  prompt_mask = _repeat_rows(prompt_inputs.attention_mask, group_size)
  real_prompt_tokens = prompt_mask.sum(axis=1)
  first_position = _repeat_rows(prompt_inputs.rope_deltas, group_size) + real_prompt_tokens  # [N]
  completion_positions = first_position[:, None] + np.arange(width)[None, :]
  positions = np.concatenate(
      [_repeat_rows(prompt_inputs.positions, group_size, axis=1),
       np.broadcast_to(completion_positions[None], (3, num_rows, width))], axis=2).astype(np.int32)
  inputs = ModelInputs(
      input_ids=np.concatenate([_repeat_rows(input_ids, group_size), completion_ids], axis=1),
      attention_mask=np.concatenate([prompt_mask, mask], axis=1).astype(np.int32),
      positions=positions,
      rope_deltas=_repeat_rows(prompt_inputs.rope_deltas, group_size).astype(np.int32),
      pixel_values=prompt_inputs.pixel_values,
      vision_index=prompt_inputs.vision_index)
  image_slots = None
  if prompt_inputs.pixel_values is not None:
    image_slots = group_image_slots(prompt_inputs.image_scatter, num_prompts, prompt_length,
                                    prompt_length + width, group_size)
  return TrainBatch(inputs=inputs, image_slots=image_slots, completion_ids=completion_ids,
                    completion_mask=mask, sampler_logprobs=np.asarray(sampler_logprobs, np.float32) * mask,
                    advantages=np.zeros((num_rows,), np.float32),
                    sampling_logprobs=None if sampling_logprobs is None else
                    np.asarray(sampling_logprobs, np.float32) * mask, group_size=group_size)
