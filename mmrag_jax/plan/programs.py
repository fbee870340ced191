"""The run's jitted programs with abstract arguments at the config's largest shapes, on an abstract mesh.

Each program family is a small builder returning `Program`s (name, bucket, jitted fn, abstract args):
  update   the GRPO update's `accumulate` and `apply` steps and, with a KL term (rl.beta > 0), the reference
           log-prob pass (`rl/update.py`);
  sampler  the rollout's group-shared `prefill` and the `decode` loop (`sampling/sampler.py`);
  scorer   stage 1's P(yes) forward (`sampling/scorer.py`), for stage-1 configs.
The jitted functions are the library's own; arguments are `jax.ShapeDtypeStruct`s carrying the rule-table
shardings, so nothing is allocated.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmrag_jax.model import ModelInputs, Qwen25VLConfig, VisionIndex, abstract_model, preset
from mmrag_jax.model.qwen25vl import map_input_arrays
from mmrag_jax.model.vision_index import max_frame_patches
from mmrag_jax.parallel import DEFAULT_RULES, batch_shards, decode_rules, logical_sharding, make_mesh, param_shardings
from mmrag_jax.recipe.settings import batch_pixel_rows, sampling_method, settings
from mmrag_jax.rl import update
from mmrag_jax.rl.batch import TrainBatch
from mmrag_jax.rl.policy import QwenLogprobs, runs_prompts_once

__all__ = [
    "PROGRAM_FAMILIES", "PlanSetup", "Program", "UpdateGeometry", "abstract_train_batch", "build_setup", "model_config",
    "sampler_programs", "update_programs",
]

_MODEL_PRESETS = {"demo": "tiny", "3b": "qwen2.5-vl-3b", "7b": "qwen2.5-vl-7b"}


@dataclasses.dataclass(frozen=True)
class Program:
  """One compiled program of the run.

  in_resident: the resident state entries ('params', 'optimizer', 'accumulators', 'reference') that are
  among its arguments or not live while it runs (the rest stay in HBM beside it). per_update: runs per
  optimizer step (per rollout batch for the sampler). loop_steps: trips of the loop whose body XLA's cost
  analysis counts once (the decode while-loop: one token step per trip). layer_scan: whether it runs the
  decoder layers under their scan, whose body the cost analysis also counts once (`planner.layer_corrected`
  adds the other layers); apply and decode_weights treat the stacked arrays whole. runs_vision: whether it
  runs the vision tower (whose blocks are scanned too).
  """

  name: str
  bucket: str
  fn: Any
  args: tuple[Any, ...]
  in_resident: tuple[str, ...]
  per_update: int
  family: str = "update"
  loop_steps: int = 1
  layer_scan: bool = True
  runs_vision: bool = True


@dataclasses.dataclass(frozen=True)
class UpdateGeometry:
  """Shapes of one GRPO micro-batch: rows N = prompts x G, prompt length Lp, completion length T, pixel rows P;
  `batch_shards`: the ways its rows split over the mesh (`parallel.batch_shards`)."""

  rows: int
  group_size: int
  prompt_length: int
  completion_length: int
  num_patches: int
  micro_batches: int
  batch_shards: int = 1

  @property
  def bucket(self) -> str:
    return f"N{self.rows}xL{self.prompt_length}+{self.completion_length}xP{self.num_patches}"

  @property
  def tokens(self) -> int:
    """Decoder positions one log-prob pass runs: each prompt once for its group, then every row's completion,
    where the prompts split evenly over the shards (`rl.policy.runs_prompts_once`); every row whole elsewhere."""
    if runs_prompts_once(self.rows, self.group_size, self.batch_shards):
      return self.rows // self.group_size * self.prompt_length + self.rows * self.completion_length
    return self.rows * (self.prompt_length + self.completion_length)

  @classmethod
  def of(cls, config: ml_collections.ConfigDict, mesh: Mesh) -> "UpdateGeometry":
    """The largest micro-batch the run builds on `mesh`: the largest length bucket, and the smallest patch
    bucket that holds the most pixel rows its prompts can have (larger buckets serve prediction batches
    only)."""
    return cls(rows=config.train.batch_size, group_size=config.rl.group_size,
               prompt_length=max(config.pipeline.length_buckets), completion_length=config.rl.max_new_tokens,
               num_patches=_patch_bucket(config, config.train.batch_size // config.rl.group_size),
               micro_batches=config.train.micro_batches, batch_shards=batch_shards(mesh))


def _patch_bucket(config: ml_collections.ConfigDict, prompts: int) -> int:
  """The smallest of pipeline.patch_buckets that holds the most pixel rows `prompts` prompts can have (that
  worst case itself without buckets: the pipeline's one bucket then)."""
  rows = batch_pixel_rows(config, prompts)
  buckets = sorted(config.pipeline.patch_buckets) or [rows]
  return next((b for b in buckets if b >= rows), buckets[-1])


def model_config(config: ml_collections.ConfigDict) -> Qwen25VLConfig:
  """The policy's architecture: MODEL.PATH/config.json when it exists, else the preset's (demo = tiny);
  dtypes, remat and the attention chunk from config.model, frame blocks from pipeline.max_pixels (as
  `load_pretrained` in the run)."""
  path = os.path.join(config.model.path or "", "config.json")
  if config.model.path and os.path.isfile(path):
    with open(path) as f:
      base = Qwen25VLConfig.from_hf_dict(json.load(f))
  else:
    base = preset(_MODEL_PRESETS.get(config.preset, "qwen2.5-vl-7b"))
  return base.replace(dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                      remat=bool(config.model.remat),
                      frame_block_size=max_frame_patches(config.pipeline.max_pixels, base.vision),
                      attention_query_chunk=config.model.attention_query_chunk or None)


def _with_shardings(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _abstract_vision_index(model: Qwen25VLConfig, num_patches: int) -> VisionIndex:
  """The `VisionIndex` shapes `prepare_inputs` builds for a patch budget."""
  return VisionIndex.shapes(model.vision, num_patches, model.frame_block_size)


def abstract_train_batch(model: Qwen25VLConfig, geometry: UpdateGeometry, mesh: Mesh) -> TrainBatch:
  """A TrainBatch of ShapeDtypeStructs shaped as `build_train_batch` makes them, on the updater's shardings."""
  g, v = geometry, model.vision
  n, length, t, p = g.rows, g.prompt_length + g.completion_length, g.completion_length, g.num_patches
  i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  merged = p // v.merge_unit
  inputs = ModelInputs(input_ids=i32(n, length), attention_mask=i32(n, length), positions=i32(3, n, length),
                       rope_deltas=i32(n), pixel_values=f32(p, v.patch_dim) if p else None,
                       vision_index=_abstract_vision_index(model, p) if p else None)
  batch = TrainBatch(inputs=inputs, image_slots=i32(g.group_size, merged) if p else None,
                     completion_ids=i32(n, t), completion_mask=jax.ShapeDtypeStruct((n, t), jnp.bool_),
                     sampler_logprobs=f32(n, t), advantages=f32(n), sampling_logprobs=f32(n, t),
                     group_size=g.group_size)
  return _with_shardings(batch, update.train_batch_shardings(batch, mesh))


@dataclasses.dataclass
class PlanSetup:
  """The abstract run: mesh, model graph, parameters and optimizer state (ShapeDtypeStructs, sharded)."""

  config: ml_collections.ConfigDict
  model: Qwen25VLConfig
  mesh: Mesh
  geometry: UpdateGeometry
  graphdef: Any
  params: Any
  param_shardings: Any
  opt_graphdef: Any
  opt_state: Any
  opt_shardings: Any
  freeze: str
  num_params: int
  num_trainable: int

  def model_flops(self) -> float:
    """Model FLOPs of one update (every micro-batch): 6 x the parameters that multiply each position x those
    positions: the decoder layers over the positions the pass runs (`UpdateGeometry.tokens`: each prompt once
    per group, every completion), the LM head over the completion positions it
    runs on, the vision tower over the pixel rows (its merger runs on a quarter of them: counted as whole, a
    <1% overcount). The embedding table is a lookup; attention's score FLOPs and remat's recompute are not
    model FLOPs."""
    g, t = self.geometry, self.model.text
    vision = _count(self.params["visual"])
    layers = _count(self.params["language_model"]["layers"]) + _count(self.params["language_model"]["norm"])
    head = t.hidden_size * t.vocab_size
    per_micro_batch = layers * g.tokens + head * g.rows * g.completion_length + vision * g.num_patches
    return 6.0 * per_micro_batch * g.micro_batches

  def resident(self) -> dict[str, Any]:
    """The state that lives in HBM for the whole run (abstract trees): params, optimizer, gradient
    accumulators (the trainable part) and the KL reference (a copy of the trainable part, when beta > 0)."""
    trainable = update.split_trainable(self.params, self.freeze)[0]
    state = {"params": self.params, "optimizer": self.opt_state, "accumulators": trainable}
    if settings(self.config).grpo.beta > 0:
      state["reference"] = trainable
    return state


def _count(tree: Any) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def build_setup(config: ml_collections.ConfigDict, devices: Any, *, model: Qwen25VLConfig | None = None
                ) -> PlanSetup:
  """Abstract model and optimizer of `config` on a ('data', 'fsdp', 'tensor') mesh of `devices`; `model`
  replaces the config's architecture (`model_config`) when given."""
  model = model_config(config) if model is None else model
  mesh = make_mesh(tuple(config.mesh.shape), devices=list(devices))
  grpo = settings(config).grpo
  graphdef, abstract_state = nnx.split(abstract_model(model))
  shardings = param_shardings(abstract_state, mesh, DEFAULT_RULES)
  params = _with_shardings(abstract_state, shardings)
  freeze = grpo.freeze_vision_tower
  wrt = update.trainable_filter(freeze)
  optimizer = nnx.eval_shape(lambda p: nnx.Optimizer(nnx.merge(graphdef, p), grpo.optimizer(), wrt=wrt),
                             abstract_state)
  opt_graphdef, opt_abstract = nnx.split(optimizer)
  opt_shardings = param_shardings(opt_abstract, mesh, DEFAULT_RULES)
  return PlanSetup(config=config, model=model, mesh=mesh, geometry=UpdateGeometry.of(config, mesh), graphdef=graphdef,
                   params=params, param_shardings=shardings, opt_graphdef=opt_graphdef,
                   opt_state=_with_shardings(opt_abstract, opt_shardings), opt_shardings=opt_shardings,
                   freeze=freeze, num_params=_count(params),
                   num_trainable=_count(update.split_trainable(params, freeze)[0]))


def _scalar(mesh: Mesh, dtype: Any) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((), dtype, sharding=NamedSharding(mesh, PartitionSpec()))


def _logprob_fn(setup: PlanSetup) -> QwenLogprobs:
  grpo = settings(setup.config).grpo
  return QwenLogprobs(grpo.temperature, grpo.logprob_chunk_size)


def update_programs(setup: PlanSetup) -> list[Program]:
  """The GRPO optimizer step: `accumulate` (once per micro-batch) and `apply` (once), as `PolicyUpdater` runs
  them; and the reference log-prob pass (once per micro-batch) when the loss has a KL term."""
  grpo = settings(setup.config).grpo
  frozen_sh = update.FrozenTree.of(setup.param_shardings)
  _, accumulate, logprobs = update.jitted_model_steps(setup.graphdef, grpo.loss_config(), _logprob_fn(setup),
                                                      frozen_sh, setup.freeze)
  apply = update.jitted_apply(setup.graphdef, setup.opt_graphdef, frozen_sh,
                              update.FrozenTree.of(setup.opt_shardings), setup.freeze)
  g = setup.geometry
  batch = abstract_train_batch(setup.model, g, setup.mesh)
  trainable, frozen = update.split_trainable(setup.params, setup.freeze)
  per_token = batch.sampler_logprobs  # [N, T] float32 on the row sharding: old / reference log-probs
  with_kl = grpo.beta > 0
  programs = [
      Program("accumulate", g.bucket, accumulate,
              (setup.params, trainable, batch, per_token, per_token if with_kl else None,
               _scalar(setup.mesh, jnp.bool_)), ("params", "accumulators"), g.micro_batches),
      Program("apply", "all", apply,
              (trainable, frozen, setup.opt_state, trainable, _scalar(setup.mesh, jnp.float32)),
              ("params", "optimizer", "accumulators"), 1, layer_scan=False),
  ]
  if with_kl:
    # The reference's frozen part is the live one (shared), so its arguments are parameter-sized.
    programs.append(Program("reference_logprobs", g.bucket, logprobs, (setup.params, batch),
                            ("params",), g.micro_batches))
  return programs




def _abstract_prompt_inputs(model: Qwen25VLConfig, rows: int, length: int, num_patches: int, mesh: Mesh
                            ) -> ModelInputs:
  """Prompt `ModelInputs` [rows, length] with `num_patches` pixel rows as `place_inputs` shards them."""
  v = model.vision
  i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  merged = num_patches // v.merge_unit
  vision = num_patches > 0
  inputs = ModelInputs(
      input_ids=i32(rows, length), attention_mask=i32(rows, length), positions=i32(3, rows, length),
      rope_deltas=i32(rows),
      pixel_values=jax.ShapeDtypeStruct((num_patches, v.patch_dim), jnp.float32) if vision else None,
      vision_index=_abstract_vision_index(model, num_patches) if vision else None,
      image_scatter=i32(merged) if vision else None)
  return map_input_arrays(inputs, lambda x, names: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=logical_sharding(mesh, names, shape=x.shape)))


def _generation_programs(setup: PlanSetup, *, prompts: int, group_size: int, num_patches: int, new_tokens: int,
                         method: Any, names: tuple[str, str, str], family: str, per_update: int,
                         in_resident: tuple[str, ...]) -> list[Program]:
  """The sampler's own jits for `prompts` prompts x `group_size` samples of `new_tokens` tokens at the largest
  length bucket and `num_patches` pixel rows: the group-shared prefill, the decode weights copy (unless the
  config decodes with the training weights) and the decode loop, named `names` (prefill, weights, decode).
  in_resident: the resident state the prefill does not keep beside it (the decode loop also frees the
  parameters when it reads the copy)."""
  from mmrag_jax.sampling import sampler as sampling
  from mmrag_jax.sampling.decode import DecodeSettings
  from mmrag_jax.sampling.keys import row_keys
  from mmrag_jax.sampling.steps import cache_shardings, prefill_rows

  prompt_length, mesh = max(setup.config.pipeline.length_buckets), setup.mesh
  # As `Sampler.prefill`: filler rows up to a multiple of the devices the rows split over.
  inputs = _abstract_prompt_inputs(setup.model, prefill_rows(prompts, mesh), prompt_length, num_patches, mesh)
  cache_size = prompt_length + new_tokens
  training_weights = setup.config.sampler.decode_weights == "training"
  weight_rules = DEFAULT_RULES if training_weights else decode_rules()
  prefill_jit = _Bound(sampling.jitted_prefill, dict(graphdef=setup.graphdef, cache_size=cache_size,
                                                     group_size=group_size, mesh=mesh, weight_rules=weight_rules,
                                                     prompts=prompts))
  logits, cache = prefill_jit.lower(setup.params, inputs).out_info
  # As the prefill leaves them: the cache in the decode loop's layout, logits rows over the batch axes.
  cache = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), cache,
                       cache_shardings(cache, mesh, weight_rules))
  logits = jax.ShapeDtypeStruct(logits.shape, logits.dtype,
                                sharding=logical_sharding(mesh, ("batch", None), shape=logits.shape))
  c = setup.model
  suppressed = (c.image_token_id, c.video_token_id, c.vision_start_token_id, c.vision_end_token_id)
  settings = DecodeSettings(max_new_tokens=new_tokens, pad_token_id=c.pad_token_id, suppressed_ids=suppressed)
  keys = jax.eval_shape(lambda: row_keys(jax.random.key(0), jnp.arange(prompts), group_size))
  keys = jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=logical_sharding(mesh, ("batch",), shape=keys.shape))
  stop_ids = jax.ShapeDtypeStruct((2,), jnp.int32, sharding=NamedSharding(mesh, PartitionSpec()))
  decode_jit = _Bound(sampling.jitted_decode, dict(graphdef=setup.graphdef, method=method, settings=settings,
                                                   mesh=mesh, weight_rules=weight_rules))
  prefill_name, weights_name, decode_name = names
  programs = [Program(prefill_name, f"B{inputs.input_ids.shape[0]}xL{prompt_length}xP{num_patches}", prefill_jit,
                      (setup.params, inputs), in_resident, per_update, family=family)]
  decode = lambda weights, freed: Program(
      decode_name, f"N{prompts * group_size}xS{cache_size}xT{new_tokens}", decode_jit,
      (weights, logits, cache, keys, stop_ids, None), freed, per_update, family=family, loop_steps=new_tokens,
      runs_vision=False)
  if training_weights:
    return programs + [decode(setup.params, in_resident)]
  # The decode weights: made by the sampler, read by every token step beside the resident parameters, freed
  # after the loop.
  copy_jit = sampling.decode_weights_fn(setup.params, c.compute_dtype, mesh)
  freed = tuple(name for name in in_resident if name != "params")
  return programs + [
      Program(weights_name, "params", copy_jit, (setup.params,), freed, per_update, family=family, layer_scan=False),
      decode(copy_jit.eval_shape(setup.params), freed)]


def sampler_programs(setup: PlanSetup) -> list[Program]:
  """The rollout: the group-shared `prefill` of train.batch_size / G prompts at the largest length and patch
  buckets, and the `decode` loop of rl.max_new_tokens steps over the B * G rows (the sampler's own jits)."""
  g = setup.geometry
  # The gradient accumulators are not live during the rollout.
  return _generation_programs(setup, prompts=g.rows // g.group_size, group_size=g.group_size,
                              num_patches=g.num_patches, new_tokens=g.completion_length,
                              method=sampling_method(setup.config),
                              names=("prefill", "decode_weights", "decode"), family="sampler",
                              per_update=g.micro_batches, in_resident=("params", "accumulators"))


def _predict_programs(setup: PlanSetup) -> list[Program]:
  """Stage-2 prediction after training: greedy generation of predict.max_new_tokens tokens for
  predict.batch_size prompts (one sample each) at the largest length bucket and the smallest patch bucket that
  holds their pixel rows (stage-2 configs only; `predict_prefill`, `predict_weights`, `predict_decode`)."""
  if setup.config.stage != 2:
    return []
  from mmrag_jax.sampling import Greedy

  c = setup.config
  # Inference after training: the optimizer, accumulators and KL reference are not live.
  return _generation_programs(setup, prompts=c.predict.batch_size, group_size=1,
                              num_patches=_patch_bucket(c, c.predict.batch_size),
                              new_tokens=c.predict.max_new_tokens, method=Greedy(),
                              names=("predict_prefill", "predict_weights", "predict_decode"), family="predict",
                              per_update=1, in_resident=("params", "optimizer", "accumulators", "reference"))


@dataclasses.dataclass(frozen=True)
class _Bound:
  """A jitted function with its static keyword arguments bound: `.lower(*args)` like a plain jit."""

  fn: Any
  static: dict[str, Any]

  def lower(self, *args: Any) -> Any:
    if "graphdef" in self.static:
      static = {k: v for k, v in self.static.items() if k != "graphdef"}
      return self.fn.lower(self.static["graphdef"], *args, **static)
    return self.fn.lower(*args, **self.static)


def _scorer_programs(setup: PlanSetup) -> list[Program]:
  """Stage-1 inference: the scorer's P(yes) forward over scorer.batch_size candidates at the largest length
  and patch buckets (stage-1 configs only; the judgment token ids do not change the program's shape)."""
  if setup.config.stage != 1:
    return []
  from mmrag_jax.sampling import scorer

  c, g = setup.config, setup.geometry
  inputs = _abstract_prompt_inputs(setup.model, c.scorer.batch_size, g.prompt_length, g.num_patches, setup.mesh)
  forward = _Bound(scorer.jitted_yes_probability, dict(graphdef=setup.graphdef, yes_token_id=0, no_token_id=1,
                                                       mesh=setup.mesh))
  # Inference after training: only the parameters are live.
  return [Program("scorer", f"B{c.scorer.batch_size}xL{g.prompt_length}xP{g.num_patches}", forward,
                  (setup.params, inputs), ("params", "optimizer", "accumulators", "reference"), 1,
                  family="scorer")]


PROGRAM_FAMILIES = {"update": update_programs, "sampler": sampler_programs, "scorer": _scorer_programs,
                    "predict": _predict_programs}
