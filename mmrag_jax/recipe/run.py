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
The config becomes typed settings once (`recipe/settings.py`); the stage functions take those, the model,
paths and splits. A stage-2 run that runs stage 1 first calls `_run_stage1` in the stage-1 workdir.
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
from mmrag_jax.recipe.context import (EXPORT_DIR, RunDir, barrier, load_model, read_split, resolve_mesh,
                                      write_json)
from mmrag_jax.recipe.demo import prepare_demo_inputs
from mmrag_jax.recipe.settings import (ConfigError, Settings, check_patch_buckets, require_path, settings,
                                       stage1_fields, validate, validate_batch_division)
from mmrag_jax.recipe.stage1 import ranking_file, run_stage1_inference, train_stage1
from mmrag_jax.recipe.stage2 import check_k, predict_split, train_stage2
from mmrag_jax.recipe.workdir import prepare_workdir, workdir_lock

__all__ = ["run"]

_log = logging.getLogger(__name__)

_STAGE1_SUBDIR = "stage1"


def _num_params(model: Any) -> int:
  from flax import nnx

  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def _open_run_dir(s: Settings, workdir: str) -> RunDir:
  """The run's (prepared) workdir and its mesh: config.mesh.shape on this host's devices, which every batch
  must split evenly over."""
  mesh = resolve_mesh(tuple(s.source.mesh.shape))
  validate_batch_division(s.source, mesh.shape["data"] * mesh.shape["fsdp"])
  return RunDir(os.path.abspath(workdir), mesh)


def _policy_dir(run: RunDir, fallback_field: str, fallback: str) -> str:
  """The run's export/ when this run has trained, else the fallback checkpoint."""
  export = run.path(EXPORT_DIR)
  if os.path.isfile(os.path.join(export, "config.json")):
    return export
  if not fallback:
    raise ConfigError(fallback_field, f"no trained policy in {export} and {fallback_field} is empty: train first "
                      f"(config.mode=train) or set --config.{fallback_field}=PATH")
  return fallback


def _run_stage1(s: Settings, run: RunDir) -> dict[str, Any]:
  """Stage 1 in `run`: train from model.path and rank the score splits, or rank the eval split with the
  run's export (or model.path)."""
  history: list[dict[str, float]] = []
  if s.mode == "train":
    model_dir = require_path("model.path", s.model_path, "a Hugging Face Qwen2.5-VL checkpoint directory")
    train = read_split(s.data, s.data.train_split, s.data.max_train_questions)
    val = read_split(s.data, s.data.eval_split, s.data.max_eval_questions) if s.trainer.eval_every else None
    result = train_stage1(load_model(model_dir, s.model, run.mesh), model_dir, train, s, run, val)
    model, model_dir, history = result.model, result.export_dir or model_dir, result.history
    splits = s.stage1.score_splits
  else:
    model_dir = _policy_dir(run, "model.path", s.model_path)
    model = load_model(model_dir, s.model, run.mesh)
    splits = (s.data.eval_split,)
  metrics: dict[str, Any] = {}
  for name in splits:
    report, _ = run_stage1_inference(model, model_dir, read_split(s.data, name, s.data.limit(name)), s, run)
    metrics.update({f"stage1/{name}/{k}": v for k, v in report.items() if k.startswith("recall@")})
  outputs.write_curves(run)
  return {"metrics": metrics, "history": history, "model": model}


def _stage1_workdir(s: Settings, run: RunDir) -> str:
  if s.stage2.stage1_workdir:
    return os.path.abspath(s.stage2.stage1_workdir)
  if s.stage2.run_stage1:
    return run.path(_STAGE1_SUBDIR)
  raise ConfigError("stage2.stage1_workdir", "is empty: set --config.stage2.stage1_workdir=DIR to a finished "
                    "stage-1 run (its export/ and ranking_<split>.jsonl files), or --config.stage2.run_stage1=True "
                    "to run stage 1 first; the demo preset does the latter: --config=configs/stage2.py:demo")


def _missing_stage1_outputs(s: Settings, stage1_dir: str) -> list[str]:
  """The stage-1 files this run needs that `stage1_dir` lacks; an error unless stage 1 may run to make them."""
  needed = [os.path.join(EXPORT_DIR, "config.json")]
  if s.mode == "train":
    needed += [ranking_file(s.data.eval_split), ranking_file(s.data.train_split)]
  missing = [n for n in needed if not os.path.exists(os.path.join(stage1_dir, n))]
  if missing and not s.stage2.run_stage1:
    raise ConfigError("stage2.stage1_workdir", f"{stage1_dir} lacks {missing}: run stage 1 there (with "
                      "stage1.score_splits covering the train and eval splits) or set --config.stage2.run_stage1=True")
  return missing


def _scores(stage1_dir: str, split: str) -> dict[str, dict[str, float]]:
  path = os.path.join(stage1_dir, ranking_file(split))
  if not os.path.isfile(path):
    raise ConfigError("stage2.stage1_workdir", f"no stage-1 ranking of split {split!r} at {path}")
  return read_stage1_scores(path)


def _split_scores(s: Settings, run: RunDir, stage1_dir: str, split) -> dict[str, dict[str, float]]:
  """The stage-1 ranking of `split`: the stage-1 run's file, else this run's, else scored now with the
  stage-1 policy (STAGE1_WORKDIR/export) into WORKDIR/ranking_<split>.jsonl."""
  for directory in (stage1_dir, run.workdir):
    if os.path.isfile(os.path.join(directory, ranking_file(split.name))):
      return _scores(directory, split.name)
  stage1_policy = os.path.join(stage1_dir, EXPORT_DIR)
  print(f"scoring the candidates of {split.name} with the stage-1 policy {stage1_policy}")
  policy = load_model(stage1_policy, s.model, run.mesh, field="stage2.stage1_workdir")
  _, scores = run_stage1_inference(policy, stage1_policy, split, s, run)
  return scores


def _stage1_recall(stage1_dir: str, split: str) -> dict[str, float]:
  """The stage-1 run's recall@k on `split` ({'stage1/<split>/recall@k': value}), when it computed one."""
  path = os.path.join(stage1_dir, f"recall_{split}.json")
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return {f"stage1/{split}/{k}": v for k, v in json.load(f).items() if k.startswith("recall@")}


def _run_stage2(s: Settings, run: RunDir) -> dict[str, Any]:
  """Stage 2 in `run`: [stage 1 first] -> train from the stage-1 policy on its ranking (train mode) -> the
  full pipeline on the eval split."""
  stage1_dir = _stage1_workdir(s, run)
  missing = _missing_stage1_outputs(s, stage1_dir)
  # Both splits read before stage 1 runs: a stage2.k above every candidate pool stops the run now.
  train = read_split(s.data, s.data.train_split, s.data.max_train_questions) if s.mode == "train" else None
  split = read_split(s.data, s.data.eval_split, s.data.max_eval_questions)
  for read in (train, split):
    if read is not None:
      check_k(s.stage2.k, read)
  check_patch_buckets(s.source)  # its worst case is k images per prompt: judged once k is
  if missing:
    print(f"running stage 1 in {stage1_dir}")
    stage1_dir = prepare_workdir(stage1_dir)
    with _locked(stage1_dir):
      with stage1_fields():
        stage1_run = _open_run_dir(s.stage2.run_stage1, stage1_dir)
      _run_with_summary(s.stage2.run_stage1, stage1_run, time.perf_counter())
  init_dir = s.stage2.init_from or os.path.join(stage1_dir, EXPORT_DIR)
  scores = _split_scores(s, run, stage1_dir, split)
  history: list[dict[str, float]] = []
  if s.mode == "train":
    model = load_model(init_dir, s.model, run.mesh, field="stage2.init_from")
    result = train_stage2(model, init_dir, train, _scores(stage1_dir, s.data.train_split), s, run,
                          val=(split, scores) if s.trainer.eval_every else None)
    model, model_dir, history = result.model, result.export_dir or init_dir, result.history
  else:
    model_dir = _policy_dir(run, "stage2.init_from", init_dir)
    model = load_model(model_dir, s.model, run.mesh, field="stage2.init_from")
  parsed = predict_split(model, model_dir, split, scores, s, run.mesh)
  recall = _stage1_recall(stage1_dir, split.name) or _stage1_recall(run.workdir, split.name)
  report = outputs.write_split_outputs(run, split, scores, parsed, data=s.data, bart=s.bart, report_html=s.report,
                                       extra_metrics=recall)
  outputs.write_curves(run)
  metrics = {**outputs.headline_metrics(s.data.dataset, report), **recall}
  return {"metrics": metrics, "history": history, "model": model, "report": report}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs one (stage, mode) of the recipe in `workdir`; returns and writes summary.json's content."""
  started = time.perf_counter()
  validated = validate(config)
  workdir = prepare_workdir(workdir)
  with _locked(workdir):
    run_dir = _open_run_dir(validated, workdir)
    if prepare_demo_inputs(config, run_dir.workdir):
      validated = settings(config)  # with the demo's data and model paths
    return _run_with_summary(validated, run_dir, started)


def _locked(workdir: str) -> contextlib.AbstractContextManager:
  """The workdir's lock; process 0 only: every host of one run writes into the same (shared) workdir."""
  return workdir_lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()


def _run_with_summary(s: Settings, run: RunDir, started: float) -> dict[str, Any]:
  """Stage s.stage in `run`, between its config.json and its summary.json (final metrics and cost)."""
  write_json(run.path("config.json"), s.source.to_dict())
  result = _run_stage1(s, run) if s.stage == 1 else _run_stage2(s, run)
  summary = {
      "stage": s.stage, "mode": s.mode, "preset": s.source.preset, "metrics": result["metrics"],
      "cost": outputs.cost_summary(result["history"], total_time_s=time.perf_counter() - started,
                                   num_devices=run.mesh.size, num_params=_num_params(result["model"])),
  }
  write_json(run.path(outputs.SUMMARY_FILE), summary)
  barrier("run_finished")  # later readers of this run's files (a stage-2 run after its stage 1) on every host
  return summary
