"""Input-pipeline throughput for stage 1 and stage 2, with 0 and 2 grain workers, vs a tiny-model step.

    python -m mmrag_jax.benchmarks.pipeline [--quick]

Data: a synthetic WebQA (official file format, images 56-112 px) read through `read_webqa`; the offline
tiny tokenizer + Qwen2-VL image processor with max_pixels 112*112. Each configuration builds its pipeline,
takes warm-up batches (1, or 3 per worker: worker start-up and processor loading excluded), then times
`--batches` batches.
Side by side: one jitted training-like step of the tiny model (forward + backward of the summed token
log-probs) on a batch of the same pipeline; median of several runs after compilation. A GRPO step also
samples G completions per prompt, so this step time is a lower bound and the ratio a conservative one.
Prints a table, then `RESULT {json}` as the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from typing import Any, Callable

import grain

from mmrag_jax.benchmarks.report import print_result
from mmrag_jax.data import read_webqa
from mmrag_jax.data.batching import PipelineBatch
from mmrag_jax.data.pipeline import PipelineConfig, stage1_pipeline, stage2_pipeline
from mmrag_jax.data.synthetic import generate_webqa
from mmrag_jax.processing import build_tiny_processor_dir

__all__ = ["main"]

_K = 5


def _time_pipeline(dataset: grain.IterDataset, num_batches: int, warmup: int) -> tuple[float, PipelineBatch]:
  """Seconds for `num_batches` batches after `warmup` batches; also returns the first batch."""
  iterator = iter(dataset)
  try:
    first = next(iterator)
    for _ in range(warmup - 1):
      next(iterator)
    start = time.perf_counter()
    for _ in range(num_batches):
      next(iterator)
    return time.perf_counter() - start, first
  finally:
    if hasattr(iterator, "close"):
      iterator.close()


def _tiny_step_seconds(batch: PipelineBatch, repeats: int) -> tuple[float, float]:
  """(compile seconds, median step seconds) of jitted forward + backward of the tiny model on `batch`."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from mmrag_jax.model.config import tiny
  from mmrag_jax.model.logprobs import chunked_logprobs
  from mmrag_jax.model.qwen25vl import Qwen25VL

  config = tiny()
  model = Qwen25VL(config, rngs=nnx.Rngs(0))
  inputs = batch.prompts.model_inputs(config)
  inputs = jax.tree.map(jnp.asarray, inputs)
  targets = jnp.roll(inputs.input_ids, -1, axis=1)

  @nnx.jit
  def step(model, inputs, targets):
    def loss(model):
      logprobs, _ = chunked_logprobs(model.hidden_states(inputs), model.head_weight(), targets)
      return logprobs.sum()
    return nnx.value_and_grad(loss)(model)

  start = time.perf_counter()
  jax.block_until_ready(step(model, inputs, targets))
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(model, inputs, targets))
    times.append(time.perf_counter() - start)
  return compile_s, statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="smaller dataset, fewer batches")
  parser.add_argument("--batches", type=int, default=None, help="timed batches per configuration")
  args = parser.parse_args()
  num_questions = 48 if args.quick else 200
  num_batches = args.batches or (6 if args.quick else 25)

  work = tempfile.mkdtemp(prefix="pipeline_bench_")
  generate_webqa(f"{work}/webqa", num_train=num_questions, num_val=2, num_test=2, seed=0)
  build_tiny_processor_dir(f"{work}/processor")
  data = read_webqa(f"{work}/webqa", "train", image_check="decode", verbose=False)
  base = PipelineConfig(processor_path=f"{work}/processor", min_pixels=56 * 56, max_pixels=112 * 112,
                        batch_size=8, length_buckets=(256, 512, 1024), seed=0)

  builders: dict[str, Callable[[PipelineConfig], Any]] = {
      "stage1": lambda c: stage1_pipeline(data.questions, data.images, c, negatives_per_positive=1.0),
      "stage2": lambda c: stage2_pipeline(data.questions, data.images, c, k=_K),
  }
  results: dict[str, float] = {}
  first_batches = {}
  rows = []
  for stage, build in builders.items():
    for workers in (0, 2):
      config = dataclasses.replace(base, worker_count=workers)
      # Every worker must have started (imports, processor) before the clock runs.
      seconds, first = _time_pipeline(build(config), num_batches, warmup=max(1, 3 * workers))
      first_batches.setdefault(stage, first)
      rate = num_batches * config.batch_size / seconds
      results[f"{stage}_examples_per_s_workers{workers}"] = round(rate, 1)
      rows.append((stage, workers, num_batches, seconds / num_batches * 1e3, rate))

  step_rows = []
  for stage, batch in first_batches.items():
    compile_s, step_s = _tiny_step_seconds(batch, repeats=3 if args.quick else 7)
    rate = base.batch_size / step_s
    results[f"{stage}_tiny_step_examples_per_s"] = round(rate, 1)
    best_pipeline = max(results[f"{stage}_examples_per_s_workers{w}"] for w in (0, 2))
    results[f"{stage}_pipeline_over_step"] = round(best_pipeline / rate, 2)
    step_rows.append((stage, tuple(batch.prompts.input_ids.shape), batch.prompts.patch_rows, compile_s,
                      step_s * 1e3, rate))

  print(f"{'pipeline':<8} {'workers':>7} {'batches':>7} {'ms/batch':>9} {'examples/s':>11}")
  for stage, workers, n, ms, rate in rows:
    print(f"{stage:<8} {workers:>7d} {n:>7d} {ms:>9.1f} {rate:>11.1f}")
  print()
  print(f"{'tiny step':<9} {'ids [B, L]':>11} {'patches':>8} {'compile s':>10} {'ms/step':>8} {'examples/s':>11}")
  for stage, shape, patches, compile_s, ms, rate in step_rows:
    print(f"{stage:<9} {str(shape):>11} {patches:>8d} {compile_s:>10.1f} {ms:>8.1f} {rate:>11.1f}")
  print()
  for stage in builders:
    print(f"{stage}: the best pipeline delivers {results[f'{stage}_pipeline_over_step']:.2f}x the examples a "
          "tiny-model forward+backward step consumes")
  print_result(results)


if __name__ == "__main__":
  main()
