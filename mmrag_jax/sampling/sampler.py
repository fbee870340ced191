"""The rollout sampler: G completions per multimodal prompt, prefix prefilled once.

    sampler = Sampler(model, SamplerConfig(max_new_tokens=256, method=TopP(0.95, temperature=1.0)))
    out = sampler.generate(prompts, jax.random.key(0), group_size=8, prompt_ids=example_ids)  # a PromptBatch
    out.tokens            # [B * 8, 256], rows b * 8 ... b * 8 + 7 are prompt b's samples
    out.policy_logprobs   # [B * 8, 256], log-probs the GRPO trainer's `QwenLogprobs` recomputes

Compilation. Prompts come as a `PromptBatch` (`prompt_batch.py`), left-padded to one of a few length buckets
and its pixel rows to one of a few patch buckets, so prefill compiles once per (batch size, length bucket,
patch bucket) and the decode loop once per (rows, length bucket, method), not once per batch. The model goes
into jit as (graphdef, state): the graphdef is static, the state an argument, so updated parameters never
recompile.

Jit boundaries and donation. Prefill (vision tower + prompt, then the G-fold row repeat) is one jitted
call; the whole decode loop is another, which takes the cache donated and hands it back, so its
`while_loop` writes the prompt's cache buffers in place rather than copying [layers, B * G, S, KVH, Dh].

Decode step. A float32 model on CPU without a mesh, or on a one-device mesh (the trainer's on one core),
decodes with the packed step of `packed_decoder.py`: the text decoder's weights copied into
matrix-vector layouts (a second copy of them in memory), about 2x faster per token there. The copy is
made on the first `generate`, kept while the model's parameter arrays stay the same objects, and remade
(one jitted copy of the weights) after they change. Elsewhere (accelerators, meshes of several devices,
bfloat16) the loop runs the model's own decode step, on decode weights: a copy of
the parameters in the compute dtype with FSDP's split turned into tensor parallelism
(`SamplerConfig.decode_weights`), so a token step reads its chip's share of bfloat16 weights from its own
HBM instead of all-gathering every float32 weight.

Log-probs. `policy_logprobs` are those of the temperature-1, untruncated policy (float32 logits,
float32-accumulated head, as in `chunked_logprobs`): the trainer's old-policy log-probs, no recomputation
needed when the sampling and training parameters are the same. `sampling_logprobs` are those of the
processed distribution actually sampled from (temperature, top-k / top-p, suppressed ids), for
importance corrections. Vision placeholder ids are suppressed by default: the model embeds a generated
`<|image_pad|>` as text during decoding, but a full forward would expect an image there.

Stops and RNG: see `decode.py` (rows stop independently on any stop id) and `keys.py` (one key per
(prompt id, sample index)).

Sharding. With a `mesh`, prompt arrays are placed with rows over ('data', 'fsdp') and the cache is
pinned to rows over the batch axes and kv heads over 'tensor'; prefill reads the parameters in their own
shardings (load the model with `load_pretrained(..., mesh=mesh)`), the decode loop its decode weights.
Tokens equal the single-device ones.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from mmrag_jax.model.kv_cache import KVCache
from mmrag_jax.model.qwen25vl import ModelInputs, Qwen25VL
from mmrag_jax.parallel import (DEFAULT_RULES, LogicalRules, compiler_options, decode_rules, logical_sharding,
                                param_shardings, platform_jit)
from mmrag_jax.sampling.decode import DecodeSettings, DecodeState, decode_loop
from mmrag_jax.sampling.inputs import place_inputs, to_host
from mmrag_jax.sampling.keys import row_keys
from mmrag_jax.sampling.methods import Categorical, SamplingMethod
from mmrag_jax.sampling.packed_decoder import PackedDecoder, pack_decoder
from mmrag_jax.sampling.prompt_batch import PromptBatch, gather_prompts, with_padding_rows
from mmrag_jax.sampling.steps import prefill_group, prefill_rows

__all__ = ["SampleOutput", "Sampler", "SamplerConfig", "decode_weights_fn", "jitted_decode", "jitted_prefill"]


_DECODE_WEIGHTS = ("gathered", "training")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Rollout settings.

  max_new_tokens: T, generated tokens per row at most.
  method: `Greedy()`, `Categorical(t)`, `TopK(k, t)` or `TopP(p, t)`.
  stop_ids: a row ends after emitting any of these; None = the model's eos (`<|im_end|>`) and pad
    (`<|endoftext|>`) ids, as Qwen's generation config does.
  share_prefix: prefill each prompt once for its G samples (False: prefill G copies; for comparison).
  suppress_vision_tokens: never sample the image/video/vision start/end placeholder ids.
  decode_weights: 'gathered' (default): the decode loop reads a copy of the weights in the compute dtype,
    laid out for decoding (`parallel.decode_rules`: FSDP's split turned into tensor parallelism), made by
    the sampler once per parameter version and
    freed with it (a rollout's sampler lives for one rollout: no copy during the update); 'training': it
    reads the training parameters as they are (no second copy in memory; FSDP all-gathers them at every
    token step). The CPU float32 path always decodes from its packed copy instead.
  """

  max_new_tokens: int = 256
  method: SamplingMethod = Categorical(temperature=1.0)
  stop_ids: tuple[int, ...] | None = None
  share_prefix: bool = True
  suppress_vision_tokens: bool = True
  decode_weights: str = "gathered"

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"SamplerConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.decode_weights not in _DECODE_WEIGHTS:
      raise ValueError(f"SamplerConfig.decode_weights must be one of {_DECODE_WEIGHTS}, got {self.decode_weights!r}")


@dataclasses.dataclass(frozen=True)
class SampleOutput:
  """Host arrays of one rollout. N = B * G rows, prompt-major; T = max_new_tokens.

  tokens:             [N, T] int32, pad after each row's stop token.
  lengths:            [N] int32, generated tokens per row, the stop token included.
  truncated:          [N] bool, True when the row hit max_new_tokens without a stop id.
  policy_logprobs:    [N, T] float32, temperature-1 untruncated policy log-probs (0 past `lengths`).
  sampling_logprobs:  [N, T] float32, log-probs under the processed sampling distribution.
  group_size:         G.
  """

  tokens: np.ndarray
  lengths: np.ndarray
  truncated: np.ndarray
  policy_logprobs: np.ndarray
  sampling_logprobs: np.ndarray
  group_size: int

  @property
  def completion_mask(self) -> np.ndarray:
    """[N, T] bool, True on generated tokens (stop token included), False on the padding after it."""
    return np.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]

  @property
  def prompt_index(self) -> np.ndarray:
    """[N] int, the prompt (row of the input batch) each sample belongs to."""
    return np.arange(len(self.tokens)) // self.group_size

  def texts(self, detokenize: Callable[[Sequence[int]], str], stop_ids: Sequence[int]) -> list[str]:
    """The N completions as text (`detokenize` of each row's tokens), without their stop token."""
    stops = set(int(s) for s in stop_ids)
    texts = []
    for tokens, length in zip(self.tokens, self.lengths):
      ids = [int(t) for t in tokens[:length]]
      if ids and ids[-1] in stops:
        ids = ids[:-1]
      texts.append(detokenize(ids))
    return texts


@functools.partial(platform_jit, static_argnames=("graphdef", "cache_size", "group_size", "mesh", "weight_rules",
                                                  "prompts"))
def jitted_prefill(graphdef: nnx.GraphDef, state: nnx.State, inputs: ModelInputs, *, cache_size: int, group_size: int,
                   mesh: Mesh | None, weight_rules: LogicalRules = DEFAULT_RULES,
                   prompts: int | None = None) -> tuple[jax.Array, KVCache]:
  return prefill_group(nnx.merge(graphdef, state), inputs, cache_size, group_size, mesh, weight_rules, prompts)


_row_keys = platform_jit(row_keys, static_argnames=("group_size",))


@functools.partial(platform_jit, static_argnames=("graphdef",))
def _pack(graphdef: nnx.GraphDef, state: nnx.State) -> PackedDecoder:
  return pack_decoder(nnx.merge(graphdef, state))


def _compute_copy(state: nnx.State, dtype: jnp.dtype) -> nnx.State:
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)


def decode_weights_fn(state: nnx.State, dtype: jnp.dtype, mesh: Mesh | None) -> Any:
  """The jitted copy `state` -> decode weights: floating arrays cast to `dtype`, and with a mesh laid out by
  `decode_rules` (one reshard per parameter version instead of an all-gather of every weight per token step)."""
  copy = functools.partial(_compute_copy, dtype=dtype)
  if mesh is None:
    return platform_jit(copy)
  return jax.jit(copy, out_shardings=param_shardings(state, mesh, decode_rules()),
                 compiler_options=compiler_options(mesh))


# The cache is donated and returned inside the final state: the loop then runs in its buffers.
@functools.partial(platform_jit, static_argnames=("graphdef", "method", "settings", "mesh", "weight_rules"),
                   donate_argnames=("cache",))
def jitted_decode(graphdef: nnx.GraphDef, state: nnx.State, logits: jax.Array, cache: KVCache, keys: jax.Array,
                  stop_ids: jax.Array, packed: PackedDecoder | None, *, method: SamplingMethod,
                  settings: DecodeSettings, mesh: Mesh | None, weight_rules: LogicalRules = DEFAULT_RULES
                  ) -> DecodeState:
  return decode_loop(nnx.merge(graphdef, state), logits, cache, keys, stop_ids, method=method, settings=settings,
                     mesh=mesh, weight_rules=weight_rules, packed=packed)


def _decodes_packed(model: Qwen25VL, state: nnx.State, mesh: Mesh | None) -> bool:
  """Whether decoding takes the packed CPU step: float32 compute, parameters on CPU, no mesh or a one-device
  mesh (the trainer's on a one-core host: nothing to lay out, so the packed step's layouts win)."""
  first = jax.tree.leaves(state)[0]
  on_cpu = all(device.platform == "cpu" for device in first.devices())
  one_device = mesh is None or mesh.devices.size == 1
  return one_device and on_cpu and jnp.dtype(model.config.compute_dtype) == jnp.float32


class _PerParameters:
  """A value derived from a model's parameter arrays, kept while every array is the one it was made from
  (weak references: replaced parameters are never kept alive)."""

  def __init__(self):
    self._entry: tuple[tuple[weakref.ref, ...], Any] | None = None

  def get(self, state: nnx.State, make: Any) -> Any:
    leaves = jax.tree.leaves(state)
    if self._entry is not None:
      sources, value = self._entry
      if len(sources) == len(leaves) and all(ref() is leaf for ref, leaf in zip(sources, leaves)):
        return value
    value = make()
    self._entry = (tuple(weakref.ref(leaf) for leaf in leaves), value)
    return value


class Sampler:
  """Jitted multimodal rollouts of a `Qwen25VL` (see the module docstring).

  The model is read at every call (`nnx.split`), so in-place parameter updates by the trainer are
  picked up without rebuilding the sampler.
  """

  def __init__(self, model: Qwen25VL, config: SamplerConfig = SamplerConfig(), *, mesh: Mesh | None = None):
    self.model, self.config, self.mesh = model, config, mesh
    self._packed = _PerParameters()   # the packed CPU decoder
    self._gathered = _PerParameters()  # the decode weights
    c = model.config
    self.stop_ids = tuple(config.stop_ids) if config.stop_ids is not None else (c.eos_token_id, c.pad_token_id)
    suppressed = (c.image_token_id, c.video_token_id, c.vision_start_token_id, c.vision_end_token_id)
    self.settings = DecodeSettings(max_new_tokens=config.max_new_tokens, pad_token_id=c.pad_token_id,
                                   suppressed_ids=suppressed if config.suppress_vision_tokens else ())

  def prepare(self, prompts: PromptBatch) -> ModelInputs:
    """Host side: the `ModelInputs` of a prompt batch, placed on the mesh if any."""
    return place_inputs(prompts.model_inputs(self.model.config), self.mesh)

  def prefill(self, prompts: PromptBatch, group_size: int,
              model_split: tuple[nnx.GraphDef, nnx.State] | None = None) -> tuple[jax.Array, KVCache]:
    """Next-token logits [B * G, V] float32 and the KV cache of B * G rows, sized for max_new_tokens.

    With `share_prefix` each prompt is prefilled once and its cache repeated; otherwise the prompts
    (and their images) are repeated G times first and all B * G rows are prefilled. model_split:
    `nnx.split(model)` if the caller has it.
    """
    if group_size < 1:
      raise ValueError(f"group_size must be >= 1, got {group_size}")
    share, count, pad = self.config.share_prefix, prompts.num_prompts, self.model.config.pad_token_id
    if not share:  # every prompt G times, with G copies of its images
      picks = [(0, row) for row in np.repeat(np.arange(count), group_size)]
      prompts = gather_prompts([prompts], picks, pad_token_id=pad, patch_rows=group_size * prompts.patch_rows)
    elif prefill_rows(count, self.mesh) > count:  # padding rows: every device prefills its share
      prompts = with_padding_rows(prompts, prefill_rows(count, self.mesh), pad)
    inputs = self.prepare(prompts)
    cache_size = inputs.input_ids.shape[1] + self.config.max_new_tokens
    graphdef, state = model_split if model_split is not None else nnx.split(self.model)
    return jitted_prefill(graphdef, state, inputs, cache_size=cache_size, group_size=group_size if share else 1,
                          mesh=self.mesh, weight_rules=self.weight_rules, prompts=count if share else None)

  def packed_decoder(self, model_split: tuple[nnx.GraphDef, nnx.State] | None = None) -> PackedDecoder | None:
    """The model's packed decode weights, or None where decoding runs the model's own step.

    Packed on first use and kept while every parameter array is the one it was packed from (weak
    references: the sampler never keeps replaced parameters alive). model_split: `nnx.split(model)` if
    the caller has it (splitting costs milliseconds).
    """
    graphdef, state = model_split if model_split is not None else nnx.split(self.model)
    if not _decodes_packed(self.model, state, self.mesh):
      return None
    return self._packed.get(state, lambda: _pack(graphdef, state))

  @property
  def weight_rules(self) -> LogicalRules:
    """The rules the decode loop's weights are laid out by (`decode_rules()` for the gathered copy), beside
    which prefill places the KV cache (`steps.cache_shardings`)."""
    return DEFAULT_RULES if self.config.decode_weights == "training" else decode_rules()

  def decode_state(self, model_split: tuple[nnx.GraphDef, nnx.State] | None = None) -> nnx.State:
    """The parameters the decode loop reads (see `SamplerConfig.decode_weights`): the model's own where it
    decodes packed, decodes 'training' weights, or they already are in the compute dtype and not split over
    'fsdp'; otherwise the gathered copy, made on first use and kept while the parameter arrays stay the same."""
    _, state = model_split if model_split is not None else nnx.split(self.model)
    dtype = jnp.dtype(self.model.config.compute_dtype)
    in_compute_dtype = all(x.dtype == dtype for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating))
    fsdp = self.mesh is not None and self.mesh.shape.get("fsdp", 1) > 1
    if (self.config.decode_weights == "training" or _decodes_packed(self.model, state, self.mesh)
        or (in_compute_dtype and not fsdp)):
      return state
    return self._gathered.get(state, lambda: decode_weights_fn(state, dtype, self.mesh)(state))

  def generate(self, prompts: PromptBatch, key: jax.Array, *, group_size: int = 1,
               prompt_ids: np.ndarray | None = None) -> SampleOutput:
    """G completions for each of the B prompts (`prompt_batch.PromptBatch`, e.g. a pipeline batch's prompts).

    key: a PRNG key; prompt_ids: [B] int stable ids of the prompts for the RNG (default 0 .. B - 1).
    """
    batch_size = prompts.num_prompts
    prompt_ids = np.arange(batch_size) if prompt_ids is None else np.asarray(prompt_ids)
    if prompt_ids.shape != (batch_size,):
      raise ValueError(f"prompt_ids must have shape ({batch_size},), got {prompt_ids.shape}")
    model_split = nnx.split(self.model)  # once per call: splitting the model costs milliseconds
    logits, cache = self.prefill(prompts, group_size, model_split)
    keys = _row_keys(key, prompt_ids, group_size)
    if self.mesh is not None:
      keys = jax.device_put(keys, logical_sharding(self.mesh, ("batch",), shape=keys.shape))
    stop_ids = np.asarray(self.stop_ids, np.int32)
    packed = self.packed_decoder(model_split)
    final = jitted_decode(model_split[0], self.decode_state(model_split), logits, cache, keys, stop_ids, packed,
                          method=self.config.method, settings=self.settings,
                          mesh=self.mesh if packed is None else None, weight_rules=self.weight_rules)
    return SampleOutput(tokens=to_host(final.tokens), lengths=to_host(final.lengths),
                        truncated=~to_host(final.done), policy_logprobs=to_host(final.policy_logprobs),
                        sampling_logprobs=to_host(final.sampling_logprobs), group_size=group_size)
