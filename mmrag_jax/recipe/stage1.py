"""Stage 1: train the point-wise relevance judge, then score every candidate of a split with it.

Outputs in the workdir: `ranking_<split>.jsonl` ({"qid", "scores": {candidate id: P(yes)}}, the stage-2
input) and `recall_<split>.json` (recall@k of the gold sources among the top-k on labeled splits, and the
candidates left unscored per reason; `mmrag_jax.evaluation.ranking` says how recall counts them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import tqdm
from jax.sharding import Mesh

from mmrag_jax.data.pipeline import stage1_pipeline
from mmrag_jax.data.scores import write_stage1_scores
from mmrag_jax.evaluation.ranking import describe_unscored, recall_at_k, unscored_summary
from mmrag_jax.model import Qwen25VL
from mmrag_jax.processing.targets import stage1_target
from mmrag_jax.recipe.context import RunDir, Split, is_main_process, load_policy_processor, write_json
from mmrag_jax.recipe.settings import Settings, for_checkpoint
from mmrag_jax.recipe.training import TrainResult, train_policy
from mmrag_jax.rl.reward_fns import stage1_reward_fn
from mmrag_jax.rl.trainer import EvalFn
from mmrag_jax.sampling import Scorer, judgment_continuation

__all__ = ["ranking_file", "run_stage1_inference", "train_stage1"]

_log = logging.getLogger(__name__)


def ranking_file(split: str) -> str:
  return f"ranking_{split}.jsonl"


def _stage1_targets(think: bool):
  """Warm-up targets of a stage-1 pipeline batch (from its metadata): the gold judgment of each row."""
  def targets(meta: Mapping[str, Any]) -> list[str]:
    return [stage1_target(1 if int(label) == 1 else 0, think=think) for label in meta["label"]]

  return targets


def _recall_eval(model_dir: str, split: Split, s: Settings, mesh: Mesh) -> EvalFn:
  """The periodic evaluation of the judge: recall@k of the gold sources on `split` ({"recall@1": ...})."""
  return lambda policy, step: recall_at_k(split.questions, _score_candidates(policy, model_dir, split, s, mesh)[0],
                                          s.recall_ks)


def train_stage1(model: Qwen25VL, model_dir: str, train: Split, s: Settings, run: RunDir, val: Split | None = None
                 ) -> TrainResult:
  """GRPO on point-wise (question, candidate) prompts with the stage-1 rule rewards, from checkpoint
  `model_dir`; with `val`, the recall@k on it every `train.eval_every` loop steps."""
  pipeline_config = for_checkpoint(s.train_pipeline, model_dir, model.config)
  processor = load_policy_processor(model_dir, pipeline_config)
  negatives = s.stage1.negatives_per_positive

  def pipeline():
    return iter(stage1_pipeline(train.questions, train.images, pipeline_config, negatives_per_positive=negatives))

  return train_policy(model, model_dir, processor, s, run, data=pipeline(), reward_fn=stage1_reward_fn(s.reward),
                      warmup_data=pipeline() if s.warmup.steps else None,
                      target_fn=_stage1_targets(pipeline_config.prompt.stage1_think),
                      eval_fn=_recall_eval(model_dir, val, s, run.mesh) if val is not None else None)


def _score_candidates(model: Qwen25VL, model_dir: str, split: Split, s: Settings, mesh: Mesh
                      ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, str]]]:
  """P(yes) of every candidate of every question: ({qid: {candidate id: score}}, the unscored candidates
  {qid: {candidate id: reason}}).

  A candidate whose prompt could not be built (unreadable image, prompt over the largest length bucket,
  images over the batch budget) gets score 0; its reason is one of `batching.DROP_REASONS`.
  """
  pipeline_config = for_checkpoint(s.score_pipeline, model_dir, model.config)
  processor = load_policy_processor(model_dir, pipeline_config)
  prefix, yes_id, no_id = judgment_continuation(processor.tokenizer, stage1_target(1), stage1_target(0))
  scorer = Scorer(model, yes_token_id=yes_id, no_token_id=no_id, config=s.scorer, mesh=mesh)
  pipeline = stage1_pipeline(split.questions, split.images, pipeline_config, negatives_per_positive=None,
                             continuation=prefix)
  total = sum(len(q.candidates) for q in split.questions)
  scores: dict[str, dict[str, float]] = {q.qid: {} for q in split.questions}
  unscored: dict[str, dict[str, str]] = {}
  progress = tqdm.tqdm(total=total, desc=f"stage-1 scoring {split.name}", unit="cand",
                       disable=not is_main_process() or not s.trainer.progress_bar)
  for batch in pipeline:
    probs, meta = scorer(batch.prompts), batch.meta
    for row, qid in enumerate(meta["qid"]):
      if not qid:  # rows padding the last batch
        continue
      qid, cid = str(qid), str(meta["candidate_id"][row])
      valid = bool(batch.prompts.valid[row])
      if not valid:
        unscored.setdefault(qid, {})[cid] = str(meta["drop_reason"][row])
      scores[qid][cid] = float(probs[row]) if valid else 0.0
      progress.update(1)
  progress.close()
  return scores, unscored


def run_stage1_inference(model: Qwen25VL, model_dir: str, split: Split, s: Settings, run: RunDir
                         ) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
  """Scores a split and writes its ranking and recall files into the run's workdir.

  Returns ({'recall@k': ..., 'unscored': n, 'unscored_by_reason': {...}, 'questions_with_unscored_gold':
  n, ...}, the scores {qid: {candidate id: P(yes)}}).
  """
  scores, unscored = _score_candidates(model, model_dir, split, s, run.mesh)
  if is_main_process():
    write_stage1_scores(run.path(ranking_file(split.name)), scores)
  recall = recall_at_k(split.questions, scores, s.recall_ks)
  num_candidates = int(sum(len(q.candidates) for q in split.questions))
  unscored_report = unscored_summary(split.questions, unscored)
  report = {"split": split.name, "num_questions": len(split.questions), "num_candidates": num_candidates,
            **recall, **unscored_report}
  write_json(run.path(f"recall_{split.name}.json"), report)
  shown = ", ".join(f"{k} {v:.3f}" for k, v in recall.items()) or "unlabeled split"
  coverage = describe_unscored(unscored_report, num_candidates)
  _log.info("stage-1 %s: %s (%s)", split.name, shown, coverage)
  print(f"stage-1 ranking of {split.name}: {run.path(ranking_file(split.name))}  [{shown}]"
        + (f"\n  {coverage}" if unscored else ""))
  return report, scores
