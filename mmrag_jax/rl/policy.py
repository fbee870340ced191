"""Log-probabilities and entropies of completion tokens under the Qwen2.5-VL policy.

The LM head runs only over the T completion positions (hidden state of position Lp - 1 + t predicts
completion token t), through `model.logprobs.chunked_logprobs`, so the [N, L, V] logits never exist.

The G rows of a group repeat one prompt, so the prompt runs once per group: the decoder's `shared_prefix`
pass takes the N / G prompts [N / G, Lp] (images encoded once per prompt) and the N completions [N, T]
together, each prompt's tokens and its G completions' as one sequence, each completion attending to its
prompt's keys / values and its own. The result is the full-row forward's
(the same attention over [prompt, completion]) at a fraction of the cost when Lp is large against T:
N (Lp + T) decoder positions become N / G Lp + N T, in the backward pass too. `share_prompts=False`
runs every row whole (images written into all G rows, `Qwen25VL.embed` with `TrainBatch.image_slots`), as
does a batch whose N / G prompts do not split evenly over the data-parallel chips (e.g. 4 prompts per
micro-batch on 8 chips): the prompt pass would run replicated there, no cheaper per chip than whole rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mmrag_jax.model.logprobs import chunked_logprobs
from mmrag_jax.model.qwen25vl import ModelInputs, Qwen25VL
from mmrag_jax.model.text import causal_padding_mask
from mmrag_jax.parallel import batch_shards
from mmrag_jax.rl.batch import TrainBatch

__all__ = ["LogprobFn", "QwenLogprobs", "runs_prompts_once"]

# (policy, micro-batch) -> (log-probs [N, T], entropy [N, T]) of the completion tokens. Must be hashable
# (it is a static argument of the jitted update): a module-level function or a frozen dataclass.
LogprobFn = Callable[[object, TrainBatch], tuple[jax.Array, jax.Array]]


def _prompt_inputs(batch: TrainBatch, prompt_length: int) -> ModelInputs:
  """The N / G prompts of a batch as their own [N / G, Lp] inputs (images at their prompt-batch slots)."""
  inputs, group = batch.inputs, batch.group_size
  scatter = None
  if batch.image_slots is not None:
    # Group member 0's slot (b * G) * (Lp + T) + l is slot b * Lp + l of the prompt batch; padding (N (Lp + T))
    # lands on N / G * Lp, past the end, and is dropped as before.
    row, column = jnp.divmod(batch.image_slots[0], inputs.input_ids.shape[1])
    scatter = (row // group) * prompt_length + column
  return ModelInputs(input_ids=inputs.input_ids[::group, :prompt_length],
                     attention_mask=inputs.attention_mask[::group, :prompt_length],
                     positions=inputs.positions[:, ::group, :prompt_length], rope_deltas=inputs.rope_deltas[::group],
                     pixel_values=inputs.pixel_values, vision_index=inputs.vision_index, image_scatter=scatter)


def _shared_prompt_hidden(model: Qwen25VL, batch: TrainBatch, prompt_length: int) -> jax.Array:
  """Hidden states [N, T, D] at positions Lp - 1 ... Lp + T - 2, each prompt run once for its G rows."""
  inputs, group = batch.inputs, batch.group_size
  prompts = _prompt_inputs(batch, prompt_length)
  completion_mask = inputs.attention_mask[:, prompt_length:]
  prompt_hidden, hidden = model.language_model.shared_prefix(
      model.embed(prompts), prompts.positions, causal_padding_mask(prompts.attention_mask),
      model.language_model.embed_tokens(inputs.input_ids[:, prompt_length:]), inputs.positions[:, :, prompt_length:],
      causal_padding_mask(completion_mask), prompts.attention_mask != 0)
  # The prompt's last position predicts completion token 0; completion position t predicts token t + 1.
  last = jnp.repeat(prompt_hidden[:, -1:], group, axis=0)
  return jnp.concatenate([last, hidden[:, :-1]], axis=1)


def runs_prompts_once(rows: int, group_size: int, shards: int) -> bool:
  """Whether the log-prob pass runs each prompt once for its group on a micro-batch of `rows` rows whose
  'batch' axis splits `shards` ways (`parallel.batch_shards`): only where the rows hold groups and their
  rows / group_size prompts split evenly over the shards. Elsewhere the prompt pass would run replicated on
  every chip, costing as many positions per chip as whole rows and more memory."""
  return group_size > 1 and (rows // group_size) % shards == 0


def _completion_logprobs(model: Qwen25VL, batch: TrainBatch, *, temperature: float = 1.0, chunk_size: int = 256,
                         share_prompts: bool = True) -> tuple[jax.Array, jax.Array]:
  """(log-probs, entropy), each [N, T] float32, of batch.completion_ids under `model` (a `LogprobFn`)."""
  inputs = batch.inputs
  total_length = inputs.input_ids.shape[1]
  completion_length = batch.completion_length
  prompt_length = total_length - completion_length
  if prompt_length < 1:
    raise ValueError(f"the batch has no prompt: length {total_length}, completion length {completion_length}")
  if share_prompts and runs_prompts_once(inputs.input_ids.shape[0], batch.group_size, batch_shards()):
    hidden = _shared_prompt_hidden(model, batch, prompt_length)
  else:
    # Position Lp - 1 + t predicts completion token t.
    hidden = model.hidden_states(inputs, batch.image_slots)[:, prompt_length - 1:total_length - 1]
  return chunked_logprobs(hidden, model.head_weight(), batch.completion_ids, temperature=temperature,
                          chunk_size=chunk_size)


@dataclasses.dataclass(frozen=True)
class QwenLogprobs:
  """`_completion_logprobs` with fixed settings: a hashable LogprobFn, so equal settings share compilations."""

  temperature: float = 1.0
  chunk_size: int = 256
  share_prompts: bool = True

  def __call__(self, model: Qwen25VL, batch: TrainBatch) -> tuple[jax.Array, jax.Array]:
    return _completion_logprobs(model, batch, temperature=self.temperature, chunk_size=self.chunk_size,
                                share_prompts=self.share_prompts)
