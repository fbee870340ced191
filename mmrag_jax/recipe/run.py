"""One run of the recipe: `run(config, workdir)` dispatches on (config.stage, config.mode).

  stage 1  train            warm-up? -> GRPO [eval] -> export -> score `stage1.score_splits` (default: the train
                            and eval splits) -> ranking_<split>.jsonl + recall@k
           eval | predict   score `data.eval_split` with WORKDIR/export (or model.path)
  stage 2  train            [stage 1 first, if stage2.run_stage1] -> warm-up? -> GRPO [eval] from the
                            stage-1 policy on its ranking -> export -> the full pipeline on `data.eval_split`
           eval | predict   the full pipeline on `data.eval_split` with WORKDIR/export (or the stage-1
                            policy): stage-1 ranking -> top-k -> stage-2 answers -> files + metrics
[eval]: with `train.eval_every` > 0, every that many loop steps the policy is scored on `data.eval_split`
(`data.max_eval_questions` of it): stage 1 its recall@k, stage 2 its answers' headline metrics, logged in
metrics.jsonl as eval/recall@1, eval/qa_acc, ...
Every run holds WORKDIR/.lock while it works (recipe/workdir.py: a second run there refuses, naming the
first) and ends by writing summary.json (final metrics and cost).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections

from mmrag_jax.data.scores import read_stage1_scores
from mmrag_jax.recipe import outputs
from mmrag_jax.recipe.checks import ConfigError, check_patch_buckets, require_path, validate
from mmrag_jax.recipe.context import EXPORT_DIR, RunContext
from mmrag_jax.recipe.demo import prepare_demo_inputs
from mmrag_jax.recipe.presets import score_splits, stage1_run_config
from mmrag_jax.recipe.stage1 import ranking_file, run_stage1_inference, train_stage1
from mmrag_jax.recipe.stage2 import check_k, predict_split, train_stage2
from mmrag_jax.recipe.workdir import prepare_workdir, workdir_lock

_log = logging.getLogger(__name__)

STAGE1_SUBDIR = "stage1"


def _num_params(model: Any) -> int:
  from flax import nnx

  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def _policy_dir(ctx: RunContext, fallback_field: str, fallback: str) -> str:
  """WORKDIR/export when this run has trained, else the fallback checkpoint."""
  export = ctx.path(EXPORT_DIR)
  if os.path.isfile(os.path.join(export, "config.json")):
    return export
  if not fallback:
    raise ConfigError(fallback_field, f"no trained policy in {export} and {fallback_field} is empty: train first "
                      f"(config.mode=train) or set --config.{fallback_field}=PATH")
  return fallback


def run_stage1(ctx: RunContext) -> dict[str, Any]:
  c = ctx.config
  history: list[dict[str, float]] = []
  if c.mode == "train":
    model_dir = require_path(c, "model.path", "a Hugging Face Qwen2.5-VL checkpoint directory")
    train = ctx.read_split(c.data.train_split, c.data.max_train_questions)
    val = ctx.read_split(c.data.eval_split, c.data.max_eval_questions) if c.train.eval_every else None
    result = train_stage1(ctx, ctx.load_model(model_dir), model_dir, train, val)
    model, model_dir, history = result.model, result.export_dir or model_dir, result.history
    splits = score_splits(c)
  else:
    model_dir = _policy_dir(ctx, "model.path", c.model.path)
    model = ctx.load_model(model_dir)
    splits = (c.data.eval_split,)
  metrics: dict[str, Any] = {}
  for name in splits:
    limit = c.data.max_train_questions if name == c.data.train_split else c.data.max_eval_questions
    report, _ = run_stage1_inference(ctx, model, model_dir, ctx.read_split(name, limit))
    metrics.update({f"stage1/{name}/{k}": v for k, v in report.items() if k.startswith("recall@")})
  outputs.write_curves(ctx)
  return {"metrics": metrics, "history": history, "model": model}


def _stage1_workdir(ctx: RunContext) -> str:
  c = ctx.config
  if c.stage2.stage1_workdir:
    return os.path.abspath(c.stage2.stage1_workdir)
  if c.stage2.run_stage1:
    return ctx.path(STAGE1_SUBDIR)
  raise ConfigError("stage2.stage1_workdir", "is empty: set --config.stage2.stage1_workdir=DIR to a finished "
                    "stage-1 run (its export/ and ranking_<split>.jsonl files), or --config.stage2.run_stage1=True "
                    "to run stage 1 first; the demo preset does the latter: --config=configs/stage2.py:demo")


def _missing_stage1_outputs(ctx: RunContext, stage1_dir: str) -> list[str]:
  """The stage-1 files this run needs that `stage1_dir` lacks; an error unless stage 1 may run to make them."""
  c = ctx.config
  needed = [os.path.join(EXPORT_DIR, "config.json")]
  if c.mode == "train":
    needed += [ranking_file(c.data.eval_split), ranking_file(c.data.train_split)]
  missing = [n for n in needed if not os.path.exists(os.path.join(stage1_dir, n))]
  if missing and not c.stage2.run_stage1:
    raise ConfigError("stage2.stage1_workdir", f"{stage1_dir} lacks {missing}: run stage 1 there (with "
                      "stage1.score_splits covering the train and eval splits) or set --config.stage2.run_stage1=True")
  return missing


def _scores(stage1_dir: str, split: str) -> dict[str, dict[str, float]]:
  path = os.path.join(stage1_dir, ranking_file(split))
  if not os.path.isfile(path):
    raise ConfigError("stage2.stage1_workdir", f"no stage-1 ranking of split {split!r} at {path}")
  return read_stage1_scores(path)


def _split_scores(ctx: RunContext, stage1_dir: str, split) -> dict[str, dict[str, float]]:
  """The stage-1 ranking of `split`: the stage-1 run's file, else this run's, else scored now with the
  stage-1 policy (STAGE1_WORKDIR/export) into WORKDIR/ranking_<split>.jsonl."""
  for directory in (stage1_dir, ctx.workdir):
    if os.path.isfile(os.path.join(directory, ranking_file(split.name))):
      return _scores(directory, split.name)
  stage1_policy = os.path.join(stage1_dir, EXPORT_DIR)
  print(f"scoring the candidates of {split.name} with the stage-1 policy {stage1_policy}")
  _, scores = run_stage1_inference(ctx, ctx.load_model(stage1_policy, field="stage2.stage1_workdir"),
                                   stage1_policy, split)
  return scores


def _stage1_recall(stage1_dir: str, split: str) -> dict[str, float]:
  """The stage-1 run's recall@k on `split` ({'stage1/<split>/recall@k': value}), when it computed one."""
  path = os.path.join(stage1_dir, f"recall_{split}.json")
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return {f"stage1/{split}/{k}": v for k, v in json.load(f).items() if k.startswith("recall@")}


def run_stage2(ctx: RunContext) -> dict[str, Any]:
  c = ctx.config
  stage1_dir = _stage1_workdir(ctx)
  missing = _missing_stage1_outputs(ctx, stage1_dir)
  # Both splits read before stage 1 runs: a stage2.k above every candidate pool stops the run now.
  train = ctx.read_split(c.data.train_split, c.data.max_train_questions) if c.mode == "train" else None
  split = ctx.read_split(c.data.eval_split, c.data.max_eval_questions)
  for read in (train, split):
    if read is not None:
      check_k(c.stage2.k, read)
  check_patch_buckets(c)  # its worst case is k images per prompt: judged once k is
  if missing:
    print(f"running stage 1 in {stage1_dir}")
    run(stage1_run_config(c), stage1_dir)
  init_dir = c.stage2.init_from or os.path.join(stage1_dir, EXPORT_DIR)
  scores = _split_scores(ctx, stage1_dir, split)
  history: list[dict[str, float]] = []
  if c.mode == "train":
    model = ctx.load_model(init_dir, field="stage2.init_from")
    result = train_stage2(ctx, model, init_dir, train, _scores(stage1_dir, c.data.train_split),
                          val=(split, scores) if c.train.eval_every else None)
    model, model_dir, history = result.model, result.export_dir or init_dir, result.history
  else:
    model_dir = _policy_dir(ctx, "stage2.init_from", init_dir)
    model = ctx.load_model(model_dir, field="stage2.init_from")
  parsed = predict_split(ctx, model, model_dir, split, scores)
  recall = _stage1_recall(stage1_dir, split.name) or _stage1_recall(ctx.workdir, split.name)
  report = outputs.write_split_outputs(ctx, split, scores, parsed, extra_metrics=recall)
  outputs.write_curves(ctx)
  metrics = {**outputs.headline_metrics(ctx, report), **recall}
  return {"metrics": metrics, "history": history, "model": model, "report": report}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs one (stage, mode) of the recipe in `workdir`; returns and writes summary.json's content."""
  started = time.perf_counter()
  validate(config)
  workdir = prepare_workdir(workdir)
  # Process 0 only: every host of one run writes into the same (shared) workdir.
  with workdir_lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
    return _run_locked(config, workdir, started)


def _run_locked(config: ml_collections.ConfigDict, workdir: str, started: float) -> dict[str, Any]:
  ctx = RunContext(config, workdir)
  prepare_demo_inputs(config, ctx.workdir)
  ctx.write_json("config.json", config.to_dict())
  result = run_stage1(ctx) if config.stage == 1 else run_stage2(ctx)
  summary = {
      "stage": config.stage, "mode": config.mode, "preset": config.preset, "metrics": result["metrics"],
      "cost": outputs.cost_summary(result["history"], total_time_s=time.perf_counter() - started,
                                   num_devices=ctx.mesh.size, num_params=_num_params(result["model"])),
  }
  ctx.write_json(outputs.SUMMARY_FILE, summary)
  ctx.barrier("run_finished")  # later readers of this run's files (a stage-2 run after its stage 1) on every host
  return summary
