"""Rollout engine benchmark: our jitted sampler vs transformers `generate`, prefix sharing, stage-1 scorer.

    python -m mmrag_jax.benchmarks.sampler [--quick]

One random Qwen2.5-VL (transformers, saved and re-loaded through `load_pretrained`) serves every
measurement, all taken in the same run. Compilation and first calls are warm-up, never timed; each
figure is the median of several runs.

  decode      B prompts (text around one small image), T greedy tokens, no stop ids. Our `Sampler` vs
              `generate(do_sample=False)`. Decode time = generate time - prefill time on each side
              (transformers' prefill = one forward of the prompts with `use_cache=True`). On CPU our
              sampler decodes from a packed copy of the weights made once per parameter version (at
              the warm-up call here, as in any loop of `generate` calls between parameter updates);
              its cost is reported on its own row, and so is the step's floor on this machine: the
              step's matrix products alone (`_weight_stream`), which read every weight once.
  prefix      one long multimodal prompt (several images), G = 8 samples: `Sampler.prefill` with the
              prefix shared (one prompt prefilled, cache repeated) vs not (G copies prefilled). The
              vision tower's full-attention blocks are dense over a batch's whole patch budget, so G copies
              of the images cost more than G times one copy: the ratio can exceed G.
  scorer      N stage-1 candidates (text + one image each): `Scorer` (one forward per candidate) vs
              generating the judgment with the greedy sampler: 8 tokens, about what
              `<answer>yes</answer><|im_end|>` takes in Qwen's tokenizer.
  bandwidth   on GPU / TPU only: decode bytes per step (parameters + KV cache read once) over the measured
              step time, against `--hbm_gbps` (default: the device's published HBM bandwidth).

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

from mmrag_jax.benchmarks.report import print_result, print_table  # noqa: E402
from mmrag_jax.model import Qwen25VLConfig, TextConfig, VisionConfig, load_pretrained, tiny  # noqa: E402
from mmrag_jax.model.synthetic_batch import random_processor_batch  # noqa: E402
from mmrag_jax.sampling import Greedy, Sampler, SamplerConfig, Scorer, ScorerConfig, prompt_batch  # noqa: E402
from mmrag_jax.sampling.host_batch import select_rows  # noqa: E402
from mmrag_jax.sampling.packed_decoder import PackedDecoder, matvec, pack_decoder  # noqa: E402

__all__ = ["main"]

_GROUP = 8
_pack_decoder_jit = nnx.jit(pack_decoder)
# Published HBM bandwidths (GB/s) by device kind substring, for the decode roofline.
_HBM_GBPS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0, "L4": 300.0, "v5e": 819.0, "v5p": 2765.0,
             "v4": 1228.0, "v6": 1640.0}


@dataclasses.dataclass(frozen=True)
class _Workload:
  config: Qwen25VLConfig
  decode_batch: int
  decode_prompt_tokens: int
  decode_steps: int
  prefix_text_tokens: int
  prefix_images: int
  candidates: int
  candidate_tokens: int
  judgment_tokens: int
  runs: int


def _workload(quick: bool) -> _Workload:
  """Small random models (tiny preset's special ids; text ids are drawn below them)."""
  if quick:
    text = TextConfig(vocab_size=2048, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, mrope_section=(4, 6, 6))
    vision = VisionConfig(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128,
                          fullatt_block_indexes=(1,))
    return _Workload(tiny().replace(text=text, vision=vision), decode_batch=4, decode_prompt_tokens=32,
                     decode_steps=16, prefix_text_tokens=128, prefix_images=2, candidates=16, candidate_tokens=32,
                     judgment_tokens=8, runs=3)
  text = TextConfig(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=2, head_dim=64, mrope_section=(8, 12, 12))
  vision = VisionConfig(depth=4, hidden_size=256, intermediate_size=512, num_heads=4, out_hidden_size=512,
                        fullatt_block_indexes=(1, 3))
  return _Workload(tiny().replace(text=text, vision=vision), decode_batch=8, decode_prompt_tokens=64,
                   decode_steps=64, prefix_text_tokens=512, prefix_images=4, candidates=64, candidate_tokens=96,
                   judgment_tokens=8, runs=5)


def _layout_batch(config: Qwen25VLConfig, rows: int, text_tokens: int, images: int, grid: tuple[int, int, int],
                  seed: int) -> dict[str, np.ndarray]:
  """`rows` prompts, each: text, then `images` images of patch grid `grid` between text runs (no padding)."""
  runs = [len(chunk) for chunk in np.array_split(np.arange(text_tokens), images + 1)]
  layout = [runs[0]] + [part for run in runs[1:] for part in (grid, run)]
  return random_processor_batch([layout] * rows, config, seed=seed)


def _median_seconds(fns: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
  """Median wall time of each function; runs are interleaved so that load drifts hit all sides alike."""
  for fn in fns.values():
    fn()  # warm-up: compilation / first call
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(runs):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(values) for name, values in times.items()}


def _torch_inputs(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
  return {k: torch.from_numpy(v) for k, v in batch.items()}


def _bench_decode(work: _Workload, model, hf_model) -> dict[str, float]:
  batch = _layout_batch(work.config, work.decode_batch, work.decode_prompt_tokens, 1, (1, 4, 4), seed=1)
  prompts = prompt_batch(batch, work.config)  # the batch's own length and patch count: no padding work
  length = prompts.length
  sampler = Sampler(model, SamplerConfig(max_new_tokens=work.decode_steps, method=Greedy(), stop_ids=()))
  key = jax.random.key(0)
  ours = sampler.generate(prompts, key)

  c = work.config
  generation_config = transformers.GenerationConfig(
      do_sample=False, max_new_tokens=work.decode_steps, min_new_tokens=work.decode_steps, eos_token_id=None,
      pad_token_id=c.pad_token_id, temperature=None, top_k=None, top_p=None, repetition_penalty=None,
      suppress_tokens=[c.image_token_id, c.video_token_id, c.vision_start_token_id, c.vision_end_token_id])
  inputs = _torch_inputs(batch)

  def hf_generate() -> np.ndarray:
    with torch.inference_mode():
      return hf_model.generate(**inputs, generation_config=generation_config).numpy()

  def hf_prefill() -> None:
    with torch.inference_mode():
      hf_model(**inputs, use_cache=True)

  reference = hf_generate()[:, length:]
  seconds = _median_seconds({
      "ours_total": lambda: sampler.generate(prompts, key),
      "ours_prefill": lambda: jax.block_until_ready(sampler.prefill(prompts, 1)),
      "hf_total": hf_generate,
      "hf_prefill": hf_prefill,
  }, work.runs)
  ours_total, ours_prefill, hf_total, hf_prefill_s = (
      seconds[k] for k in ("ours_total", "ours_prefill", "hf_total", "hf_prefill"))
  packing_s = floor_s = None
  packed = sampler.packed_decoder()
  if packed is not None:  # timed apart: interleaved, the fresh copy slows the run after it
    packing_s = _median_seconds({"pack": lambda: jax.block_until_ready(_pack_decoder_jit(model))}, work.runs)["pack"]
    columns = jax.numpy.ones((work.config.text.hidden_size, work.decode_batch), packed.head[0].dtype)
    floor_s = _median_seconds({"floor": lambda: jax.block_until_ready(_weight_stream(packed, columns))},
                              10 * work.runs)["floor"]
  tokens = work.decode_batch * work.decode_steps
  ours_decode, hf_decode = ours_total - ours_prefill, hf_total - hf_prefill_s
  return {
      "tokens": tokens, "ours_total_s": ours_total, "ours_prefill_s": ours_prefill, "hf_total_s": hf_total,
      "hf_prefill_s": hf_prefill_s, "ours_decode_tps": tokens / ours_decode, "hf_decode_tps": tokens / hf_decode,
      "ours_step_s": ours_decode / work.decode_steps, "hf_step_s": hf_decode / work.decode_steps,
      "ours_packing_s": packing_s, "floor_step_s": floor_s, "prompt_length": length,
      "token_agreement": float(np.mean(ours.tokens == reference)),
  }


@jax.jit
def _weight_stream(packed: PackedDecoder, columns: jax.Array) -> jax.Array:
  """The decode step's matrix products alone, in its order: columns [D, N] through every packed matrix.

  Each product feeds the next (as in the step), with no norms, rotary, attention or sampling: the time
  is this machine's floor for one decode step that reads every weight once.
  """
  hidden = columns
  for layer in packed.layers:
    qkv = matvec(layer.qkv, hidden)
    hidden = hidden + matvec(layer.out, qkv[:layer.out[0].shape[1]])
    gate_up = matvec(layer.gate_up, hidden)
    width = layer.down[0].shape[1]
    hidden = hidden + matvec(layer.down, gate_up[:width] * gate_up[width:])
  return matvec(packed.head, hidden)


def _bench_prefix(work: _Workload, model) -> dict[str, float]:
  prompts = prompt_batch(_layout_batch(work.config, 1, work.prefix_text_tokens, work.prefix_images, (1, 16, 16),
                                       seed=2), work.config)
  prefills = {}
  for share in (True, False):
    sampler = Sampler(model, SamplerConfig(max_new_tokens=32, share_prefix=share))
    prefills["shared" if share else "separate"] = lambda s=sampler: jax.block_until_ready(s.prefill(prompts, _GROUP))
  seconds = _median_seconds(prefills, work.runs)
  return {"prompt_length": prompts.length, "shared_s": seconds["shared"],
          "separate_s": seconds["separate"]}


def _bench_scorer(work: _Workload, model) -> dict[str, float]:
  batch = _layout_batch(work.config, work.candidates, work.candidate_tokens, 1, (1, 8, 8), seed=3)
  length, size = batch["input_ids"].shape[1], 16
  prompts = prompt_batch(batch, work.config)
  scorer = Scorer(model, yes_token_id=10, no_token_id=11, config=ScorerConfig(batch_size=size))
  generator = Sampler(model, SamplerConfig(max_new_tokens=work.judgment_tokens, method=Greedy(), stop_ids=()))
  key = jax.random.key(0)
  chunks = [prompt_batch(select_rows(batch, np.arange(start, start + size), work.config), work.config)
            for start in range(0, work.candidates, size)]

  def generate_judgments() -> None:  # in chunks of the scorer's batch size, split the same way
    for chunk in chunks:
      generator.generate(chunk, key)

  seconds = _median_seconds({"scorer": lambda: scorer(prompts), "generation": generate_judgments}, work.runs)
  return {"candidates": work.candidates, "scorer_s": seconds["scorer"], "generation_s": seconds["generation"],
          "prompt_length": length}


def _decode_roofline(model, decode: dict[str, float], work: _Workload, hbm_gbps: float | None
                     ) -> dict[str, float] | None:
  """Bytes one decode step must read (all parameters + the KV cache) and the bandwidth it achieved."""
  if jax.default_backend() == "cpu":
    return None
  device = jax.devices()[0].device_kind
  if hbm_gbps is None:
    hbm_gbps = next((v for name, v in _HBM_GBPS.items() if name.lower() in device.lower()), None)
  params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  t = work.config.text
  cache_slots = decode["prompt_length"] + work.decode_steps
  kv_bytes = 2 * t.num_hidden_layers * work.decode_batch * cache_slots * t.num_key_value_heads * t.head_dim * 4
  achieved = (params + kv_bytes) / decode["ours_step_s"] / 1e9
  return {"device": device, "bytes_per_step": params + kv_bytes, "achieved_gbps": achieved,
          "hbm_gbps": hbm_gbps, "fraction_of_hbm": achieved / hbm_gbps if hbm_gbps else None}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="a smaller model and workload (seconds, for CI)")
  parser.add_argument("--hbm_gbps", type=float, default=None, help="accelerator HBM bandwidth in GB/s")
  args = parser.parse_args()
  work = _workload(args.quick)
  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)  # XLA's CPU client uses every core the process may run on

  hf = work.config.to_hf_dict()
  for d in (hf, hf["text_config"], hf["vision_config"]):
    d["initializer_range"] = 0.1  # logits far enough apart that greedy ties are rare
  torch.manual_seed(0)
  hf_model = transformers.Qwen2_5_VLForConditionalGeneration(transformers.Qwen2_5_VLConfig(**hf)).eval()
  with tempfile.TemporaryDirectory() as directory:
    hf_model.save_pretrained(directory)
    model = load_pretrained(directory)

  decode = _bench_decode(work, model, hf_model)
  prefix = _bench_prefix(work, model)
  scorer = _bench_scorer(work, model)
  roofline = _decode_roofline(model, decode, work, args.hbm_gbps)

  decode_speedup = decode["ours_decode_tps"] / decode["hf_decode_tps"]
  generate_speedup = decode["hf_total_s"] / decode["ours_total_s"]
  prefix_speedup = prefix["separate_s"] / prefix["shared_s"]
  scorer_speedup = scorer["generation_s"] / scorer["scorer_s"]
  t, v = work.config.text, work.config.vision
  rows = [
      ("model", f"text {t.num_hidden_layers}x{t.hidden_size} (heads {t.num_attention_heads}/"
                f"{t.num_key_value_heads}), vision {v.depth}x{v.hidden_size}, vocab {t.vocab_size}"),
      ("device", f"jax {jax.default_backend()} / torch cpu, {threads} threads"),
      ("decode workload", f"{work.decode_batch} prompts x {decode['prompt_length']} tokens, "
                          f"{work.decode_steps} greedy tokens each"),
      ("  ours: generate / prefill (ms)", f"{decode['ours_total_s'] * 1e3:.1f} / {decode['ours_prefill_s'] * 1e3:.1f}"),
      ("  transformers: generate / prefill (ms)", f"{decode['hf_total_s'] * 1e3:.1f} / "
                                                  f"{decode['hf_prefill_s'] * 1e3:.1f}"),
      ("  decode tokens/s: ours / transformers", f"{decode['ours_decode_tps']:.0f} / {decode['hf_decode_tps']:.0f}"),
      ("  decode ms per step: ours / transformers", f"{decode['ours_step_s'] * 1e3:.2f} / "
                                                   f"{decode['hf_step_s'] * 1e3:.2f}"),
      ("  decode speedup (generate speedup)", f"{decode_speedup:.2f}x ({generate_speedup:.2f}x)"),
      ("  greedy tokens equal to transformers", f"{decode['token_agreement'] * 100:.1f}%"),
      ("  decode step floor: the step's matrix products alone (ms)",
       "n/a" if decode["floor_step_s"] is None else f"{decode['floor_step_s'] * 1e3:.2f}"),
      ("  weight packing, once per parameter version (ms)",
       "n/a" if decode["ours_packing_s"] is None else f"{decode['ours_packing_s'] * 1e3:.1f}"),
      ("prefix workload", f"1 prompt x {prefix['prompt_length']} tokens ({work.prefix_images} images), G={_GROUP}"),
      ("  prefill shared / separate (ms)", f"{prefix['shared_s'] * 1e3:.1f} / {prefix['separate_s'] * 1e3:.1f}"),
      ("  prefix sharing speedup", f"{prefix_speedup:.2f}x"),
      ("scorer workload", f"{scorer['candidates']} candidates x {scorer['prompt_length']} tokens, 1 image each"),
      ("  candidates/s: scorer / generation", f"{scorer['candidates'] / scorer['scorer_s']:.1f} / "
                                              f"{scorer['candidates'] / scorer['generation_s']:.1f} "
                                              f"({work.judgment_tokens} judgment tokens)"),
      ("  scorer speedup", f"{scorer_speedup:.2f}x"),
  ]
  if roofline:
    fraction = roofline["fraction_of_hbm"]
    rows.append(("decode vs HBM bandwidth", f"{roofline['achieved_gbps']:.0f} GB/s of {roofline['hbm_gbps']} GB/s "
                 f"({'n/a' if fraction is None else f'{fraction * 100:.1f}%'}) on {roofline['device']}"))
  print_table(f"Sampler benchmark ({work.runs} timed runs each, medians)", rows)
  print_result({
      "decode_speedup_vs_transformers": round(decode_speedup, 3),
      "generate_speedup_vs_transformers": round(generate_speedup, 3),
      "prefix_sharing_prefill_speedup": round(prefix_speedup, 3),
      "scorer_speedup_vs_generation": round(scorer_speedup, 3),
      "decode_tokens_per_s": round(decode["ours_decode_tps"], 1),
      "decode_ms_per_step": round(decode["ours_step_s"] * 1e3, 3),
      "transformers_decode_ms_per_step": round(decode["hf_step_s"] * 1e3, 3),
      "decode_floor_ms_per_step": (None if decode["floor_step_s"] is None
                                   else round(decode["floor_step_s"] * 1e3, 3)),
      "decode_weight_packing_ms": (None if decode["ours_packing_s"] is None
                                   else round(decode["ours_packing_s"] * 1e3, 1)),
      "transformers_decode_tokens_per_s": round(decode["hf_decode_tps"], 1),
      "greedy_token_agreement": decode["token_agreement"],
      "scorer_candidates_per_s": round(scorer["candidates"] / scorer["scorer_s"], 2),
      "decode_fraction_of_hbm": None if roofline is None else roofline["fraction_of_hbm"],
      "quick": args.quick,
  })


if __name__ == "__main__":
  main()
