"""Stage 2: train list-wise evidence ranking + answering, and run the full pipeline on a split.

Prediction (`predict_split`): the stage-1 ranking of the split -> its top-k candidates, best first, as
[1]..[k] -> one greedy stage-2 completion per question -> parsed reasoning, cited evidence and answer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import tqdm
from jax.sharding import Mesh

from mmrag_jax.data.pipeline import stage2_pipeline
from mmrag_jax.data.scores import Stage1Scores
from mmrag_jax.formats.parse import parse_stage2, split_mmqa_answer
from mmrag_jax.formats.tags import scan_blocks
from mmrag_jax.model import Qwen25VL
from mmrag_jax.processing.targets import MMQA_ANSWER_SEPARATOR, stage2_target
from mmrag_jax.recipe import outputs
from mmrag_jax.recipe.context import RunDir, Split, is_main_process, load_policy_processor
from mmrag_jax.recipe.settings import ConfigError, Settings, for_checkpoint
from mmrag_jax.recipe.training import TrainResult, train_policy
from mmrag_jax.rl.reward_fns import stage2_reward_fn
from mmrag_jax.rl.trainer import EvalFn
from mmrag_jax.sampling import Sampler

__all__ = ["check_k", "parse_prediction", "predict_split", "train_stage2"]

_log = logging.getLogger(__name__)


def check_k(k: int, split: Split) -> None:
  """Prompts show min(k, pool) candidates: a k above every pool of the split asks for what no prompt can show."""
  sizes = sorted(len(q.candidates) for q in split.questions)
  if sizes and k > sizes[-1]:
    raise ConfigError("stage2.k", f"{k} exceeds every candidate pool of split {split.name!r}: {len(sizes)} "
                      f"questions with {sizes[0]} to {sizes[-1]} candidates (median {sizes[len(sizes) // 2]}); use "
                      f"stage2.k <= {sizes[-1]}")


def _gold_numbers(is_gold: Sequence[bool], num_candidates: int) -> list[int]:
  """Prompt numbers (1-based) of the gold candidates among the first `num_candidates` slots."""
  return [j + 1 for j, gold in enumerate(is_gold) if gold and j < num_candidates]


def _stage2_targets(meta: Mapping[str, Any]) -> list[str]:
  """Warm-up targets of a stage-2 pipeline batch (from its metadata): fixed reasoning, the gold evidence, the
  reference answer."""
  return [stage2_target(_gold_numbers(meta["candidate_is_gold"][row], int(meta["num_candidates"][row])),
                        tuple(meta["answers"][row]), str(meta["dataset"][row]))
          for row in range(len(meta["qid"]))]


def _answer_eval(model_dir: str, split: Split, scores: Stage1Scores, s: Settings, mesh: Mesh) -> EvalFn:
  """The periodic evaluation of the policy: the headline metrics of its greedy answers on `split` (WebQA
  retrieval_f1, qa_acc, and qa_fl / qa with a BART checkpoint; MMQA em, f1, retrieval_f1)."""
  def evaluate(policy: Qwen25VL, step: int) -> dict[str, float]:
    parsed = predict_split(policy, model_dir, split, scores, s, mesh)
    report, _ = outputs.evaluate_split(split, outputs.as_predictions(parsed), s.data, s.bart)
    return {k: v for k, v in outputs.headline_metrics(s.data.dataset, report).items() if v is not None}

  return evaluate


def train_stage2(model: Qwen25VL, model_dir: str, train: Split, scores: Stage1Scores, s: Settings, run: RunDir,
                 val: tuple[Split, Stage1Scores] | None = None) -> TrainResult:
  """GRPO on list-wise prompts from checkpoint `model_dir`: all gold candidates + the hardest negatives of
  the stage-1 ranking; with `val` (a split and its stage-1 ranking), its answer metrics every
  `train.eval_every` loop steps."""
  pipeline_config = for_checkpoint(s.train_pipeline, model_dir, model.config)
  processor = load_policy_processor(model_dir, pipeline_config)

  def pipeline():
    return iter(stage2_pipeline(train.questions, train.images, pipeline_config, k=s.stage2.k, mode="train",
                                scores=scores))

  return train_policy(model, model_dir, processor, s, run, data=pipeline(), reward_fn=stage2_reward_fn(s.reward),
                      warmup_data=pipeline() if s.warmup.steps else None, target_fn=_stage2_targets,
                      eval_fn=_answer_eval(model_dir, *val, s, run.mesh) if val is not None else None)


def _answer(text: str | None, dataset: str, separator: str | None) -> str | list[str]:
  text = (text or "").strip()
  if dataset != "mmqa":
    return text
  # The reward's spans; without a separator, the one the prompt asks for.
  parts = split_mmqa_answer(text, separator or MMQA_ANSWER_SEPARATOR.strip())
  return [p for p in parts if p] or [text]


def parse_prediction(completion: str, candidate_ids: Sequence[str], dataset: str, think: str,
                     separator: str | None) -> dict[str, Any]:
  """The parts of one stage-2 completion: reasoning, cited numbers and ids, answer, format flag."""
  parsed = parse_stage2(completion, len(candidate_ids), think)
  cited = [n for n in (parsed.cited or ()) if 1 <= n <= len(candidate_ids)]
  blocks, _ = scan_blocks(completion, ("think",))
  reasoning = blocks["think"].content if "think" in blocks and blocks["think"].content is not None else ""
  return {"answer": _answer(parsed.answer, dataset, separator), "sources": [candidate_ids[n - 1] for n in cited],
          "reasoning": reasoning.strip(), "evidence_numbers": list(parsed.cited or ()), "completion": completion,
          "format_ok": not parsed.malformed}


def predict_split(model: Qwen25VL, model_dir: str, split: Split, scores: Stage1Scores, s: Settings,
                  mesh: Mesh) -> dict[str, dict[str, Any]]:
  """Greedy stage-2 answers for every question of the split: {qid: parsed prediction + prompt ids}.

  A question whose prompt could not be built (the pipeline logs why) gets an empty answer and
  `format_ok` False, so every question has a prediction.
  """
  config = for_checkpoint(s.predict_pipeline, model_dir, model.config)
  processor = load_policy_processor(model_dir, config)
  pipeline = stage2_pipeline(split.questions, split.images, config, k=s.stage2.k, mode="inference", scores=scores)
  sampler = Sampler(model, s.predict, mesh=mesh)
  key = jax.random.key(s.seed)
  out: dict[str, dict[str, Any]] = {}
  progress = tqdm.tqdm(total=len(split.questions), desc=f"stage-2 answers {split.name}", unit="q",
                       disable=not is_main_process() or not s.trainer.progress_bar)
  for batch in pipeline:
    samples = sampler.generate(batch.prompts, key, group_size=1)
    texts = samples.texts(processor.decode, sampler.stop_ids)
    meta = batch.meta
    for row, qid in enumerate(meta["qid"]):
      if not qid:
        continue
      ids = [str(i) for i in meta["candidate_ids"][row][:int(meta["num_candidates"][row])]]
      dataset = str(meta["dataset"][row])
      completion = texts[row] if batch.prompts.valid[row] else ""
      record = parse_prediction(completion, ids, dataset, s.reward.think, s.reward.mmqa_span_separator)
      record.update(kept_ids=ids, truncated=bool(np.asarray(samples.truncated)[row]))
      out[str(qid)] = record
      progress.update(1)
  progress.close()
  return out
