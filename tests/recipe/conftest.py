"""One small demo run (both stages, tiny model, synthetic WebQA) shared by the recipe tests."""

from __future__ import annotations

import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(name: str, arg: str | None = None):
  """configs/<name>.py:get_config(arg), loaded by path as `--config` does."""
  path = os.path.join(REPO, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"test_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def small_demo_config():
  """The demo preset made smaller: fewer questions, loop steps and warm-up steps."""
  c = load_config("stage2", "demo")
  for run in (c, c.stage1):
    run.data.synthetic_sizes = (8, 4, 2)
    run.train.num_steps = 2
    run.train.progress_bar = False
    run.train.batch_size = 8
    run.scorer.batch_size = 8
    run.predict.batch_size = 4
  c.stage1.warmup.steps = 4
  c.warmup.steps = 4
  return c


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
  """(workdir, summary) of `run(small demo config)` in train mode."""
  from mmrag_jax.recipe.run import run

  workdir = str(tmp_path_factory.mktemp("demo"))
  summary = run(small_demo_config(), workdir)
  return workdir, summary
