"""The stage-1 scorer: P("yes") of a (question, candidate) judgment from one forward pass.

Each prompt ends exactly where the judgment token goes (e.g. `...<|im_start|>assistant\\n<answer>`), so
the next-token logits at the last slot decide. With l_yes, l_no those logits (float32):

    P(yes) = exp(l_yes) / (exp(l_yes) + exp(l_no)) = sigmoid(l_yes - l_no)

i.e. the probability of "yes" among the two allowed answers, which ranks candidates the same way as the
log-odds. One forward per candidate replaces generating and parsing the judgment token by token, and
only the last slot goes through the [D, 2] slice of the output head.

Many candidates are scored in chunks of `batch_size` rows (the last chunk filled up with padding rows), each
of the input `PromptBatch`'s length and with the pixel rows of the chunk that has the most, so one shape
compiles per call. A pipeline batch of `batch_size` prompts is scored as it is.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from mmrag_jax.model.qwen25vl import ModelInputs, Qwen25VL
from mmrag_jax.parallel import activation_mesh, platform_jit
from mmrag_jax.sampling.inputs import place_inputs, to_host
from mmrag_jax.sampling.prompt_batch import PromptBatch, gather_prompts

__all__ = [
    "Scorer", "ScorerConfig", "jitted_yes_probability", "judgment_continuation", "judgment_token_ids",
    "with_continuation",
]


def _yes_probability(model: Qwen25VL, inputs: ModelInputs, yes_token_id: int, no_token_id: int) -> jax.Array:
  """P(yes) among {yes, no} at the last slot of each left-padded prompt: [B] float32."""
  last_hidden = model.hidden_states(inputs)[:, -1]  # [B, D]; left padding puts every prompt's end here
  pair_weight = model.head_weight()[:, jnp.asarray([yes_token_id, no_token_id])]  # [D, 2]
  pair_logits = jnp.einsum("bd,dk->bk", last_hidden, pair_weight, preferred_element_type=jnp.float32)
  return jax.nn.sigmoid(pair_logits[:, 0] - pair_logits[:, 1])


@functools.partial(platform_jit, static_argnames=("graphdef", "yes_token_id", "no_token_id", "mesh"))
def jitted_yes_probability(graphdef: nnx.GraphDef, state: nnx.State, inputs: ModelInputs, *, yes_token_id: int,
                           no_token_id: int, mesh: Mesh | None = None) -> jax.Array:
  with activation_mesh(mesh):
    return _yes_probability(nnx.merge(graphdef, state), inputs, yes_token_id, no_token_id)


def judgment_token_ids(tokenizer: Any, yes: str = "yes", no: str = "no") -> tuple[int, int]:
  """Token ids of the two judgment words; each must encode to exactly one token."""
  ids = []
  for word in (yes, no):
    encoded = tokenizer.encode(word, add_special_tokens=False)
    if len(encoded) != 1:
      raise ValueError(f"judgment word {word!r} encodes to {len(encoded)} tokens {encoded}; it must be one token")
    ids.append(int(encoded[0]))
  return ids[0], ids[1]


def judgment_continuation(tokenizer: Any, yes_completion: str, no_completion: str) -> tuple[list[int], int, int]:
  """Where two judgment completions part ways, in tokens: (shared prefix ids, yes token id, no token id).

  BPE may merge the judgment word with the markup before it (the tiny test tokenizer encodes
  `<answer>yes</answer>` as `<answer` `>yes` ...), so the scoring prompt is the chat prompt followed by the
  tokens both completions share, and the two scored ids are the first ones that differ: exactly the
  tokens a policy emitting either completion produces at that step.

    yes_completion "<answer>yes</answer>" -> [420, 338, ...]   prefix [420], yes id 338
    no_completion  "<answer>no</answer>"  -> [420, 412, ...]   no id 412
  """
  yes_ids = list(tokenizer.encode(yes_completion, add_special_tokens=False))
  no_ids = list(tokenizer.encode(no_completion, add_special_tokens=False))
  shared = 0
  while shared < min(len(yes_ids), len(no_ids)) and yes_ids[shared] == no_ids[shared]:
    shared += 1
  if shared == len(yes_ids) or shared == len(no_ids):
    raise ValueError(f"judgment completions {yes_completion!r} and {no_completion!r} do not differ in a token "
                     f"({yes_ids} vs {no_ids})")
  return yes_ids[:shared], int(yes_ids[shared]), int(no_ids[shared])


def with_continuation(batch: Mapping[str, Any], token_ids: list[int]) -> dict[str, Any]:
  """A left-padded processor batch with `token_ids` appended to every row (the rows stay left-padded)."""
  out = dict(batch)
  rows = len(np.asarray(batch["input_ids"]))
  extra = np.tile(np.asarray(token_ids, np.int32)[None], (rows, 1))
  out["input_ids"] = np.concatenate([np.asarray(batch["input_ids"], np.int32), extra], axis=1)
  mask = np.asarray(batch.get("attention_mask", np.ones_like(batch["input_ids"])), np.int32)
  out["attention_mask"] = np.concatenate([mask, np.ones_like(extra)], axis=1)
  out.pop("mm_token_type_ids", None)
  return out


@dataclasses.dataclass(frozen=True)
class ScorerConfig:
  """batch_size: candidates per forward pass."""

  batch_size: int = 32

  def __post_init__(self):
    if self.batch_size < 1:
      raise ValueError(f"ScorerConfig.batch_size must be >= 1, got {self.batch_size}")


class Scorer:
  """Scores any number of stage-1 prompts: `scorer(prompts)` -> P(yes) [N] float32 numpy.

  prompts: a `PromptBatch` of N prompts ending at the judgment position (any N; images allowed).
  """

  def __init__(self, model: Qwen25VL, *, yes_token_id: int, no_token_id: int,
               config: ScorerConfig = ScorerConfig(), mesh: Mesh | None = None):
    vocab = model.config.text.vocab_size
    for name, token in (("yes_token_id", yes_token_id), ("no_token_id", no_token_id)):
      if not 0 <= token < vocab:
        raise ValueError(f"{name}={token} is outside the vocabulary [0, {vocab})")
    self.model, self.config, self.mesh = model, config, mesh
    self.yes_token_id, self.no_token_id = int(yes_token_id), int(no_token_id)

  def __call__(self, prompts: PromptBatch) -> np.ndarray:
    total, size, model_config = prompts.num_prompts, self.config.batch_size, self.model.config
    graphdef, state = nnx.split(self.model)
    pending = []  # device results; host preparation of the next chunk overlaps the device's work
    starts = range(0, total, size)
    per_row, unit = prompts.row_patches, model_config.vision.merge_unit
    patch_rows = max((-(-int(per_row[s:s + size].sum()) // unit) * unit for s in starts), default=0)
    for start in starts:
      rows = range(start, min(start + size, total))
      chunk = prompts
      if total != size:  # chunks of `size` rows, the last one filled up with padding rows
        picks = [(0, row) for row in rows] + [None] * (size - len(rows))
        chunk = gather_prompts([prompts], picks, pad_token_id=model_config.pad_token_id,
                               patch_rows=patch_rows or None)
      inputs = chunk.model_inputs(model_config)
      probs = jitted_yes_probability(graphdef, state, place_inputs(inputs, self.mesh), yes_token_id=self.yes_token_id,
                                     no_token_id=self.no_token_id, mesh=self.mesh)
      pending.append((probs, len(rows)))
    scores = [to_host(probs)[:count] for probs, count in pending]
    return np.concatenate(scores) if scores else np.zeros((0,), np.float32)
