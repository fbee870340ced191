"""Bad configurations and missing inputs stop a run before any work, with an error naming the field."""

from __future__ import annotations

import os

import pytest

from mmrag_jax.recipe.presets import score_splits, stage1_run_config
from mmrag_jax.recipe.run import run
from mmrag_jax.recipe.settings import ConfigError, settings, validate
from tests.recipe.conftest import load_config


def _set(config, field, value):
  *parents, last = field.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[last] = value


def _demo(stage: int, **fields):
  config = load_config(f"stage{stage}", "demo")
  for field, value in fields.items():
    _set(config, field.replace("__", "."), value)
  return config


def _real(stage: int, **fields):
  config = load_config(f"stage{stage}")
  for field, value in fields.items():
    _set(config, field.replace("__", "."), value)
  return config


CASES = [
    # (case, config builder, field named, words the message must contain)
    ("batch not a whole number of groups", lambda: _demo(1, train__batch_size=10), "train.batch_size",
     ["rl.group_size=4"]),
    ("batch not divisible by the data-parallel mesh", lambda: _demo(1, mesh__shape=(1, 8, 1), train__batch_size=12),
     "train.batch_size", ["8 data-parallel"]),
    ("scorer batch not divisible by the mesh", lambda: _demo(1, mesh__shape=(1, 8, 1), scorer__batch_size=12),
     "scorer.batch_size", ["multiple of 8"]),
    ("mesh larger than the devices", lambda: _demo(1, mesh__shape=(1, 16, 1)), "mesh.shape", ["16 devices"]),
    ("group of one", lambda: _demo(1, rl__group_size=1), "rl.group_size", [">= 2"]),
    ("unknown mode", lambda: _demo(1, mode="serve"), "mode", ["train", "predict"]),
    ("split of the other dataset", lambda: _demo(1, data__eval_split="dev"), "data.eval_split", ["val"]),
    ("evaluating the unlabeled test split", lambda: _demo(2, mode="eval", data__eval_split="test"),
     "data.eval_split", ["predict"]),
    ("training on the test split", lambda: _demo(1, data__train_split="test"), "data.train_split", ["gold"]),
    ("unknown GRPO field", lambda: _demo(1, rl__clip=0.3), "rl", ["clip"]),
    ("bad reward policy", lambda: _demo(2, reward__think="sometimes"), "reward.think", ["sometimes"]),
    ("negative KL weight", lambda: _demo(1, rl__beta=-0.1), "rl.beta", ["non-negative"]),
    ("trainer temperature unlike the sampler's", lambda: _demo(1, sampler__temperature=0.7, rl__temperature=1.0),
     "rl.temperature", ["sampler.temperature=0.7"]),
    ("unknown frozen part", lambda: _demo(2, model__freeze_vision_tower="merger"), "model.freeze_vision_tower",
     ["tower_and_merger"]),
    ("unknown importance correction", lambda: _demo(1, rl__importance_correction="is"), "rl.importance_correction",
     ["tis"]),
    ("importance cap below one", lambda: _demo(1, rl__importance_cap=0.5), "rl.importance_cap", [">= 1"]),
    ("nan learning rate", lambda: _demo(1, rl__learning_rate=float("nan")), "rl.learning_rate", ["finite", "nan"]),
    ("infinite learning rate", lambda: _demo(2, rl__learning_rate=float("inf")), "rl.learning_rate", ["inf"]),
    ("infinite warm-up rate", lambda: _demo(1, warmup__learning_rate=float("inf")), "warmup.learning_rate",
     ["finite"]),
    ("negative warm-up rate", lambda: _demo(1, warmup__learning_rate=-1e-3), "warmup.learning_rate", ["> 0"]),
    ("nan reward weight", lambda: _demo(2, reward__answer_weight=float("nan")), "reward.answer_weight", ["finite"]),
    ("nan clip of the nested stage 1", lambda: _demo(2, stage1__rl__eps_high=float("nan")), "stage1.rl.eps_high",
     ["finite"]),
    ("zero sampling temperature", lambda: _demo(1, sampler__temperature=0.0), "sampler.temperature", ["> 0"]),
    ("nucleus mass above one", lambda: _demo(1, sampler__top_p=1.5), "sampler.top_p", ["(0, 1]"]),
    ("stage-1 score split of the other dataset",
     lambda: _demo(1, data__dataset="mmqa", data__eval_split="dev", stage1__score_splits=("train", "val")),
     "stage1.score_splits", ["'val'", "splits of mmqa"]),
    ("nested stage-1 score split that does not exist", lambda: _demo(2, stage1__stage1__score_splits=("tran",)),
     "stage1.stage1.score_splits", ["'tran'", "splits of webqa"]),
    ("nested stage 1 on its own data with the other dataset's split",
     lambda: _demo(2, stage1__data__data_dir="/data/mmqa", stage1__data__dataset="mmqa"), "stage1.data.eval_split",
     ["splits of mmqa", "'val'"]),
    ("stage-1 patch buckets below one batch", lambda: _demo(1, pipeline__patch_buckets=(64,)),
     "pipeline.patch_buckets", ["add a bucket >= 256"]),
    ("patch buckets not whole merge blocks", lambda: _demo(1, pipeline__patch_buckets=(10, 256)),
     "pipeline.patch_buckets", ["multiples of 4"]),
    ("no loop steps", lambda: _demo(1, train__num_steps=0), "train.num_steps", ["TrainerConfig", "positive int"]),
    ("negative checkpoint interval", lambda: _demo(2, train__checkpoint_every=-1), "train.checkpoint_every",
     ["non-negative int"]),
    ("negative seed", lambda: _demo(1, seed=-1), "seed", ["TrainerConfig.seed"]),
    ("no completion tokens", lambda: _demo(1, rl__max_new_tokens=0), "rl.max_new_tokens", ["positive int"]),
    ("no answer tokens", lambda: _demo(2, predict__max_new_tokens=0), "predict.max_new_tokens", [">= 1"]),
    ("empty scorer batch", lambda: _demo(1, scorer__batch_size=0), "scorer.batch_size", [">= 1"]),
    ("top-k of nothing", lambda: _demo(1, sampler__method="top_k", sampler__top_k=0), "sampler.top_k", [">= 1"]),
    ("unknown decode weights", lambda: _demo(1, sampler__decode_weights="sharded"), "sampler.decode_weights",
     ["gathered"]),
    ("unknown prompt field", lambda: _demo(1, prompt__style="short"), "prompt", ["style"]),
    ("nested stage-1 group of one", lambda: _demo(2, stage1__rl__group_size=1), "stage1.rl.group_size", [">= 2"]),
    ("real recipe without a checkpoint", lambda: _real(1), "model.path", ["--config.model.path", "demo"]),
    ("checkpoint path that does not exist", lambda: _real(1, model__path="/nonexistent/ckpt"), "model.path",
     ["does not exist"]),
    ("stage 2 without a stage-1 run", lambda: _real(2), "stage2.stage1_workdir",
     ["--config.stage2.stage1_workdir", "demo"]),
]


@pytest.mark.parametrize("case,build,field,words", CASES, ids=[c[0] for c in CASES])
def test_bad_config_names_the_field(case, build, field, words, tmp_path):
  config = build()
  if field == "model.path" and config.model.path:
    config.data.data_dir = str(tmp_path)  # only the checkpoint is missing
  with pytest.raises(ConfigError) as error:
    run(config, str(tmp_path / "run"))
  message = str(error.value)
  assert error.value.field == field and message.startswith(f"config.{field}:"), message
  for word in words:
    assert word in message, message
  assert not os.path.exists(tmp_path / "run" / "data"), "no work may start before validation"


def test_missing_data_dir_names_the_flag(tmp_path):
  config = _real(1, model__path=str(tmp_path))
  with pytest.raises(ConfigError, match=r"config\.data\.data_dir: is empty: set --config\.data\.data_dir"):
    run(config, str(tmp_path / "run"))


def test_stage1_workdir_without_outputs_lists_what_is_missing(tmp_path):
  config = _real(2, stage2__stage1_workdir=str(tmp_path))
  with pytest.raises(ConfigError, match=r"lacks \['export/config.json', 'ranking_val.jsonl', 'ranking_train.jsonl'\]"):
    run(config, str(tmp_path / "run"))


def test_k_above_every_candidate_pool_names_the_pool_sizes(tmp_path):
  # The demo's synthetic WebQA has 7-9 candidates per question; k=50 would also overflow the patch
  # buckets, but the cause is k.
  with pytest.raises(ConfigError) as error:
    run(_demo(2, stage2__k=50), str(tmp_path))
  message = str(error.value)
  assert error.value.field == "stage2.k", message
  assert "50 exceeds every candidate pool of split 'train'" in message and "use stage2.k <= " in message, message
  assert not os.path.exists(tmp_path / "stage1"), "stage 1 must not run before k is judged"


def test_stage2_patch_buckets_below_k_images_name_k(tmp_path):
  with pytest.raises(ConfigError) as error:
    run(_demo(2, stage2__k=5, pipeline__patch_buckets=(256,)), str(tmp_path))
  assert error.value.field == "pipeline.patch_buckets" and "stage2.k" in str(error.value), str(error.value)
  assert not os.path.exists(tmp_path / "stage1")


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("preset", ["demo", None])
def test_readme_mmqa_flags_score_the_train_and_dev_splits(stage, preset):
  config = load_config(f"stage{stage}", preset)
  config.data.dataset, config.data.eval_split = "mmqa", "dev"
  if stage == 2:
    config.stage2.run_stage1 = True
  validate(config)
  stage1 = config if stage == 1 else stage1_run_config(config)
  assert score_splits(stage1) == ("train", "dev")
  assert (stage1.data.dataset, stage1.data.eval_split) == ("mmqa", "dev")


def test_unknown_preset_lists_the_presets():
  with pytest.raises(ValueError, match=r"unknown preset 'huge'.*'demo', 'toy', '3b', '7b'"):
    load_config("stage2", "huge")


def test_the_trained_temperature_follows_the_sampler():
  assert settings(_demo(1, sampler__temperature=0.7)).grpo.temperature == 0.7
  assert settings(_demo(1, sampler__temperature=0.7, rl__temperature=0.7)).grpo.temperature == 0.7
  assert settings(_demo(1, sampler__method="greedy", sampler__temperature=0.7)).grpo.temperature == 1.0
