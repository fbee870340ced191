"""Bad configurations and missing inputs stop a run before any work, with an error naming the field."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mmrag_jax.recipe.checks import ConfigError
from mmrag_jax.recipe.run import run
from tests.recipe.conftest import REPO, load_config


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
    ("sampler buckets shorter than prompts", lambda: _demo(1, sampler__length_buckets=(128,)),
     "sampler.length_buckets", ["pipeline.length_buckets"]),
    ("unknown GRPO field", lambda: _demo(1, rl__clip=0.3), "rl", ["clip"]),
    ("bad reward policy", lambda: _demo(2, reward__think="sometimes"), "reward", ["think"]),
    ("patch budget not whole merge blocks", lambda: _demo(1, pipeline__patch_budget=10), "pipeline.patch_budget",
     ["multiple of 4"]),
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


def test_unknown_preset_lists_the_presets():
  with pytest.raises(ValueError, match=r"unknown preset 'huge'.*'demo', '3b', '7b'"):
    load_config("stage2", "huge")


def test_command_line_error_exits_with_the_field_and_the_demo_hint(tmp_path):
  done = subprocess.run([sys.executable, "-m", "mmrag_jax.main", "--config=configs/stage1.py",
                         f"--workdir={tmp_path}", "--config.rl.group_size=4"],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2, done.stderr[-2000:]
  assert "config.model.path: is empty" in done.stderr and "configs/stage2.py:demo" in done.stderr


def test_command_line_override_of_a_missing_field_names_it_and_its_siblings(tmp_path):
  done = subprocess.run([sys.executable, "-m", "mmrag_jax.main", "--config", "configs/stage1.py:demo",
                         f"--workdir={tmp_path}", "--config.rl.group_size=4", "--config.train.batchsize=8"],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 1, done.stderr[-2000:]
  assert "'train.batchsize': train has no field 'batchsize'" in done.stderr
  assert "'batch_size'" in done.stderr and "rl.group_size" not in done.stderr
  assert not os.listdir(tmp_path)  # nothing ran
