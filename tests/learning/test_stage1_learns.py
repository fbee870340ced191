"""A few stage-1 GRPO steps from a small pretrained base model make it a relevance judge on held-out prompts.

Held-out prompts: every (question, candidate) pair of the val split of the base model's synthetic world
(never trained on). The measure is the expected relevance reward of the policy's judgment, balanced over
the labels (the stage-1 reward, 1 for a correct yes/no, averaged with the same weight on gold and
non-gold candidates, as the balanced training prompts weigh them):

    R = 1/2 * mean_{gold} P(yes) + 1/2 * mean_{non-gold} (1 - P(yes)) = 1/2 + (mean_gold P - mean_neg P) / 2

The margin no label-blind model reaches. A model whose P(yes) does not depend on relevance (any random
model, the base model's prior) has mean_gold P and mean_neg P as two means of the same [0, 1]-bounded
values, so by Hoeffding P(mean_gold P - mean_neg P >= eps) <= exp(-2 eps^2 / (1/n_gold + 1/n_neg)); hence
R >= 1/2 + eps / 2 happens with probability at most DELTA for such a model. The test asserts that the
trained judge clears that margin and gains at least as much over the base model it started from.

Status: expected to fail. The stand-in base model does not carry a name-matching feature that a few GRPO
steps could amplify: at this size its P(yes) is the same for every held-out candidate (measured R 0.500
before and after 8 steps, margin 0.160), and in the benchmark's larger base model its one-document yes/no
checks on held-out documents score 0.44-0.56 (BENCHMARKS.md, "Learning"). The test stays as the
specification the base model has to meet.
"""

from __future__ import annotations

import math
import os

import pytest

from mmrag_jax.data import read_webqa
from mmrag_jax.data.scores import read_stage1_scores
from mmrag_jax.pretrain import PretrainConfig, pretrain

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DELTA = 1e-3
# A small world and a small base model pretrained on the one-document yes/no checks only (seconds).
BASE = PretrainConfig(seed=11, num_train=32, num_val=32, num_test=2, hidden_size=64, num_layers=2, steps=60,
                      batch_size=16, tasks=("check",), max_new_tokens=8, length_buckets=(128,))
GRPO_STEPS = 6
NOT_YET = pytest.mark.xfail(reason="the toy base model has no relevance feature for GRPO to amplify yet (R stays "
                            "0.50); see the module docstring", strict=True)


def chance_margin(n_gold: int, n_neg: int, delta: float = DELTA) -> float:
  """m such that a label-blind judge reaches R >= 1/2 + m with probability <= delta (Hoeffding)."""
  eps = math.sqrt(math.log(1.0 / delta) * (1.0 / n_gold + 1.0 / n_neg) / 2.0)
  return eps / 2.0


def balanced_relevance_reward(data_dir: str, ranking_file: str) -> tuple[float, int, int]:
  """(R, n_gold, n_neg) of the val split's candidates under the P(yes) scores of `ranking_file`."""
  questions = read_webqa(data_dir, "val", verbose=False).questions
  scores = read_stage1_scores(ranking_file)
  gold, neg = [], []
  for q in questions:
    for c in q.candidates:
      (gold if c.id in set(q.gold_ids) else neg).append(scores[q.qid][c.id])
  reward = 0.5 * sum(gold) / len(gold) + 0.5 * sum(1.0 - p for p in neg) / len(neg)
  return reward, len(gold), len(neg)


def stage1_config(**fields):
  """configs/stage1.py:toy with `fields` set ('train.num_steps': 8, 'mode': 'eval', ...)."""
  from mmrag_jax.sweep.grid import load_config

  c = load_config(os.path.join(REPO, "configs", "stage1.py") + ":toy")
  for field, value in fields.items():
    *sections, name = field.split(".")
    node = c
    for section in sections:
      node = node[section]
    node[name] = value
  return c


@pytest.fixture(scope="session")
def base_model(tmp_path_factory):
  return pretrain(str(tmp_path_factory.mktemp("pretrain")), BASE, progress=False)


@pytest.fixture(scope="session")
def judged(base_model, tmp_path_factory):
  """(R of the base model, R after GRPO_STEPS stage-1 GRPO steps, the chance margin) on the val split."""
  from mmrag_jax.recipe.run import run

  data_dir = base_model["data_dir"]
  paths = {"model.path": base_model["model_dir"], "data.data_dir": data_dir, "seed": BASE.seed}
  before_dir = str(tmp_path_factory.mktemp("judge_before"))
  run(stage1_config(**paths, mode="eval"), before_dir)
  after_dir = str(tmp_path_factory.mktemp("judge_after"))
  run(stage1_config(**paths, **{"train.num_steps": GRPO_STEPS, "stage1.score_splits": ("val",)}), after_dir)
  before, n_gold, n_neg = balanced_relevance_reward(data_dir, os.path.join(before_dir, "ranking_val.jsonl"))
  after, _, _ = balanced_relevance_reward(data_dir, os.path.join(after_dir, "ranking_val.jsonl"))
  return before, after, chance_margin(n_gold, n_neg)


def test_pretraining_writes_a_loadable_base_model_and_caches_it(base_model):
  from mmrag_jax.model import load_pretrained

  model = load_pretrained(base_model["model_dir"], dtype="float32")
  assert model.config.text.hidden_size == BASE.hidden_size
  assert base_model["nll_end"] < 0.5 * base_model["nll_start"]
  again = pretrain(os.path.join(base_model["model_dir"], os.pardir), BASE, progress=False)
  assert again["seconds"] == base_model["seconds"]  # read back from pretrain.json, not trained again


def test_chance_margin_bounds_a_label_blind_judge():
  # Hoeffding: the bound is exp(-8 m^2 / (1/n_gold + 1/n_neg)) = DELTA at the margin.
  m = chance_margin(40, 200)
  assert math.isclose(math.exp(-8 * m * m / (1 / 40 + 1 / 200)), DELTA, rel_tol=1e-9)


@NOT_YET
def test_stage1_grpo_beats_every_label_blind_judge(judged):
  before, after, margin = judged
  assert after >= 0.5 + margin, (before, after, margin)


@NOT_YET
def test_stage1_grpo_gains_more_than_the_margin_over_its_base(judged):
  before, after, margin = judged
  assert after - before >= margin, (before, after, margin)
