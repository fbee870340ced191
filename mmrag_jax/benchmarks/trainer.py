"""GRPO trainer benchmark: update throughput and achieved FLOP/s against the machine's own matmul peak,
and the step-time breakdown of a full GRPO iteration.

    python -m mmrag_jax.benchmarks.trainer [--quick] [--dtype bfloat16] [--freeze_vision_tower [MODE]]

All figures come from the same run on the same machine; compilation and first calls are warm-up, never
timed; each figure is the median of several runs.

  matmul peak  a square dense matmul in the compute dtype (the CPU analogue of a datasheet peak).
  update       one optimizer step of `PolicyUpdater` (forward + backward over prompt + completion,
               LM head over the completion, AdamW; beta = 0, so no reference forward) on N = B * G
               sequences of a small random policy.
               Model FLOPs per step = 3 x forward matmul FLOPs (backward = 2 x forward) of the positions
               the pass runs: each prompt once per group (Lp positions, attending over Lp keys), then every
               row's T completion positions (attending over Lp + T keys); decoder projections and MLP at
               each of them, the LM head at the completion positions. XLA's own count (which includes the
               head's recomputation in the backward pass) is shown for reference.
               update_flops_fraction_of_matmul_peak = model FLOPs / step time / matmul peak (MFU).
  iteration    `GRPOTrainer.train_step` with the real sampler, a token reward and a KL reference (beta > 0):
               rollout (sampling + reward + host assembly) / reference / update seconds.
  frozen vision  with --freeze_vision_tower: the same text policy with a 4-block vision tower, one image
               per prompt, one optimizer step per mode in ('none', and 'tower' / 'tower_and_merger'):
               step time, XLA's FLOP count and optimizer-state bytes side by side (ratios to 'none').

On a GPU the default dtype is bfloat16 compute with float32 master weights and optimizer state.
Prints a table, then `RESULT {json}` as the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from mmrag_jax.benchmarks.measure import matmul_peak, median_seconds
from mmrag_jax.benchmarks.report import print_result, print_table
from mmrag_jax.data.batching import PipelineBatch
from mmrag_jax.model import Qwen25VL, Qwen25VLConfig, TextConfig, VisionConfig, tiny
from mmrag_jax.model.synthetic_batch import random_processor_batch
from mmrag_jax.parallel import make_mesh
from mmrag_jax.rl.batch import build_train_batch
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.trainer import GRPOTrainer, TrainerConfig
from mmrag_jax.rl.update import PolicyUpdater, split_trainable
from mmrag_jax.sampling import Categorical, SamplerConfig, prompt_batch

__all__ = ["main"]


@dataclasses.dataclass(frozen=True)
class _Workload:
  config: Qwen25VLConfig
  prompts: int
  group_size: int
  prompt_tokens: int
  completion_tokens: int
  matmul_size: int
  runs: int


def _workload(quick: bool, dtype: str, on_accelerator: bool) -> _Workload:
  """A small random text policy (tiny preset's special ids; text ids drawn below them)."""
  if on_accelerator and not quick:
    text = TextConfig(vocab_size=32768, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                      num_attention_heads=16, num_key_value_heads=4, head_dim=64, mrope_section=(8, 12, 12))
    sizes = dict(prompts=16, group_size=8, prompt_tokens=512, completion_tokens=256, matmul_size=8192, runs=5)
  elif quick:
    text = TextConfig(vocab_size=2048, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, mrope_section=(4, 6, 6))
    sizes = dict(prompts=2, group_size=4, prompt_tokens=32, completion_tokens=16, matmul_size=512, runs=3)
  else:
    text = TextConfig(vocab_size=4096, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, mrope_section=(8, 12, 12))
    sizes = dict(prompts=4, group_size=4, prompt_tokens=96, completion_tokens=32, matmul_size=1024, runs=5)
  vision = VisionConfig(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=text.hidden_size,
                        fullatt_block_indexes=(0,))
  config = tiny().replace(text=text, vision=vision, dtype=dtype, param_dtype="float32")
  return _Workload(config=config, **sizes)


def _model_flops_per_step(work: _Workload) -> float:
  """Model FLOPs of one update (forward + backward = 3 x forward matmul FLOPs), see the module doc."""
  t = work.config.text
  rows, prompt, completion = work.prompts * work.group_size, work.prompt_tokens, work.completion_tokens
  q_dim, kv_dim = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
  per_position = 2 * (t.hidden_size * (2 * q_dim + 2 * kv_dim) + 3 * t.hidden_size * t.intermediate_size)
  attention = lambda keys: 2 * 2 * keys * q_dim  # scores and weighted values against every key position
  prompts = work.prompts * prompt * (per_position + attention(prompt))
  completions = rows * completion * (per_position + attention(prompt + completion))
  decoder = t.num_hidden_layers * (prompts + completions)
  head = rows * completion * 2 * t.hidden_size * t.vocab_size
  return 3.0 * (decoder + head)


def _random_policy(config: Qwen25VLConfig, seed: int = 0) -> Qwen25VL:
  """Host-initialized random weights (N(0, 0.02), unit norms, zero biases): no init compilation."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Qwen25VL(config, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
    if name in ("bias", "weight"):
      return np.full(leaf.shape, 0.0 if name == "bias" else 1.0, leaf.dtype)
    return rng.normal(0.0, 0.02, leaf.shape).astype(leaf.dtype)

  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, abstract))


def _update_batch(work: _Workload):
  rng = np.random.default_rng(1)
  ids = rng.integers(0, 400, (work.prompts, work.prompt_tokens))
  prompts = prompt_batch({"input_ids": ids}, work.config)
  rows = work.prompts * work.group_size
  tokens = rng.integers(0, 400, (rows, work.completion_tokens))
  lengths = np.full(rows, work.completion_tokens)
  batch = build_train_batch(prompts, tokens, lengths, np.full(tokens.shape, -6.0, np.float32),
                            group_size=work.group_size, config=work.config)
  return dataclasses.replace(batch, advantages=rng.normal(size=rows).astype(np.float32))


def _measure_update(work: _Workload, grpo: GRPOConfig, mesh) -> dict[str, float]:
  updater = PolicyUpdater(_random_policy(work.config), grpo, mesh)
  batch = updater.place_batch(_update_batch(work))

  def step() -> None:
    updater.optimizer_update([batch])
    jax.block_until_ready(updater.params)

  start = time.perf_counter()
  step()
  compile_s = time.perf_counter() - start
  return {"compile_s": compile_s, "step_s": median_seconds(step, work.runs), "xla_flops": updater.update_flops(batch)}


def _vision_workload(work: _Workload, on_accelerator: bool) -> tuple[_Workload, tuple[int, int, int]]:
  """The update workload with a 4-block vision tower (one full-attention block, as every 8th of the
  real 32) and the image grid (t, h, w) in patches that each prompt carries."""
  big = on_accelerator and work.prompt_tokens >= 512
  width = 512 if big else 128
  vision = VisionConfig(depth=4, hidden_size=width, intermediate_size=2 * width, num_heads=max(width // 64, 2),
                        out_hidden_size=work.config.text.hidden_size, fullatt_block_indexes=(3,))
  grid = (1, 32, 32) if big else (1, 16, 16)
  return dataclasses.replace(work, config=work.config.replace(vision=vision)), grid


def _image_update_batch(work: _Workload, grid: tuple[int, int, int]):
  """N = B * G rows; each prompt: text, one image of `grid` patches, text (prompt_tokens text ids in all)."""
  text = work.prompt_tokens // 2
  prompts = random_processor_batch([[text, grid, work.prompt_tokens - text]] * work.prompts, work.config, seed=1)
  rng = np.random.default_rng(2)
  rows = work.prompts * work.group_size
  tokens = rng.integers(0, 400, (rows, work.completion_tokens))
  batch = build_train_batch(prompt_batch(prompts, work.config), tokens, np.full(rows, work.completion_tokens),
                            np.full(tokens.shape, -6.0, np.float32), group_size=work.group_size, config=work.config)
  return dataclasses.replace(batch, advantages=rng.normal(size=rows).astype(np.float32))


def _measure_frozen_vision(work: _Workload, grpo: GRPOConfig, mesh, modes: tuple[str, ...], on_accelerator: bool
                           ) -> tuple[dict[str, dict[str, float]], _Workload, tuple[int, int, int]]:
  """mode -> {step_s, xla_flops, opt_state_bytes, trainable_params, params} of one optimizer step on
  an image batch, for 'none' and each of `modes`."""
  vision_work, grid = _vision_workload(work, on_accelerator)
  host_batch = _image_update_batch(vision_work, grid)
  out = {}
  for mode in ("none", *modes):
    updater = PolicyUpdater(_random_policy(vision_work.config), dataclasses.replace(grpo, freeze_vision_tower=mode),
                            mesh)
    batch = updater.place_batch(host_batch)

    def step() -> None:
      updater.optimizer_update([batch])
      jax.block_until_ready(updater.params)

    step()  # compilation
    sizes = lambda tree: [leaf.size for leaf in jax.tree.leaves(tree)]
    out[mode] = {"step_s": median_seconds(step, work.runs), "xla_flops": updater.update_flops(batch),
                 "opt_state_bytes": float(sum(leaf.nbytes for leaf in jax.tree.leaves(updater.opt_state))),
                 "trainable_params": float(sum(sizes(split_trainable(updater.params, mode)[0]))),
                 "params": float(sum(sizes(updater.params)))}
  return out, vision_work, grid


def _frozen_vision_rows(frozen: dict[str, dict[str, float]], work: _Workload, grid: tuple[int, int, int]
                        ) -> list[tuple[str, str]]:
  v = work.config.vision
  rows = [("frozen vision: policy", f"vision {v.depth}x{v.hidden_size} (mlp {v.intermediate_size}), one image of "
                                    f"{grid[1]}x{grid[2]} patches per prompt")]
  base = frozen["none"]
  for mode, m in frozen.items():
    rows.append((f"frozen vision: {mode}",
                 f"step {m['step_s'] * 1e3:.1f} ms ({m['step_s'] / base['step_s']:.3f}x), XLA {m['xla_flops'] / 1e9:.3f} G "
                 f"({m['xla_flops'] / base['xla_flops']:.3f}x), opt state {m['opt_state_bytes'] / 2**20:.2f} MiB "
                 f"({m['opt_state_bytes'] / base['opt_state_bytes']:.3f}x), trains {m['trainable_params']:.0f} "
                 f"of {m['params']:.0f} params"))
  return rows


def _frozen_vision_result(frozen: dict[str, dict[str, float]]) -> dict[str, float]:
  """RESULT entries: per frozen mode (key prefix frozen_tower_ / frozen_tower_and_merger_) the ratios to
  'none' of XLA FLOPs, optimizer-state bytes and step time, and the raw figures of every mode."""
  base, out = frozen["none"], {}
  for mode, m in frozen.items():
    prefix = "unfrozen" if mode == "none" else f"frozen_{mode}"
    if mode != "none":
      out[f"{prefix}_update_flops_ratio"] = round(m["xla_flops"] / base["xla_flops"], 4)
      out[f"{prefix}_opt_state_bytes_ratio"] = round(m["opt_state_bytes"] / base["opt_state_bytes"], 4)
      out[f"{prefix}_step_time_ratio"] = round(m["step_s"] / base["step_s"], 4)
    out[f"{prefix}_update_step_ms"] = round(m["step_s"] * 1e3, 2)
    out[f"{prefix}_xla_gflops_per_step"] = round(m["xla_flops"] / 1e9, 4)
    out[f"{prefix}_opt_state_bytes"] = int(m["opt_state_bytes"])
  return out


def _measure_iteration(work: _Workload, grpo: GRPOConfig, mesh) -> dict[str, float]:
  """Median rollout / reference / update seconds of full GRPO iterations (after one warm-up step)."""
  target = 137

  def reward(completions, metadata):
    return {"total": np.array([float(str(target) in text.split()) for text in completions], np.float32)}

  def prompts():
    rng = np.random.default_rng(2)
    while True:
      ids = rng.integers(0, 400, (work.prompts, work.prompt_tokens)).astype(np.int32)
      yield PipelineBatch(prompts=prompt_batch({"input_ids": ids}, work.config), meta={})

  sampler = SamplerConfig(max_new_tokens=work.completion_tokens, method=Categorical(1.0))
  with tempfile.TemporaryDirectory() as workdir:
    trainer = GRPOTrainer(_random_policy(work.config, seed=1), grpo, sampler,
                          TrainerConfig(num_steps=work.runs + 1, progress_bar=False), mesh=mesh, workdir=workdir,
                          data=prompts(), reward_fn=reward, detokenize=lambda ids: " ".join(map(str, ids)))
    trainer.train_step()  # compilation
    steps = [trainer.train_step() for _ in range(work.runs)]
  keys = ("time/rollout", "time/reference", "time/update", "time/step", "completion_tokens")
  return {k: statistics.median(s[k] for s in steps) for k in keys}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="a smaller policy and batch (seconds, for CI)")
  parser.add_argument("--dtype", default=None, help="compute dtype (default: bfloat16 on GPU/TPU, else float32)")
  parser.add_argument("--freeze_vision_tower", nargs="?", const="both", default=None,
                      choices=("tower", "tower_and_merger", "both"),
                      help="also time an image update with the vision tower frozen against unfrozen "
                           "(without a value: both frozen modes)")
  args = parser.parse_args()
  backend = jax.default_backend()
  on_accelerator = backend in ("gpu", "tpu")
  dtype = args.dtype or ("bfloat16" if on_accelerator else "float32")
  work = _workload(args.quick, dtype, on_accelerator)
  mesh = make_mesh((1, 1, 1), jax.devices()[:1])
  grpo = GRPOConfig(group_size=work.group_size, max_new_tokens=work.completion_tokens, learning_rate=1e-5,
                    beta=0.04)

  peak = matmul_peak(work.matmul_size, dtype, work.runs)
  update = _measure_update(work, dataclasses.replace(grpo, beta=0.0), mesh)  # no reference pass in the step
  iteration = _measure_iteration(work, grpo, mesh)
  frozen = None
  if args.freeze_vision_tower:
    modes = ("tower", "tower_and_merger") if args.freeze_vision_tower == "both" else (args.freeze_vision_tower,)
    frozen, vision_work, grid = _measure_frozen_vision(work, dataclasses.replace(grpo, beta=0.0), mesh, modes,
                                                       on_accelerator)
  flops = _model_flops_per_step(work)
  achieved = flops / update["step_s"]
  rows_per_step = work.prompts * work.group_size
  tokens_per_step = rows_per_step * (work.prompt_tokens + work.completion_tokens)
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  t = work.config.text

  table = [
      ("device", f"{backend}: {jax.devices()[0].device_kind}, compute {dtype}, params/optimizer float32"),
      ("machine load", f"{load:.1f} (1-min average)"),
      ("policy", f"text {t.num_hidden_layers}x{t.hidden_size} (heads {t.num_attention_heads}/"
                 f"{t.num_key_value_heads}, mlp {t.intermediate_size}), vocab {t.vocab_size}"),
      ("update batch", f"{work.prompts} prompts x G={work.group_size}, {work.prompt_tokens} prompt + "
                       f"{work.completion_tokens} completion tokens"),
      ("matmul peak (GFLOP/s)", f"{peak / 1e9:.1f}  ({work.matmul_size}^3, {dtype})"),
      ("update compile (s)", f"{update['compile_s']:.2f}"),
      ("update step (ms, median)", f"{update['step_s'] * 1e3:.1f}"),
      ("update throughput", f"{tokens_per_step / update['step_s']:.0f} tokens/s, "
                            f"{rows_per_step / update['step_s']:.1f} sequences/s"),
      ("model FLOPs / step", f"{flops / 1e9:.2f} G  (XLA count incl. recompute: {update['xla_flops'] / 1e9:.2f} G)"),
      ("achieved (GFLOP/s)", f"{achieved / 1e9:.1f}"),
      ("fraction of matmul peak", f"{achieved / peak:.3f}"),
      ("iteration: rollout (s)", f"{iteration['time/rollout']:.3f}"),
      ("iteration: reference (s)", f"{iteration['time/reference']:.3f}"),
      ("iteration: update (s)", f"{iteration['time/update']:.3f}"),
      ("iteration: total (s)", f"{iteration['time/step']:.3f}  ({iteration['completion_tokens']:.0f} "
                               "completion tokens)"),
  ]
  if frozen is not None:
    table += _frozen_vision_rows(frozen, vision_work, grid)
  print_table(f"GRPO trainer benchmark ({work.runs} timed runs each)", table)
  print_result({
      "update_flops_fraction_of_matmul_peak": round(achieved / peak, 4),
      "matmul_peak_gflops": round(peak / 1e9, 2),
      "update_achieved_gflops": round(achieved / 1e9, 2),
      "update_step_ms": round(update["step_s"] * 1e3, 2),
      "update_tokens_per_s": round(tokens_per_step / update["step_s"], 1),
      "model_gflops_per_step": round(flops / 1e9, 4),
      "xla_gflops_per_step": round(update["xla_flops"] / 1e9, 4),
      "iteration_rollout_s": round(iteration["time/rollout"], 4),
      "iteration_reference_s": round(iteration["time/reference"], 4),
      "iteration_update_s": round(iteration["time/update"], 4),
      "iteration_step_s": round(iteration["time/step"], 4),
      "backend": backend,
      "dtype": dtype,
      "load_average": round(load, 2),
      "quick": args.quick,
      **(_frozen_vision_result(frozen) if frozen is not None else {}),
  })


if __name__ == "__main__":
  main()
