"""Log-probabilities and entropies of completion tokens under the Qwen2.5-VL policy.

The LM head runs only over the T completion positions (hidden state of position Lp - 1 + t predicts
completion token t), through `model.logprobs.chunked_logprobs`, so the [N, L, V] logits never exist.
Images are encoded once per prompt and written into the G rows of its group (`Qwen25VL.embed` with
`batch.TrainBatch.image_slots`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from mmrag_jax.model.logprobs import chunked_logprobs
from mmrag_jax.model.qwen25vl import Qwen25VL
from mmrag_jax.rl.batch import TrainBatch

__all__ = ["LogprobFn", "QwenLogprobs"]

# (policy, micro-batch) -> (log-probs [N, T], entropy [N, T]) of the completion tokens. Must be hashable
# (it is a static argument of the jitted update): a module-level function or a frozen dataclass.
LogprobFn = Callable[[object, TrainBatch], tuple[jax.Array, jax.Array]]


def _completion_logprobs(model: Qwen25VL, batch: TrainBatch, *, temperature: float = 1.0,
                         chunk_size: int = 256) -> tuple[jax.Array, jax.Array]:
  """(log-probs, entropy), each [N, T] float32, of batch.completion_ids under `model` (a `LogprobFn`)."""
  inputs = batch.inputs
  total_length = inputs.input_ids.shape[1]
  completion_length = batch.completion_length
  prompt_length = total_length - completion_length
  if prompt_length < 1:
    raise ValueError(f"the batch has no prompt: length {total_length}, completion length {completion_length}")
  hidden = model.hidden_states(inputs, batch.image_slots)
  # Position Lp - 1 + t predicts completion token t.
  hidden = hidden[:, prompt_length - 1:total_length - 1]
  return chunked_logprobs(hidden, model.head_weight(), batch.completion_ids, temperature=temperature,
                          chunk_size=chunk_size)


@dataclasses.dataclass(frozen=True)
class QwenLogprobs:
  """`_completion_logprobs` with fixed settings: a hashable LogprobFn, so equal settings share compilations."""

  temperature: float = 1.0
  chunk_size: int = 256

  def __call__(self, model: Qwen25VL, batch: TrainBatch) -> tuple[jax.Array, jax.Array]:
    return _completion_logprobs(model, batch, temperature=self.temperature, chunk_size=self.chunk_size)
