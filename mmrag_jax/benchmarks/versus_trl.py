"""One GRPO step of ours against Hugging Face TRL's `GRPOTrainer`, side by side on the same work.

    python -m mmrag_jax.benchmarks.versus_trl [--quick | --large] [--steps N] [--core C]

The same work on both sides: one tiny random Qwen2.5-VL saved once with transformers' `save_pretrained`
(float32; text 4 x 256, vision 4 x 128, vocab 512 of our offline tokenizer, ~4.4M parameters) and
loaded by both (ours through `load_pretrained`); the same processor (our tokenizer and PIL image
processor; TRL gets them as an image-only `Qwen2_5_VLProcessor`, the stock one needs torchvision);
4 prompts of ~112 tokens with one or two 56-112 px images (288 patches in all), G = 8 completions of
exactly 48 tokens each (no early stop: our sampler has no stop ids, TRL generates with
`min_new_tokens` = 48), temperature 1 over the full vocabulary with the vision placeholders suppressed,
plain GRPO (beta = 0, eps 0.2, group-scaled advantages), token-mean loss (TRL `loss_type="dapo"`), AdamW
lr 1e-5 at a constant rate, clipping 1.0, no gradient checkpointing, and the same reward (the fraction
of vowels in the completion text). `--quick` is a smaller model and batch (seconds, for CI); `--large`
the same work on a model with every width doubled (text 4 x 512, vision 4 x 256; 16.8M parameters, 3.8x).

One core, one thread: the process is pinned to one core (`--core`, default the last it may use)
before XLA starts, so XLA's CPU client sizes its thread pool to it, and torch runs one intra-op and
one inter-op thread. The sides alternate, one step each (ours, TRL, ours, TRL, ...): our steps run
from TRL's `on_step_end` callback, outside TRL's timed span, so load drifts hit both alike.

Timed spans, per step:
  ours     step: `GRPOTrainer.train_step` end to end; rollout: its `time/rollout` (processing the
           prompts' text and images, prefill and the jitted decode loop, decoding, rewards, advantages,
           assembling and placing the train batch); update: its `time/update` (forward + backward over
           prompt and completion, LM head over the completion, clipping, AdamW; no reference pass).
  TRL      see `trl_peer.py`: step is `on_step_begin` -> `on_step_end`, rollout is
           `_generate_and_score_completions`, update is the rest (loss forward, backward, clipping, AdamW).
  first    each side's first step (our compilations; TRL's first-call warm-up), reported apart; the
           next `--warmup` steps are not timed; the rest give min / median / max.
Speedups are TRL time / our time (> 1: we are faster). Prints a table, then `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402

from mmrag_jax.benchmarks import trl_peer  # noqa: E402
from mmrag_jax.benchmarks.report import print_result, print_table  # noqa: E402
from mmrag_jax.model import Qwen25VLConfig, TextConfig, VisionConfig, tiny  # noqa: E402
from mmrag_jax.processing import QwenVLProcessor  # noqa: E402

__all__ = [
    "Comparison", "OurSide", "OurStep", "Workload", "main", "make_prompts", "processor_inputs", "save_checkpoint",
    "summary", "vowel_fraction", "workload",
]

# Words the prompts are made of (each prompt draws its own sequence of them).
_WORDS = ("the image shows a red bridge over river document names city tower caption museum question answer "
          "which building picture people standing front house old harbour town lighthouse white cat wooden "
          "table window mountain snow winter green grass summer").split()


@dataclasses.dataclass(frozen=True)
class Workload:
  """The shared work. images: per prompt, (height, width) in pixels of each image; prompt_tokens: each
  prompt's length in tokens (chat template and image pads included) is the first text length >= it."""

  config: Qwen25VLConfig
  images: tuple[tuple[tuple[int, int], ...], ...]
  prompt_tokens: int
  group_size: int
  new_tokens: int
  steps: int
  warmup: int

  @property
  def prompts(self) -> int:
    return len(self.images)

  @property
  def parameters(self) -> int:
    import jax  # not at import time: the process pins itself to one core before XLA starts
    from flax import nnx

    from mmrag_jax.model.qwen25vl import abstract_model

    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract_model(self.config))))


def workload(quick: bool, steps: int | None = None, warmup: int | None = None, large: bool = False) -> Workload:
  """The issue's size (~4.4M parameters, 4 prompts x G = 8 x 48 tokens, 288 patches), or a quick one, or
  (large) the same work on a model with every width doubled (16.8M parameters, 3.8x)."""
  if quick and large:
    raise ValueError("--quick and --large are different sizes: pick one")
  if quick:
    text = TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, mrope_section=(2, 3, 3),
                      tie_word_embeddings=False)
    vision = VisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                          window_size=112, fullatt_block_indexes=(1,))
    images, sizes = (((56, 56),), ((56, 84), (56, 56))), dict(prompt_tokens=48, group_size=4, new_tokens=8)
    default_steps, default_warmup = 2, 1
  else:
    text = TextConfig(vocab_size=512, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, mrope_section=(8, 12, 12),
                      tie_word_embeddings=False)
    vision = VisionConfig(depth=4, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256,
                          window_size=112, fullatt_block_indexes=(1, 3))
    # 64 + 80 + 64 + 80 = 288 patches of 14 x 14 px.
    images = (((112, 112),), ((112, 112), (56, 56)), ((112, 112),), ((84, 112), (56, 112)))
    sizes = dict(prompt_tokens=112, group_size=8, new_tokens=48)
    default_steps, default_warmup = 5, 1
    if large:  # widths doubled, depth, heads' count and vocabulary kept
      text = dataclasses.replace(text, hidden_size=512, intermediate_size=1408, head_dim=128,
                                 mrope_section=(16, 24, 24))
      vision = dataclasses.replace(vision, hidden_size=256, intermediate_size=512, out_hidden_size=512)
  config = tiny().replace(text=text, vision=vision, dtype="float32", param_dtype="float32")
  return Workload(config=config, images=images, steps=default_steps if steps is None else steps,
                  warmup=default_warmup if warmup is None else warmup, **sizes)


# -- the shared inputs -------------------------------------------------------------------------------

def vowel_fraction(text: str) -> float:
  """The reward of both sides: the fraction of a completion's characters that are vowels."""
  return sum(c in "aeiouAEIOU" for c in text) / max(len(text), 1)


def _user_turn(text: str, num_images: int) -> list[dict]:
  """The one user message both sides render: the images first, then the text (TRL's layout)."""
  return [{"role": "user", "content": [*([{"type": "image"}] * num_images), {"type": "text", "text": text}]}]


def make_prompts(work: Workload, processor: QwenVLProcessor, seed: int = 0
                 ) -> list[tuple[str, list[PIL.Image.Image]]]:
  """Per prompt, (user text, random RGB images of the workload's sizes), the text grown word by word
  until the rendered prompt (template, vision spans and image pads included) holds `prompt_tokens`."""
  rng = np.random.default_rng(seed)
  prompts = []
  for index, sizes in enumerate(work.images):
    images = [PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    pads = sum(processor.num_image_tokens(h, w) - 1 for h, w in sizes)  # the template writes one pad each
    words = [f"Question {index}:"]
    while True:
      rendered = processor.apply_chat_template(_user_turn(" ".join(words), len(images)))
      if len(processor.tokenizer(rendered)["input_ids"]) + pads >= work.prompt_tokens:
        break
      words.append(str(rng.choice(_WORDS)))
    prompts.append((" ".join(words), images))
  return prompts


def processor_inputs(processor: QwenVLProcessor, prompts: Sequence[tuple[str, Sequence[PIL.Image.Image]]]
                     ) -> dict[str, np.ndarray]:
  """Our processor batch of the prompts: input_ids [B, L] left-padded, pixel_values [N_patches, 1176], ..."""
  texts = [processor.apply_chat_template(_user_turn(text, len(images))) for text, images in prompts]
  return processor(texts, [list(images) for _, images in prompts])


def save_checkpoint(config: Qwen25VLConfig, directory: str, seed: int = 0) -> str:
  """A random Qwen2.5-VL of `config` written by transformers' `save_pretrained`, with our offline
  tokenizer and processor files beside it; returns the directory."""
  import torch
  import transformers

  from mmrag_jax.processing import build_tiny_processor_dir

  torch.manual_seed(seed)
  model = transformers.Qwen2_5_VLForConditionalGeneration(transformers.Qwen2_5_VLConfig(**config.to_hf_dict()))
  model.save_pretrained(directory)
  build_tiny_processor_dir(directory)
  return directory


# -- our side ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class OurStep:
  """One of our steps: seconds of the spans in the module docstring and its completion tokens."""

  step_s: float
  rollout_s: float
  update_s: float
  completion_tokens: int
  prompt_tokens: int


class OurSide:
  """Our `GRPOTrainer` on the checkpoint; each `next(data)` processes the prompts anew (inside the rollout)."""

  def __init__(self, checkpoint_dir: str, processor: QwenVLProcessor, work: Workload,
               prompts: Sequence[tuple[str, Sequence[PIL.Image.Image]]], workdir: str):
    import jax

    from mmrag_jax.model import load_pretrained
    from mmrag_jax.parallel import make_mesh
    from mmrag_jax.rl.config import GRPOConfig
    from mmrag_jax.rl.trainer import GRPOTrainer, TrainerConfig
    from mmrag_jax.data.batching import PipelineBatch
    from mmrag_jax.sampling import Categorical, SamplerConfig, prompt_batch

    first = processor_inputs(processor, prompts)
    grpo = GRPOConfig(group_size=work.group_size, max_new_tokens=work.new_tokens, learning_rate=1e-5,
                      total_steps=10**6, beta=0.0, aggregation="token-mean", max_grad_norm=1.0)
    sampler = SamplerConfig(max_new_tokens=work.new_tokens, method=Categorical(1.0), stop_ids=())

    def data() -> Iterator[PipelineBatch]:  # the prompts' own length and patch count: no padding
      while True:
        yield PipelineBatch(prompts=prompt_batch(processor_inputs(processor, prompts), work.config), meta={})

    def reward_fn(completions, metadata):
      return {"total": np.array([vowel_fraction(text) for text in completions], np.float32)}

    self.first_batch, self.sampler_config = first, sampler
    self.trainer = GRPOTrainer(
        load_pretrained(checkpoint_dir), grpo, sampler,
        TrainerConfig(num_steps=10**6, progress_bar=False, tensorboard=False),
        mesh=make_mesh((1, 1, 1), jax.devices()[:1]), workdir=workdir, data=data(), reward_fn=reward_fn,
        detokenize=lambda ids: processor.decode(ids, skip_special_tokens=True))

  def step(self) -> OurStep:
    start = time.perf_counter()
    metrics = self.trainer.train_step()
    return OurStep(step_s=time.perf_counter() - start, rollout_s=metrics["time/rollout"],
                   update_s=metrics["time/reference"] + metrics["time/update"],
                   completion_tokens=int(metrics["completion_tokens"]), prompt_tokens=int(metrics["prompt_tokens"]))


# -- the comparison ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Comparison:
  """Every step of both sides in order (index 0 is the first step) and the checks of equal work."""

  ours: list[OurStep]
  trl: list[trl_peer.TrlStep]
  work: Workload
  our_prompt_ids: np.ndarray  # [B, L] our first processor batch
  patches: int  # pixel rows (14 x 14 patches) of a step's images
  setup_s: float
  trl_setup_s: float

  def timed(self, side: str, span: str) -> list[float]:
    steps = self.ours if side == "ours" else self.trl
    return [getattr(s, f"{span}_s") for s in steps[1 + self.work.warmup:]]

  def same_prompts(self) -> bool:
    """TRL's prompt rows (each prompt repeated G times) equal our processor batch, padding included."""
    trl_rows = self.trl[0].prompt_ids
    return trl_rows.shape == (len(self.our_prompt_ids) * self.work.group_size, self.our_prompt_ids.shape[1]) and (
        bool(np.array_equal(trl_rows[::self.work.group_size], self.our_prompt_ids)))

  def trl_completion_tokens(self) -> list[int]:
    return [int(s.completion_mask.sum()) for s in self.trl]


def _compare(work: Workload, directory: str) -> Comparison:
  """Builds both sides on one checkpoint in `directory` and runs them alternately (see the module doc)."""
  from mmrag_jax.processing import load_processor

  checkpoint = save_checkpoint(work.config, os.path.join(directory, "checkpoint"))
  largest = max(h * w for sizes in work.images for h, w in sizes)
  processor = load_processor(checkpoint, min_pixels=56 * 56, max_pixels=largest)
  prompts = make_prompts(work, processor)
  total = 1 + work.warmup + work.steps

  start = time.perf_counter()
  ours = OurSide(checkpoint, processor, work, prompts, os.path.join(directory, "ours"))
  setup_s = time.perf_counter() - start
  start = time.perf_counter()
  trl = trl_peer.TrlPeer(checkpoint, processor, work.config, prompts, group_size=work.group_size,
                         new_tokens=work.new_tokens, steps=total, reward=vowel_fraction,
                         output_dir=os.path.join(directory, "trl"))
  trl_setup_s = time.perf_counter() - start

  our_steps = [ours.step()]

  def our_turn() -> None:  # after TRL's k-th step, our (k+1)-th, while ours has fewer than `total`
    if len(our_steps) < total:
      our_steps.append(ours.step())

  trl.after_step = our_turn
  trl_steps = trl.train()
  if len(trl_steps) != total or len(our_steps) != total:
    raise RuntimeError(f"expected {total} steps per side, got {len(our_steps)} of ours and {len(trl_steps)} of TRL")
  return Comparison(ours=our_steps, trl=trl_steps, work=work, our_prompt_ids=ours.first_batch["input_ids"],
                    patches=len(ours.first_batch["pixel_values"]),
                    setup_s=setup_s, trl_setup_s=trl_setup_s)


def summary(comparison: Comparison) -> dict[str, object]:
  """The RESULT figures: speedups (TRL / ours), per-side medians, min / max, first steps, equal-work checks."""
  out: dict[str, object] = {}
  for span in ("step", "rollout", "update"):
    ours, trl = comparison.timed("ours", span), comparison.timed("trl", span)
    out[f"{span}_speedup_vs_trl"] = round(statistics.median(trl) / statistics.median(ours), 3)
    for side, times in (("ours", ours), ("trl", trl)):
      prefix = "" if side == "ours" else "trl_"
      out[f"{prefix}{span}_median_s"] = round(statistics.median(times), 4)
      out[f"{prefix}{span}_min_s"] = round(min(times), 4)
      out[f"{prefix}{span}_max_s"] = round(max(times), 4)
  work = comparison.work
  out.update({
      "first_step_s": round(comparison.ours[0].step_s, 3),
      "trl_first_step_s": round(comparison.trl[0].step_s, 3),
      "setup_s": round(comparison.setup_s, 3),
      "trl_setup_s": round(comparison.trl_setup_s, 3),
      "timed_steps": work.steps,
      "completion_tokens_per_step": [s.completion_tokens for s in comparison.ours],
      "trl_completion_tokens_per_step": comparison.trl_completion_tokens(),
      "expected_completion_tokens": work.prompts * work.group_size * work.new_tokens,
      "prompt_tokens": comparison.ours[0].prompt_tokens,
      "trl_prompt_tokens": int((comparison.trl[0].prompt_ids != work.config.pad_token_id).sum()),
      "same_prompts": comparison.same_prompts(),
  })
  return out


def _table_rows(comparison: Comparison, figures: dict[str, object], threads: str) -> list[tuple[str, str]]:
  work, t, v = comparison.work, comparison.work.config.text, comparison.work.config.vision
  rows = [
      ("model", f"float32, text {t.num_hidden_layers}x{t.hidden_size}, vision {v.depth}x{v.hidden_size}, "
                f"vocab {t.vocab_size}, {work.parameters / 1e6:.2f}M parameters"),
      ("work", f"{work.prompts} prompts x {comparison.our_prompt_ids.shape[1]} tokens (left-padded), "
               f"{sum(map(len, work.images))} images ({comparison.patches} patches), G={work.group_size}, "
               f"{work.new_tokens} new tokens"),
      ("threads", threads),
      ("same prompts / tokens", f"{figures['same_prompts']} / ours {figures['completion_tokens_per_step'][0]}, "
                                f"TRL {figures['trl_completion_tokens_per_step'][0]} completion tokens per step"),
  ]
  for span, label in (("step", "whole step"), ("rollout", "rollout (generation)"),
                      ("update", "update (fwd + bwd + AdamW)")):
    cell = lambda p: f"{figures[p + span + '_median_s']:.3f} s ({figures[p + span + '_min_s']:.3f}-" \
                     f"{figures[p + span + '_max_s']:.3f})"
    rows.append((f"{label}: ours | TRL | TRL/ours",
                 f"{cell('')} | {cell('trl_')} | {figures[span + '_speedup_vs_trl']:.2f}x"))
  rows.append(("first step: ours | TRL", f"{figures['first_step_s']:.2f} s | {figures['trl_first_step_s']:.2f} s"))
  rows.append(("setup: ours | TRL", f"{figures['setup_s']:.2f} s | {figures['trl_setup_s']:.2f} s"))
  return rows


def _pin_to_one_core(core: int | None) -> int:
  """Pins this process to one core (before XLA starts: its CPU pool sizes itself to the affinity mask)
  and torch to one intra-op and one inter-op thread. Returns the core."""
  import torch

  allowed = sorted(os.sched_getaffinity(0))
  core = allowed[-1] if core is None else core
  if core not in allowed:
    raise SystemExit(f"--core {core} is not among the cores this process may use: {allowed}")
  os.sched_setaffinity(0, {core})
  torch.set_num_threads(1)
  torch.set_num_interop_threads(1)
  return core


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="a smaller model and batch (seconds, for CI)")
  parser.add_argument("--steps", type=int, default=None, help="timed steps per side (default 5; quick 2)")
  parser.add_argument("--warmup", type=int, default=None, help="untimed steps after the first (default 1)")
  parser.add_argument("--core", type=int, default=None, help="the core to pin to (default: the last allowed)")
  parser.add_argument("--large", action="store_true", help="the same work on a model with every width doubled "
                      "(3.8x the parameters)")
  args = parser.parse_args(argv)
  if args.quick and args.large:
    raise SystemExit("--quick and --large are different sizes: pick one")
  missing = trl_peer.trl_missing()
  if missing:
    print(missing, file=sys.stderr)
    raise SystemExit(2)
  if args.steps is not None and args.steps < 1:
    raise SystemExit(f"--steps must be >= 1, got {args.steps}")
  core = _pin_to_one_core(args.core)
  warnings.filterwarnings("ignore", category=FutureWarning)  # TRL 1.16 still sets transformers' deprecated names
  import transformers

  transformers.utils.logging.disable_progress_bar()
  work = workload(args.quick, args.steps, args.warmup, large=args.large)
  with tempfile.TemporaryDirectory() as directory:
    comparison = _compare(work, directory)
  figures = summary(comparison)
  load = os.getloadavg()[0]
  threads = f"pinned to core {core}: XLA CPU client on 1 core, torch 1 intra-op + 1 inter-op thread"
  rows = _table_rows(comparison, figures, threads)
  rows.append(("machine load", f"{load:.1f} (1-min average over {os.cpu_count()} cores)"))
  print_table(f"GRPO step, ours vs TRL {_trl_version()} ({work.steps} timed steps each, median (min-max))", rows)
  print_result({**figures, "load_average": round(load, 2), "core": core, "trl_version": _trl_version(),
                "quick": args.quick, "large": args.large})


def _trl_version() -> str:
  import trl

  return trl.__version__


if __name__ == "__main__":
  main()
