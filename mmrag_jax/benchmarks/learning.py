"""Does the method learn? The paper's ablation table at toy scale, from a pretrained stand-in base model.

    python -m mmrag_jax.benchmarks.learning [--quick] [--seed=N] [--workdir=DIR] [--curves_dir=DIR]

1. `mmrag_jax.pretrain`: the synthetic world (seed N) and a small Qwen2.5-VL pretrained on generic reading
   skills over it (never a stage-1 or stage-2 prompt), cached in WORKDIR/pretrain.
2. Every run below is `python -m mmrag_jax.main --config=configs/stage{1,2}.py:toy ...` in its own workdir,
   the command a 7B run uses; no supervised step on task targets (warmup.steps stays 0).
3. Rows, all on the val split of the world:
     base             the base model as stage-1 judge and stage-2 answerer (no RL)
     stage-2 RL only  stage-2 GRPO from the base model, on the base model's stage-1 ranking
     stage-1 RL only  the stage-1 GRPO judge's ranking, the base model's answers
     full method      stage-1 GRPO, then stage-2 GRPO from that policy on its ranking
     full, think off  the same, stage 2 without the <think> block (prompt and reward)
Columns: stage-1 recall@1 / @k of the ranking the row uses, Retr-F1 and QA-Acc (official WebQA metrics),
the stage-2 format rate, mean reward over the first / last 5 GRPO steps of each stage the row trained, and
the wall time of the runs the row needs (shared runs counted in each row that uses them). Reward curves:
WORKDIR/reward_curves_stage{1,2}.png. Last line: `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from mmrag_jax.benchmarks.report import print_result
from mmrag_jax.data.files import iter_json_lines

__all__ = ["main"]

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_STAGE1_CONFIG = os.path.join(_REPO, "configs", "stage1.py") + ":toy"
_STAGE2_CONFIG = os.path.join(_REPO, "configs", "stage2.py") + ":toy"
_EDGE_STEPS = 5  # "start" / "end" reward: the mean over this many first / last GRPO steps

# Settings per mode: the base model's pretraining, the world's size and the GRPO steps of each stage.
_SETTINGS = {
    "full": dict(pretrain=dict(), stage1_steps=40, stage2_steps=40),
    "quick": dict(pretrain=dict(num_train=48, num_val=24, num_test=4, steps=80, batch_size=16), stage1_steps=6,
                  stage2_steps=4),
}
_ROWS = (("base", "base"), ("stage2_only", "stage-2 RL only"), ("stage1_only", "stage-1 RL only"),
         ("full", "full method"), ("full_no_think", "full, think off"))


def _flags(overrides: Mapping[str, Any]) -> list[str]:
  return [f"--config.{k}={v}" for k, v in overrides.items()]


class _Runs:
  """Runs `python -m mmrag_jax.main` in workdirs under `root`; a workdir with summary.json is done."""

  def __init__(self, root: str, echo: bool):
    self.root, self.echo = root, echo
    self.seconds: dict[str, float] = {}
    env_cache = os.path.join(root, "jax_cache")  # compiled programs shared by the runs of the table
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", env_cache)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

  def path(self, name: str, *parts: str) -> str:
    return os.path.join(self.root, name, *parts)

  def main(self, name: str, config: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    from mmrag_jax.sweep.runner import launch

    workdir = self.path(name)
    summary = os.path.join(workdir, "summary.json")
    if not os.path.isfile(summary):
      os.makedirs(workdir, exist_ok=True)
      command = [sys.executable, "-m", "mmrag_jax.main", f"--config={config}", f"--workdir={workdir}",
                 *_flags(overrides)]
      print("$ " + " ".join(command[1:]), flush=True)
      started = time.perf_counter()
      rc = launch(command, os.path.join(self.root, f"{name}.log"), echo=self.echo)
      if rc != 0:
        raise RuntimeError(f"run {name} failed with exit code {rc}; see {os.path.join(self.root, name + '.log')}")
      self.seconds[name] = time.perf_counter() - started
      with open(os.path.join(self.root, f"{name}.seconds"), "w") as f:
        f.write(f"{self.seconds[name]}\n")
    elif os.path.isfile(os.path.join(self.root, f"{name}.seconds")):
      with open(os.path.join(self.root, f"{name}.seconds")) as f:
        self.seconds[name] = float(f.read())
    return _read_json(summary)


def _read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  return [row for _, _, row in iter_json_lines(path)] if os.path.isfile(path) else []


def _reward_edges(workdir: str) -> tuple[float | None, float | None]:
  """Mean `reward/total` over the first and the last EDGE_STEPS loop steps of a GRPO run."""
  rewards = _reward_curve(workdir)
  if not rewards:
    return None, None
  head, tail = rewards[:_EDGE_STEPS], rewards[-_EDGE_STEPS:]
  return sum(head) / len(head), sum(tail) / len(tail)


def _format_rate(workdir: str) -> float | None:
  """Share of the split's stage-2 completions that are well formed."""
  records = _read_jsonl(os.path.join(workdir, "predictions.jsonl"))
  return sum(bool(r["format_ok"]) for r in records) / len(records) if records else None


def _plot_rewards(curves: Mapping[str, Sequence[float]], title: str, out_png: str) -> str:
  """One line per run: mean reward per GRPO step."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(5.0, 3.0), dpi=100)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot(1, 1, 1)
  for label, values in curves.items():
    axes.plot(range(1, len(values) + 1), values, label=label, marker="o" if len(values) <= 40 else None,
              markersize=2.5)
  axes.set_xlabel("GRPO step")
  axes.set_ylabel("mean reward")
  axes.set_title(title, fontsize=10)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(out_png)
  return out_png


def _reward_curve(workdir: str) -> list[float]:
  return [row["reward/total"] for row in _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if isinstance(row.get("reward/total"), (int, float))]


def _run_table(root: str, seed: int, quick: bool, echo: bool = False) -> dict[str, Any]:
  """Pretraining, the seven runs and the table's figures (see the module docstring)."""
  from mmrag_jax.pretrain import PretrainConfig, pretrain

  settings = _SETTINGS["quick" if quick else "full"]
  started = time.perf_counter()
  os.makedirs(root, exist_ok=True)
  runs = _Runs(root, echo)
  base = pretrain(os.path.join(root, "pretrain"), PretrainConfig(seed=seed, **settings["pretrain"]))
  common = {"seed": seed, "model.path": base["model_dir"], "data.data_dir": base["data_dir"]}
  s1_steps, s2_steps = settings["stage1_steps"], settings["stage2_steps"]

  # The base model as its own stage-1 policy: its export is the base checkpoint, its rankings its scores.
  base_policy = runs.path("stage1_base", "export")
  if not os.path.isfile(os.path.join(base_policy, "config.json")):
    shutil.copytree(base["model_dir"], base_policy, dirs_exist_ok=True)
  for split in ("val", "train"):
    runs.main(f"stage1_base_{split}", _STAGE1_CONFIG, {**common, "mode": "eval", "data.eval_split": split})
    for name in (f"ranking_{split}.jsonl", f"recall_{split}.json"):
      shutil.copy2(runs.path(f"stage1_base_{split}", name), runs.path("stage1_base", name))
  runs.main("stage1", _STAGE1_CONFIG, {**common, "train.num_steps": s1_steps})

  def stage2(name: str, stage1: str, train: bool, **extra: Any) -> dict[str, Any]:
    overrides = {**common, "stage2.stage1_workdir": runs.path(stage1), **extra}
    if train:
      overrides["train.num_steps"] = s2_steps
    else:
      overrides.update({"mode": "eval", "stage2.init_from": base["model_dir"]})
    return runs.main(name, _STAGE2_CONFIG, overrides)

  plan = {  # row -> (stage-1 run, stage-2 run, trains stage 2, extra overrides)
      "base": ("stage1_base", "base_model", False, {}),
      "stage2_only": ("stage1_base", "stage2_only", True, {}),
      "stage1_only": ("stage1", "stage1_only", False, {}),
      "full": ("stage1", "full", True, {}),
      "full_no_think": ("stage1", "full_no_think", True, {"reward.think": "forbidden", "prompt.stage2_think": False}),
  }
  k = None
  rows: dict[str, dict[str, Any]] = {}
  for key, (stage1, name, train, extra) in plan.items():
    summary = stage2(name, stage1, train, **extra)
    metrics = summary["metrics"]
    k = k or _read_json(runs.path(name, "config.json"))["stage2"]["k"]
    recall = _read_json(runs.path(stage1, "recall_val.json"))
    s1_start, s1_end = _reward_edges(runs.path(stage1)) if stage1 == "stage1" else (None, None)
    s2_start, s2_end = _reward_edges(runs.path(name)) if train else (None, None)
    used = [name] + (["stage1"] if stage1 == "stage1" else ["stage1_base_val", "stage1_base_train"])
    rows[key] = {"recall@1": recall.get("recall@1"), f"recall@{k}": recall.get(f"recall@{k}"),
                 "retrieval_f1": metrics.get("retrieval_f1"), "qa_acc": metrics.get("qa_acc"),
                 "format_rate": _format_rate(runs.path(name)),
                 "stage1_reward": [s1_start, s1_end], "stage2_reward": [s2_start, s2_end],
                 "seconds": sum(runs.seconds.get(n, 0.0) for n in used)}

  _plot_rewards({"stage 1 (relevance judge)": _reward_curve(runs.path("stage1"))},
                f"Stage-1 GRPO, seed {seed}", os.path.join(root, "reward_curves_stage1.png"))
  _plot_rewards({label: _reward_curve(runs.path(key)) for key, label in _ROWS if plan[key][2]},
                f"Stage-2 GRPO, seed {seed}", os.path.join(root, "reward_curves_stage2.png"))
  return {"rows": rows, "k": k, "pretrain": {key: base[key] for key in ("num_examples", "nll_start", "nll_end")},
          "pretrain_seconds": base["seconds"], "seconds": time.perf_counter() - started}


def _fmt(value: Any, digits: int = 3) -> str:
  return "-" if value is None else f"{value:.{digits}f}"


def _print_learning_table(result: Mapping[str, Any]) -> None:
  k = result["k"]
  header = ("row", "recall@1", f"recall@{k}", "Retr-F1", "QA-Acc", "format", "s1 reward", "s2 reward", "time s")
  lines = [header]
  for key, label in _ROWS:
    r = result["rows"][key]
    edges = lambda pair: "-" if pair[0] is None else f"{pair[0]:.2f}->{pair[1]:.2f}"
    lines.append((label, _fmt(r["recall@1"]), _fmt(r[f"recall@{k}"]), _fmt(r["retrieval_f1"]), _fmt(r["qa_acc"]),
                  _fmt(r["format_rate"], 2), edges(r["stage1_reward"]), edges(r["stage2_reward"]),
                  f"{r['seconds']:.0f}"))
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
  for line in lines:
    print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))))


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="a smaller world and a few GRPO steps (<= 5 min)")
  parser.add_argument("--seed", type=int, default=0, help="the world's seed (names, cities, pictures)")
  parser.add_argument("--workdir", default="", help="default runs/learning_seed<N>[_quick]; cached runs are reused")
  parser.add_argument("--curves_dir", default="", help="also copy the reward-curve PNGs here")
  parser.add_argument("--echo", action="store_true", help="stream the runs' logs")
  args = parser.parse_args(argv)
  root = os.path.abspath(args.workdir or os.path.join("runs", f"learning_seed{args.seed}{'_quick' if args.quick else ''}"))
  result = _run_table(root, args.seed, args.quick, echo=args.echo)
  print(f"Learning table, seed {args.seed}{' (quick)' if args.quick else ''}, val split; workdir {root}")
  print(f"base model: {result['pretrain']['num_examples']} pretraining examples, token NLL "
        f"{result['pretrain']['nll_start']:.2f} -> {result['pretrain']['nll_end']:.2f}, "
        f"{result['pretrain_seconds']:.0f} s")
  _print_learning_table(result)
  for stage in (1, 2):
    png = os.path.join(root, f"reward_curves_stage{stage}.png")
    if args.curves_dir:
      os.makedirs(args.curves_dir, exist_ok=True)
      png = shutil.copy2(png, os.path.join(args.curves_dir, f"learning_seed{args.seed}_stage{stage}.png"))
    print(f"stage-{stage} reward curves: {png}")
  rows, k = result["rows"], result["k"]
  print_result({
      "seed": args.seed, "quick": args.quick, "k": k,
      "base_qa_acc": rows["base"]["qa_acc"], "full_qa_acc": rows["full"]["qa_acc"],
      "full_retrieval_f1": rows["full"]["retrieval_f1"], "full_stage1_recall_at_k": rows["full"][f"recall@{k}"],
      "base_stage1_recall_at_k": rows["base"][f"recall@{k}"],
      "rows": {key: {m: rows[key][m] for m in ("qa_acc", "retrieval_f1", "format_rate")} for key, _ in _ROWS},
      "seconds": result["seconds"]})
  return 0


if __name__ == "__main__":
  sys.exit(main())
