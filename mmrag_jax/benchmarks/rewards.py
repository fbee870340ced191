"""Stage-2 reward computation for one GRPO batch of completions: host parse + jitted kernels.

    python -m mmrag_jax.benchmarks.rewards [--quick]

The batch (1,024 completions; 128 with --quick) mixes WebQA questions of every category and
MultimodalQA questions, about one completion in five malformed, each with ~60 words of reasoning and a
short answer drawn from a large random vocabulary so the normalization caches stay cold, as they are
for fresh rollouts. Timed separately: parsing + packing on the host, the jitted kernel (after its
compilation, which is reported on its own), and, side by side, the plain-Python official metric
functions scoring the same answers and evidence lists. Median over several batches, each with new text.
Prints a table, then `RESULT {json}` as the last line.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from mmrag_jax.benchmarks.report import print_result, print_table  # noqa: E402
from mmrag_jax.evaluation import mmqa_metrics, webqa_metrics
from mmrag_jax.rl.rewards import MMQAAnswer, Stage2Reference, Stage2RewardConfig, WebQAAnswer
from mmrag_jax.rl.rewards.batch import pack_stage2
from mmrag_jax.formats.parse import parse_stage2
from mmrag_jax.rl.rewards.stage2 import stage2_reward_kernel

__all__ = ["main"]

_KEYWORDS = {
    "color": ["red", "blue", "white", "green"], "shape": ["round", "square", "oval", "dome"],
    "number": ["2", "three", "12", "forty"], "YesNo": ["yes", "no"],
}
_SEPARATOR = ";"


def _words(rng: np.random.Generator, count: int) -> str:
  # Fresh pseudo-words: every batch misses the normalization caches, like new rollouts do.
  return " ".join("w" + "".join(rng.choice(list("abcdefghij"), size=5)) for _ in range(count))


def _reference(rng: np.random.Generator) -> Stage2Reference:
  num_candidates = int(rng.integers(4, 9))
  gold = tuple(int(n) for n in rng.choice(np.arange(1, num_candidates + 1), size=int(rng.integers(1, 3)),
                                          replace=False))
  if rng.random() < 0.3:
    spans = tuple(_words(rng, int(rng.integers(1, 4))) for _ in range(int(rng.integers(1, 4))))
    return Stage2Reference(num_candidates, gold, MMQAAnswer(spans))
  qcate = str(rng.choice(webqa_metrics.QCATES))
  keyword = str(rng.choice(_KEYWORDS.get(qcate, ["bridge"])))
  target = f"The answer is {keyword} {_words(rng, 8)}"
  return Stage2Reference(num_candidates, gold, WebQAAnswer(target, qcate))


def _completion(rng: np.random.Generator, reference: Stage2Reference) -> str:
  cited = rng.permutation(np.arange(1, reference.num_candidates + 1))[:int(rng.integers(1, 4))]
  evidence = ", ".join(f"[{n}]" for n in cited)
  if isinstance(reference.answer, MMQAAnswer):
    answer = f"{_SEPARATOR} ".join(_words(rng, 2) for _ in range(int(rng.integers(1, 4))))
  else:
    answer = f"It is {rng.choice(_KEYWORDS.get(reference.answer.qcate, ['bridge']))} {_words(rng, 6)}."
  text = f"<think>{_words(rng, 60)}</think>\n<evidence>{evidence}</evidence>\n<answer>{answer}</answer>"
  defect = rng.integers(0, 14)
  if defect == 0:
    text = text[:int(len(text) * rng.uniform(0.3, 0.95))]  # cut at the length limit
  elif defect == 1:
    text = text.replace("[", "[9", 1)  # out-of-range number
  elif defect == 2:
    text += f"<answer>{answer}</answer>"  # repeated answer
  return text


def _make_batch(seed: int, size: int) -> tuple[list[str], list[Stage2Reference]]:
  rng = np.random.default_rng(seed)
  references = [_reference(rng) for _ in range(size)]
  return [_completion(rng, r) for r in references], references


def _score_with_python_metrics(completions: list[str], references: list[Stage2Reference],
                               config: Stage2RewardConfig) -> list[float]:
  """The same rewards from the official metric functions, one completion at a time (the comparison)."""
  totals = []
  for text, reference in zip(completions, references):
    parse = parse_stage2(text, reference.num_candidates, config.think)
    ranking = answer = 0.0
    if parse.cited:
      ranking = webqa_metrics.retrieval_f1(parse.cited, reference.gold_numbers)
    if parse.answer is not None:
      if isinstance(reference.answer, MMQAAnswer):
        answer = mmqa_metrics.list_f1([s.strip() for s in parse.answer.split(_SEPARATOR)],
                                      list(reference.answer.spans))
      else:
        answer = webqa_metrics.webqa_keyword_accuracy(parse.answer, reference.answer.target,
                                                      reference.answer.qcate)
    totals.append(ranking + answer)
  return totals


def _median_ms(samples: list[float]) -> float:
  return 1e3 * statistics.median(samples)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="128 completions, 3 timed batches")
  args = parser.parse_args()
  size, repeats = (128, 3) if args.quick else (1024, 5)
  config = Stage2RewardConfig(mmqa_span_separator=_SEPARATOR)

  webqa_metrics.normalize_text("load the lemmatizer dictionary")  # a one-off, not part of compilation
  completions, references = _make_batch(0, size)
  start = time.perf_counter()
  parses = [parse_stage2(t, r.num_candidates, config.think) for t, r in zip(completions, references)]
  batch = pack_stage2(parses, references, config.mmqa_span_separator)
  jax.block_until_ready(stage2_reward_kernel(batch, config))
  first_call_s = time.perf_counter() - start

  host_s, kernel_s, python_s, malformed = [], [], [], 0
  for seed in range(1, repeats + 1):
    completions, references = _make_batch(seed, size)
    start = time.perf_counter()
    parses = [parse_stage2(t, r.num_candidates, config.think) for t, r in zip(completions, references)]
    batch = pack_stage2(parses, references, config.mmqa_span_separator)
    host_s.append(time.perf_counter() - start)
    start = time.perf_counter()
    jax.block_until_ready(stage2_reward_kernel(batch, config))
    kernel_s.append(time.perf_counter() - start)
    malformed += int(batch.malformed.any(axis=1).sum())
    # The metric functions share the normalization caches: give them text of their own.
    completions, references = _make_batch(1000 + seed, size)
    start = time.perf_counter()
    _score_with_python_metrics(completions, references, config)
    python_s.append(time.perf_counter() - start)

  ours_ms = _median_ms(host_s) + _median_ms(kernel_s)
  rows = [
      ("completions per batch", f"{size}"),
      ("malformed completions (all batches)", f"{malformed} / {size * repeats}"),
      ("array shapes cited / answer tokens", f"{batch.cited.shape} / {batch.pred_token_ids.shape}"),
      ("first call incl. compile [s]", f"{first_call_s:.2f}"),
      ("host parse + pack [ms]", f"{_median_ms(host_s):.1f}"),
      ("jitted kernel [ms]", f"{_median_ms(kernel_s):.2f}"),
      ("total per batch [ms]", f"{ours_ms:.1f}"),
      ("per completion [us]", f"{1e3 * ours_ms / size:.1f}"),
      ("python metric functions, F1 + answer [ms]", f"{_median_ms(python_s):.1f}"),
  ]
  print_table(f"stage-2 rewards on {jax.devices()[0].platform} ({jax.local_device_count()} local devices)", rows, value_width=16)
  print_result({
      "benchmark": "rewards", "completions": size, "host_parse_pack_ms": round(_median_ms(host_s), 2),
      "kernel_ms": round(_median_ms(kernel_s), 3), "total_ms": round(ours_ms, 2),
      "per_completion_us": round(1e3 * ours_ms / size, 2), "first_call_s": round(first_call_s, 2),
      "python_metrics_ms": round(_median_ms(python_s), 2),
      "ratio_total_vs_python_metrics": round(ours_ms / _median_ms(python_s), 3),
  })


if __name__ == "__main__":
  main()
