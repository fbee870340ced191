"""Pretraining of the stand-in base model: a synthetic world, its tokenizer, a small random Qwen2.5-VL and
supervised next-token steps on the generic reading skills of `tasks`, saved as a Hugging Face directory.

  WORKDIR/data/       the synthetic WebQA (official format) the base model and the RL runs share
  WORKDIR/model/      the base model (safetensors + tokenizer + processor): what `model.path` points to
  WORKDIR/pretrain.json   the settings it was built with, its loss curve summary and cost

A second call with the same settings returns the cached directories at once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from mmrag_jax.data import read_webqa
from mmrag_jax.data.batching import MetaField
from mmrag_jax.data.pipeline import EncodeAndCollate, PipelineConfig, PromptEncoder, batched_dataset, prompt_collator
from mmrag_jax.data.records import IMAGE, Question
from mmrag_jax.data.synthetic import SyntheticManifest, generate_webqa
from mmrag_jax.data.synthetic.world import Entity
from mmrag_jax.model import Qwen25VL, save_pretrained, tiny
from mmrag_jax.parallel import make_mesh
from mmrag_jax.pretrain.tasks import MAX_LISTED, TASKS, PretrainExample, document_examples
from mmrag_jax.processing import load_processor, prompts
from mmrag_jax.processing.tiny_tokenizer import build_tiny_processor_dir
from mmrag_jax.rl.warmup import WarmupConfig, supervised_warmup

__all__ = ["PretrainConfig", "pretrain"]

_log = logging.getLogger(__name__)

_DATA_DIR, _MODEL_DIR, _STAMP_FILE = "data", "model", "pretrain.json"
_META = {"task": MetaField(object, ""), "target": MetaField(object, "")}


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """The world, the model and the optimization of one pretraining run.

  seed: the world's seed (names, cities, pictures) and the initialization's.
  num_train / num_val / num_test: questions per split of the synthetic WebQA (pretraining reads only the
    documents of the train split's pools, never a question or an answer of the benchmark).
  hidden_size, num_layers, vision_depth: the text decoder's width and depth, the vision tower's depth.
  steps, batch_size, learning_rate: supervised steps, prompts per step, AdamW rate (constant).
  max_new_tokens, length_buckets: target and prompt widths (longer ones are cut / dropped).
  min_pixels / max_pixels: the image processor's budget (the RL runs must use the same).
  """

  seed: int = 0
  num_train: int = 160
  num_val: int = 48
  num_test: int = 8
  hidden_size: int = 64
  num_layers: int = 3
  vision_depth: int = 2
  steps: int = 600
  batch_size: int = 32
  learning_rate: float = 3e-3
  min_pixels: int = 28 * 28
  max_pixels: int = 56 * 56
  max_new_tokens: int = 48
  length_buckets: tuple[int, ...] = (128, 256)
  tasks: tuple[str, ...] = TASKS  # the skills to pretrain on (a subset makes a faster, narrower base)


def _mrope_section(head_dim: int) -> tuple[int, int, int]:
  """Qwen2.5-VL's (t, h, w) split of the rotary frequencies, (16, 24, 24) at head_dim 128, scaled."""
  t = head_dim // 8
  h = (head_dim // 2 - t) // 2
  return (t, h, head_dim // 2 - t - h)


def _model_config(config: PretrainConfig):
  """`tiny()` (the offline tokenizer's 512-row vocabulary and special ids) at the configured size."""
  base = tiny()
  heads = max(2, config.hidden_size // 32)
  text = dataclasses.replace(base.text, hidden_size=config.hidden_size, intermediate_size=4 * config.hidden_size,
                             num_hidden_layers=config.num_layers, num_attention_heads=heads,
                             num_key_value_heads=max(1, heads // 2), head_dim=config.hidden_size // heads,
                             mrope_section=_mrope_section(config.hidden_size // heads))
  vision = dataclasses.replace(base.vision, depth=config.vision_depth, out_hidden_size=config.hidden_size,
                               fullatt_block_indexes=(config.vision_depth - 1,))
  return dataclasses.replace(base, text=text, vision=vision)


def _pretrain_examples(questions: Sequence[Question], manifest: SyntheticManifest, seed: int) -> list[PretrainExample]:
  """The reading-skill examples of every distinct document in the questions' candidate pools."""
  rng = random.Random(seed)
  documents = {c.id: c for q in questions for c in q.candidates}
  values: dict[str, set[str]] = {"city": set(), "year": set()}
  for c in documents.values():
    fact = None if c.kind == IMAGE else Entity.parse_fact(c.text)
    if fact:
      values[fact[1]].add(fact[2])
  sorted_values = {k: sorted(v) for k, v in values.items()}
  usable = [documents[cid] for cid in sorted(documents)
            if documents[cid].kind != IMAGE or str(documents[cid].image_ref) in manifest.scenes]
  out: list[PretrainExample] = []
  for c in usable:
    scene = manifest.scenes[str(c.image_ref)] if c.kind == IMAGE else None
    out.extend(document_examples(rng, c, scene, sorted_values, others=[o for o in usable if o.title != c.title]))
  return out


def _tokenizer_corpus(examples: Sequence[PretrainExample]) -> list[str]:
  """Text the world's tokenizer learns its merges from: documents, requests, answers, instructions."""
  texts = [prompts.STAGE1_ANSWER, prompts.STAGE1_THINK, prompts.STAGE2_INSTRUCTION, *prompts.ANSWER_STYLE.values()]
  for ex in examples:
    texts += [p["text"] for m in ex.messages for p in m["content"] if p.get("type") == "text"]
    texts.append(ex.target)
  return texts


@dataclasses.dataclass(frozen=True)
class _PretrainEncoder(PromptEncoder):
  examples: Sequence[PretrainExample] = ()

  def __call__(self, row: np.ndarray) -> dict[str, Any]:
    ex = self.examples[int(row[0])]
    return self._encode(ex.candidates, ex.messages, {"task": ex.task, "target": ex.target})


def _stamp(config: PretrainConfig) -> dict[str, Any]:
  return {"config": json.loads(json.dumps(dataclasses.asdict(config)))}  # tuples as the file holds them: lists


def pretrain(workdir: str, config: PretrainConfig = PretrainConfig(), progress: bool = True) -> dict[str, Any]:
  """Builds (or finds cached) the world and the base model in `workdir`; returns pretrain.json's content:
  {'config', 'data_dir', 'model_dir', 'num_examples', 'nll_start', 'nll_end', 'seconds'}."""
  workdir = os.path.abspath(workdir)
  stamp_path = os.path.join(workdir, _STAMP_FILE)
  if os.path.isfile(stamp_path):
    with open(stamp_path, encoding="utf-8") as f:
      done = json.load(f)
    if done.get("config") == _stamp(config)["config"]:
      return done
  started = time.perf_counter()
  data_dir, model_dir = os.path.join(workdir, _DATA_DIR), os.path.join(workdir, _MODEL_DIR)
  manifest = generate_webqa(data_dir, num_train=config.num_train, num_val=config.num_val, num_test=config.num_test,
                            seed=config.seed)
  train = read_webqa(data_dir, "train", verbose=False)
  examples = [ex for ex in _pretrain_examples(train.questions, manifest, config.seed) if ex.task in config.tasks]
  build_tiny_processor_dir(model_dir, extra_corpus=_tokenizer_corpus(examples))
  model = Qwen25VL(_model_config(config), rngs=nnx.Rngs(config.seed))

  pipeline_config = PipelineConfig(processor_path=model_dir, min_pixels=config.min_pixels,
                                   max_pixels=config.max_pixels, batch_size=config.batch_size,
                                   length_buckets=config.length_buckets, seed=config.seed, read_threads=2)
  encoder = _PretrainEncoder(questions=(), images=train.images, config=pipeline_config, examples=examples)
  table = np.arange(len(examples), dtype=np.int64)[:, None]
  data = iter(batched_dataset(table, EncodeAndCollate(encoder, prompt_collator(pipeline_config, MAX_LISTED, _META)), pipeline_config))
  warmup = WarmupConfig(steps=config.steps, learning_rate=config.learning_rate, max_new_tokens=config.max_new_tokens,
                        group_size=1)
  processor = load_processor(model_dir, min_pixels=config.min_pixels, max_pixels=config.max_pixels)
  tokenize = lambda text: processor.tokenizer.encode(text, add_special_tokens=False)
  curve: list[float] = []

  def on_step(step: int, metrics: dict[str, float]) -> None:
    curve.append(metrics["nll"])
    if progress and (step % 50 == 0 or step == 1):
      print(f"pretrain step {step}/{config.steps}: token NLL {metrics['nll']:.3f}", flush=True)

  mesh = make_mesh((1, 1, 1), jax.devices()[:1])
  model = supervised_warmup(model, data, lambda meta: [str(t) for t in meta["target"]], tokenize, warmup,
                            mesh=mesh, stop_id=model.config.eos_token_id, on_step=on_step)
  save_pretrained(model, model_dir)
  tail = curve[-20:] or [float("nan")]
  result = {**_stamp(config), "data_dir": data_dir, "model_dir": model_dir, "num_examples": len(examples),
            "nll_start": curve[0] if curve else float("nan"), "nll_end": float(np.mean(tail)),
            "nll_curve": curve, "seconds": time.perf_counter() - started}
  with open(stamp_path, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  return result
