"""Prefill forward of our jitted Flax model vs the transformers torch model, side by side on one machine.

    python -m mmrag_jax.benchmarks.model [--quick]

Both models hold the same random weights (the torch model is saved with `save_pretrained` and loaded
through our `load_pretrained`) and see the same batch: one prompt of a few hundred text tokens around
one image. Compilation and the first torch call are warm-up and not timed; each side reports the
median of several timed runs, the two sides alternating so that both see the same machine load.
torch uses as many threads as the cores XLA's CPU client uses.

  prefill_fraction_of_matmul_peak  the prefill's matmul FLOPs (`measure.prefill_flops`: text decoder,
      attention scores, LM head at every position, vision tower and merger) over its median time, against
      a square float32 matmul timed in the same run (`measure.matmul_peak`).

Prints a table, then `RESULT {json}` as the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from mmrag_jax.benchmarks.measure import matmul_peak, prefill_flops  # noqa: E402
from mmrag_jax.benchmarks.report import print_result, print_table  # noqa: E402
from mmrag_jax.model import (  # noqa: E402
    Qwen25VLConfig,
    TextConfig,
    VisionConfig,
    forward,
    load_pretrained,
    prepare_inputs,
    tiny,
)
from mmrag_jax.model.synthetic_batch import random_processor_batch  # noqa: E402

__all__ = ["main"]


@dataclasses.dataclass(frozen=True)
class _Workload:
  config: Qwen25VLConfig
  text_tokens: int  # split half before, half after the image
  image_grid: tuple[int, int, int]  # (t, h, w) in patches
  runs: int
  matmul_size: int  # of the square matmul that measures the machine's peak


def _workload(quick: bool) -> _Workload:
  """A mid-size model (a few layers, real head_dim / window layout) and one image prompt.

  Special token ids are the tiny preset's (text ids are drawn below them).
  """
  if quick:
    text = TextConfig(vocab_size=4096, hidden_size=256, intermediate_size=704, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, mrope_section=(8, 12, 12))
    vision = VisionConfig(depth=2, hidden_size=256, intermediate_size=512, num_heads=4, out_hidden_size=256,
                          fullatt_block_indexes=(1,))
    return _Workload(tiny().replace(text=text, vision=vision), 96, (1, 8, 8), runs=5, matmul_size=512)
  text = TextConfig(vocab_size=8192, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                    num_attention_heads=16, num_key_value_heads=4, head_dim=64, mrope_section=(8, 12, 12))
  vision = VisionConfig(depth=4, hidden_size=512, intermediate_size=1024, num_heads=8, out_hidden_size=1024,
                        fullatt_block_indexes=(1, 3))
  return _Workload(tiny().replace(text=text, vision=vision), 384, (1, 16, 16), runs=7, matmul_size=1024)


def _prompt_batch(work: _Workload, seed: int = 0) -> dict[str, np.ndarray]:
  """One processor-style row: text, <|vision_start|>, image pads, <|vision_end|>, text."""
  before = work.text_tokens // 2
  return random_processor_batch([[before, work.image_grid, work.text_tokens - before]], work.config, seed=seed)


def _interleaved_medians(fns: list[Callable[[], object]], runs: int) -> list[float]:
  """Median wall seconds of each fn; the fns alternate so both see the same machine load over time."""
  times: list[list[float]] = [[] for _ in fns]
  for _ in range(runs):
    for fn, fn_times in zip(fns, times):
      start = time.perf_counter()
      fn()
      fn_times.append(time.perf_counter() - start)
  return [statistics.median(t) for t in times]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="a smaller model and prompt (seconds, for CI)")
  args = parser.parse_args()
  work = _workload(args.quick)
  threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
  torch.set_num_threads(threads)  # XLA's CPU client uses every core the process may run on

  torch.manual_seed(0)
  hf_config = transformers.Qwen2_5_VLConfig(**work.config.to_hf_dict())
  torch_model = transformers.Qwen2_5_VLForConditionalGeneration(hf_config).eval()
  with tempfile.TemporaryDirectory() as directory:
    torch_model.save_pretrained(directory)
    flax_model = load_pretrained(directory)

  batch = _prompt_batch(work)
  torch_batch = {k: torch.from_numpy(v) for k, v in batch.items()}
  graphdef, state = nnx.split(flax_model)
  # The functional form (split once, jit over the state) keeps per-call Python work to a minimum.
  jitted = jax.jit(lambda state, inputs: forward(nnx.merge(graphdef, state), inputs))

  # Both sides start from the processor batch: our host-side index math (positions, vision windows)
  # is timed too, as transformers computes its equivalent inside the forward.
  def run_jax() -> jax.Array:
    return jax.block_until_ready(jitted(state, prepare_inputs(batch, work.config)))

  def run_torch() -> torch.Tensor:
    with torch.inference_mode():
      return torch_model(**torch_batch).logits

  def run_torch_one_thread() -> torch.Tensor:
    # On a busy machine torch's multi-threaded kernels can be far slower than one thread: report both.
    torch.set_num_threads(1)
    try:
      return run_torch()
    finally:
      torch.set_num_threads(threads)

  def run_host_prep() -> object:
    return prepare_inputs(batch, work.config)

  start = time.perf_counter()
  ours = np.asarray(run_jax())
  compile_s = time.perf_counter() - start
  reference = run_torch().numpy()
  max_diff = float(np.abs(ours - reference).max())
  run_torch_one_thread()
  jax_s, torch_s, torch1_s, prep_s = _interleaved_medians(
      [run_jax, run_torch, run_torch_one_thread, run_host_prep], work.runs)
  peak = matmul_peak(work.matmul_size, "float32", work.runs)
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

  tokens = int(batch["input_ids"].shape[1])
  flops = prefill_flops(work.config, tokens, work.image_grid)
  t, c = work.config.text, work.config.vision
  rows = [
      ("model", f"text {t.num_hidden_layers}x{t.hidden_size} (heads {t.num_attention_heads}/"
                f"{t.num_key_value_heads}), vision {c.depth}x{c.hidden_size}, vocab {t.vocab_size}"),
      ("prompt", f"{tokens} tokens incl. {tokens - work.text_tokens - 2} image tokens, grid {work.image_grid}"),
      ("device", f"jax {jax.default_backend()} / torch cpu, {threads} threads each"),
      ("machine load", f"{load:.1f} (1-min average)" + ("  BUSY: timings are contended" if load > threads else "")),
      ("jax compile (s)", f"{compile_s:.2f}"),
      ("jax prefill (ms, median)", f"{jax_s * 1e3:.1f}  (of which host input prep {prep_s * 1e3:.1f})"),
      ("torch prefill (ms, median)", f"{torch_s * 1e3:.1f}  ({hf_config.text_config._attn_implementation} "
                                     "attention, inference_mode)"),
      ("torch prefill, 1 thread (ms)", f"{torch1_s * 1e3:.1f}"),
      ("speedup vs transformers", f"{torch_s / jax_s:.2f}x  (vs its faster setting: "
                                  f"{min(torch_s, torch1_s) / jax_s:.2f}x)"),
      ("matmul peak (GFLOP/s)", f"{peak / 1e9:.1f}  ({work.matmul_size}^3, float32)"),
      ("prefill FLOP/s", f"{flops / 1e9:.2f} GFLOP: ours {flops / jax_s / 1e9:.1f} GFLOP/s "
                         f"({flops / jax_s / peak:.2f} of peak), torch {flops / torch_s / 1e9:.1f} "
                         f"({flops / torch_s / peak:.2f})"),
      ("max |logit diff|", f"{max_diff:.2e}"),
  ]
  print_table(f"Prefill forward benchmark ({work.runs} timed runs each)", rows)
  print_result({
      "speedup_vs_transformers": round(torch_s / jax_s, 3),
      "jax_ms": round(jax_s * 1e3, 2),
      "torch_ms": round(torch_s * 1e3, 2),
      "speedup_vs_transformers_fastest_setting": round(min(torch_s, torch1_s) / jax_s, 3),
      "prefill_fraction_of_matmul_peak": round(flops / jax_s / peak, 4),
      "torch_fraction_of_matmul_peak": round(flops / torch_s / peak, 4),
      "matmul_peak_gflops": round(peak / 1e9, 2),
      "prefill_gflops": round(flops / 1e9, 3),
      "torch_1thread_ms": round(torch1_s * 1e3, 2),
      "jax_host_prep_ms": round(prep_s * 1e3, 2),
      "load_average": round(load, 2),
      "tokens": tokens,
      "max_abs_logit_diff": max_diff,
      "quick": args.quick,
  })


if __name__ == "__main__":
  main()
