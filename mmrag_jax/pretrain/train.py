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
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mmrag_jax.data import read_webqa
from mmrag_jax.data.batching import MetaField
from mmrag_jax.data.pipeline import (EncodeAndCollate, PipelineConfig, PromptEncoder, batched_dataset, prompt_collator,
                                     thread_processor)
from mmrag_jax.data.records import IMAGE, Question
from mmrag_jax.data.synthetic import SyntheticManifest, generate_webqa
from mmrag_jax.data.synthetic.world import Entity
from mmrag_jax.model import ModelInputs, Qwen25VL, forward, save_pretrained, tiny
from mmrag_jax.parallel import make_mesh
from mmrag_jax.pretrain.tasks import MAX_LISTED, TASKS, PretrainExample, document_examples
from mmrag_jax.processing import load_processor, prompts
from mmrag_jax.processing.tiny_tokenizer import build_tiny_processor_dir
from mmrag_jax.rl.warmup import WarmupConfig, supervised_warmup
from mmrag_jax.sampling.prompt_batch import PromptTokens

__all__ = ["PretrainConfig", "extra_world_examples", "model_config", "pretrain", "sequence_loss", "world_seed"]

_log = logging.getLogger(__name__)

_DATA_DIR, _MODEL_DIR, _WORLDS_DIR, _STAMP_FILE = "data", "model", "worlds", "pretrain.json"
_LOSSES = ("completion", "sequence")
_META = {"task": MetaField(object, ""), "target": MetaField(object, ""), "target_tokens": MetaField(np.int32, 0)}


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """The world, the model and the optimization of one pretraining run.

  seed: the world's seed (names, cities, pictures) and the initialization's.
  num_train / num_val / num_test: questions per split of the synthetic WebQA (pretraining reads only the
    documents of the train split's pools, never a question or an answer of the benchmark).
  hidden_size, num_layers, vision_depth: the text decoder's width and depth, the vision tower's depth.
  extra_worlds: more worlds (seeds `world_seed(seed, i)`, names and pictures the benchmark never shows) whose
    train-split documents are pretraining documents too, so that a skill such as "is this a text about X?"
    has to hold for names it has not seen rather than be memorized per document.
  loss: 'sequence' (next-token loss over every text token of prompt and target, as a language model is
    pretrained) or 'completion' (the target's tokens only, as an instruction fine-tune).
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
  extra_worlds: int = 0
  loss: str = "completion"

  def __post_init__(self):
    if self.loss not in _LOSSES:
      raise ValueError(f"PretrainConfig.loss must be one of {_LOSSES}, got {self.loss!r}")
    if self.extra_worlds < 0:
      raise ValueError(f"PretrainConfig.extra_worlds must be >= 0, got {self.extra_worlds}")


def _mrope_section(head_dim: int) -> tuple[int, int, int]:
  """Qwen2.5-VL's (t, h, w) split of the rotary frequencies, (16, 24, 24) at head_dim 128, scaled."""
  t = head_dim // 8
  h = (head_dim // 2 - t) // 2
  return (t, h, head_dim // 2 - t - h)


def model_config(config: PretrainConfig):
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


def world_seed(seed: int, index: int) -> int:
  """The seed of extra world `index` of a run with world seed `seed`: far from the seeds a benchmark uses."""
  return 1_000_003 * (index + 1) + seed


def extra_world_examples(workdir: str, config: PretrainConfig) -> list[PretrainExample]:
  """The reading-skill examples of the extra worlds' train documents, pictures carried as bytes."""
  out: list[PretrainExample] = []
  for index in range(config.extra_worlds):
    seed = world_seed(config.seed, index)
    world_dir = os.path.join(workdir, _WORLDS_DIR, str(index))
    manifest = generate_webqa(world_dir, num_train=config.num_train, num_val=0, num_test=0, seed=seed)
    data = read_webqa(world_dir, "train", verbose=False)
    questions = [dataclasses.replace(q, candidates=tuple(
        dataclasses.replace(c, image_bytes=data.images.read_bytes(c.image_ref)) if c.kind == IMAGE else c
        for c in q.candidates)) for q in data.questions]
    out.extend(_pretrain_examples(questions, manifest, seed))
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

  target_in_prompt: bool = False  # the target and the stop token follow the prompt (loss='sequence')

  def __call__(self, row: np.ndarray) -> dict[str, Any]:
    ex = self.examples[int(row[0])]
    encoded = self._encode(ex.candidates, ex.messages, {"task": ex.task, "target": ex.target, "target_tokens": 0})
    if self.target_in_prompt and not encoded["error"]:
      tokenizer = thread_processor(self.config.processor_path, self.config.min_pixels, self.config.max_pixels).tokenizer
      target = [*tokenizer.encode(ex.target, add_special_tokens=False), tokenizer.eos_token_id]
      encoded["input_ids"] = np.concatenate([encoded["input_ids"], np.asarray(target, np.int64)])
      encoded["meta"]["target_tokens"] = len(target)
    return encoded


def sequence_loss(model: Qwen25VL, inputs: ModelInputs, target_tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(token-mean next-token NLL over every real text token, the same over the targets' tokens only).

  inputs: B left-padded sequences, each a prompt followed by its target; target_tokens: [B] int32, how many
  of the last tokens of each row are its target (the stop token included). Image placeholders are not
  predicted (their content comes from the vision tower).
  """
  logits = forward(model, inputs).astype(jnp.float32)[:, :-1]  # [B, L-1, V] predicts ids[:, 1:]
  ids, mask = inputs.input_ids, inputs.attention_mask
  labels = ids[:, 1:]
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]  # [B, L-1]
  real = (mask[:, 1:] * mask[:, :-1] * (labels != model.config.image_token_id)).astype(jnp.float32)
  positions = jnp.arange(labels.shape[1])[None, :]
  in_target = (positions >= labels.shape[1] - target_tokens[:, None]).astype(jnp.float32) * real
  return (nll * real).sum() / jnp.maximum(real.sum(), 1.0), (nll * in_target).sum() / jnp.maximum(in_target.sum(), 1.0)


@nnx.jit
def _sequence_step(model: Qwen25VL, optimizer: nnx.Optimizer, inputs: ModelInputs,
                   target_tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
  (loss, target_nll), grads = nnx.value_and_grad(sequence_loss, has_aux=True)(model, inputs, target_tokens)
  optimizer.update(model, grads)
  return loss, target_nll


def _sequence_pretrain(model: Qwen25VL, data, config: PretrainConfig,
                       on_step: Callable[[int, dict[str, float]], None]) -> Qwen25VL:
  """`config.steps` AdamW steps (constant rate, gradients clipped to norm 1) on the sequence loss."""
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(config.learning_rate))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  for step in range(1, config.steps + 1):
    batch = next(data)
    inputs = batch.prompts.model_inputs(model.config)
    loss, target_nll = _sequence_step(model, optimizer, inputs, jnp.asarray(batch.meta["target_tokens"], jnp.int32))
    on_step(step, {"nll": float(target_nll), "sequence_nll": float(loss)})
  return model


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
  examples = _pretrain_examples(train.questions, manifest, config.seed) + extra_world_examples(workdir, config)
  examples = [ex for ex in examples if ex.task in config.tasks]
  build_tiny_processor_dir(model_dir, extra_corpus=_tokenizer_corpus(examples))
  model = Qwen25VL(model_config(config), rngs=nnx.Rngs(config.seed))

  pipeline_config = PipelineConfig(processor_path=model_dir, min_pixels=config.min_pixels,
                                   max_pixels=config.max_pixels, batch_size=config.batch_size,
                                   length_buckets=config.length_buckets, seed=config.seed, read_threads=2,
                                   layout=PromptTokens.of(model.config))
  encoder = _PretrainEncoder(questions=(), images=train.images, config=pipeline_config, examples=examples,
                             target_in_prompt=config.loss == "sequence")
  table = np.arange(len(examples), dtype=np.int64)[:, None]
  collate = EncodeAndCollate(encoder, prompt_collator(pipeline_config, MAX_LISTED, _META))
  data = iter(batched_dataset(table, collate, pipeline_config))
  warmup = WarmupConfig(steps=config.steps, learning_rate=config.learning_rate, max_new_tokens=config.max_new_tokens,
                        group_size=1)
  processor = load_processor(model_dir, min_pixels=config.min_pixels, max_pixels=config.max_pixels)
  tokenize = lambda text: processor.tokenizer.encode(text, add_special_tokens=False)
  curve: list[float] = []

  def on_step(step: int, metrics: dict[str, float]) -> None:
    curve.append(metrics["nll"])
    if progress and (step % 50 == 0 or step == 1):
      print(f"pretrain step {step}/{config.steps}: target NLL {metrics['nll']:.3f}"
            + (f", sequence NLL {metrics['sequence_nll']:.3f}" if "sequence_nll" in metrics else ""), flush=True)

  if config.loss == "sequence":
    model = _sequence_pretrain(model, data, config, on_step)
  else:
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
