"""`benchmarks.versus_trl`: both sides get the same prompts and generate exactly the workload's tokens, the
RESULT figures are TRL / ours over the timed steps only, and without TRL the benchmark says how to install it.

The sides are run at the quick size apart (TRL's full step; our rollout, whose compilation is a few seconds,
where our update's would be most of a minute on a busy 2-core machine)."""

from __future__ import annotations

import dataclasses
import json
import sys

import jax
import numpy as np
import pytest

from mmrag_jax.benchmarks import trl_peer, versus_trl
from mmrag_jax.benchmarks.report import print_result
from mmrag_jax.processing import load_processor
from mmrag_jax.rl.rollout import collect_rollout

needs_trl = pytest.mark.skipif(trl_peer.trl_missing() is not None,
                               reason=f"TRL is not installed ({trl_peer.INSTALL_HINT})")


@pytest.fixture(scope="module")
def work() -> versus_trl.Workload:
  return versus_trl.workload(quick=True, steps=1, warmup=0)


@pytest.fixture(scope="module")
def shared(work, tmp_path_factory):
  """(checkpoint dir, our processor, the prompts): the inputs `versus_trl._compare` gives both sides."""
  checkpoint = versus_trl.save_checkpoint(work.config, str(tmp_path_factory.mktemp("checkpoint")))
  processor = load_processor(checkpoint, min_pixels=56 * 56, max_pixels=56 * 84)
  return checkpoint, processor, versus_trl.make_prompts(work, processor)


def test_prompts_hold_the_workload_lengths_and_images(work, shared):
  _, processor, prompts = shared
  batch = versus_trl.processor_inputs(processor, prompts)
  real = batch["attention_mask"].sum(axis=1)
  assert [len(images) for _, images in prompts] == [1, 2]
  assert (real >= work.prompt_tokens).all() and (real < work.prompt_tokens + 8).all()
  # 56x56 px: 4x4 patches; 56x84: 4x6; rows of 14x14 px patches, 4 per image token.
  assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 6], [1, 4, 4]]
  assert int(batch["mm_token_type_ids"].sum()) == (16 + 24 + 16) // 4


@needs_trl
def test_trl_sees_our_prompts_and_generates_exactly_the_new_tokens(work, shared, tmp_path):
  checkpoint, processor, prompts = shared
  peer = trl_peer.TrlPeer(checkpoint, processor, work.config, prompts, group_size=work.group_size,
                          new_tokens=work.new_tokens, steps=1, reward=versus_trl.vowel_fraction,
                          output_dir=str(tmp_path))
  calls = []
  peer.after_step = lambda: calls.append(len(peer.steps))
  (step,) = peer.train()
  ours = versus_trl.processor_inputs(processor, prompts)["input_ids"]
  rows = work.prompts * work.group_size
  assert step.prompt_ids.shape == (rows, ours.shape[1])
  np.testing.assert_array_equal(step.prompt_ids, np.repeat(ours, work.group_size, axis=0))
  np.testing.assert_array_equal(step.completion_mask, np.ones((rows, work.new_tokens)))  # no early stop
  assert 0 < step.rollout_s < step.step_s and step.update_s > 0
  assert calls == [1]  # our turn comes after TRL's step was recorded


def test_our_rollout_generates_exactly_the_new_tokens_of_the_same_prompts(work, shared, tmp_path):
  checkpoint, processor, prompts = shared
  side = versus_trl.OurSide(checkpoint, processor, work, prompts, str(tmp_path))
  batch = next(side.trainer.data)
  rollout = collect_rollout(side.trainer.model(), batch, jax.random.key(0), sampler_config=side.sampler_config,
                            group_size=work.group_size, reward_fn=lambda texts, _: {"total": np.zeros(len(texts))},
                            detokenize=lambda ids: processor.decode(ids, skip_special_tokens=True))
  rows = work.prompts * work.group_size
  np.testing.assert_array_equal(rollout.lengths, np.full(rows, work.new_tokens))
  assert rollout.truncated.all()
  np.testing.assert_array_equal(batch.prompts.input_ids, side.first_batch["input_ids"])
  vision = [work.config.image_token_id, work.config.video_token_id, work.config.vision_start_token_id,
            work.config.vision_end_token_id]
  assert not np.isin(np.asarray(rollout.batch.completion_ids), vision).any()


def _our_steps(step_s, rollout_s):
  return [versus_trl.OurStep(step_s=s, rollout_s=r, update_s=s - r, completion_tokens=64, prompt_tokens=400)
          for s, r in zip(step_s, rollout_s)]


def test_summary_is_trl_over_ours_on_the_timed_steps(work, capsys):
  work = dataclasses.replace(work, steps=3, warmup=1)
  ours = _our_steps([20.0, 9.0, 1.0, 3.0, 2.0], [5.0, 4.0, 0.5, 1.0, 0.5])
  prompt_ids = np.full((2, 5), 7)
  trl_rows = np.repeat(prompt_ids, work.group_size, axis=0)
  trl = [trl_peer.TrlStep(step_s=s, rollout_s=r, prompt_ids=trl_rows, completion_mask=np.ones((8, 8)))
         for s, r in zip([3.0, 8.0, 2.0, 6.0, 4.0], [1.0, 1.0, 1.5, 2.0, 1.0])]
  comparison = versus_trl.Comparison(ours=ours, trl=trl, work=work, our_prompt_ids=prompt_ids, patches=56,
                                     setup_s=1.0, trl_setup_s=2.0)
  figures = versus_trl.summary(comparison)
  # Timed: steps 2..4 (the first is reported apart, one warm-up step is dropped).
  assert figures["step_median_s"] == 2.0 and figures["trl_step_median_s"] == 4.0
  assert figures["step_speedup_vs_trl"] == 2.0
  assert figures["rollout_speedup_vs_trl"] == 3.0  # medians 1.5 / 0.5
  assert figures["update_speedup_vs_trl"] == pytest.approx(3.0 / 1.5)  # medians of 0.5, 2, 1.5 vs 0.5, 4, 3
  assert (figures["step_min_s"], figures["step_max_s"]) == (1.0, 3.0)
  assert (figures["first_step_s"], figures["trl_first_step_s"]) == (20.0, 3.0)
  assert figures["same_prompts"] is True
  assert figures["trl_completion_tokens_per_step"] == [64] * 5 == figures["completion_tokens_per_step"]

  print_result(figures)
  line = capsys.readouterr().out.strip().splitlines()[-1]
  assert line.startswith("RESULT ") and json.loads(line[len("RESULT "):]) == figures


def test_summary_flags_different_prompts(work):
  ours = _our_steps([1.0, 1.0], [0.5, 0.5])
  trl = [trl_peer.TrlStep(step_s=1.0, rollout_s=0.5, prompt_ids=np.zeros((8, 5), int),
                          completion_mask=np.ones((8, 8))) for _ in range(2)]
  comparison = versus_trl.Comparison(ours=ours, trl=trl, work=work, our_prompt_ids=np.ones((2, 5), int),
                                     patches=56, setup_s=0.0, trl_setup_s=0.0)
  assert versus_trl.summary(comparison)["same_prompts"] is False


def test_without_trl_it_names_the_install_command_and_exits_nonzero(monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` raises ImportError
  with pytest.raises(SystemExit) as exit_info:
    versus_trl.main(["--quick"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "pip install -e '.[peer]'" in err and "Traceback" not in err


def test_large_doubles_every_width_of_the_same_work():
  base, large = versus_trl.workload(quick=False), versus_trl.workload(quick=False, large=True)
  assert (large.images, large.prompt_tokens, large.group_size, large.new_tokens) == (
      base.images, base.prompt_tokens, base.group_size, base.new_tokens)
  for section in ("text", "vision"):
    a, b = getattr(base.config, section), getattr(large.config, section)
    assert b.hidden_size == 2 * a.hidden_size and b.intermediate_size == 2 * a.intermediate_size
  assert large.config.text.num_hidden_layers == base.config.text.num_hidden_layers
  assert 3.5 < large.parameters / base.parameters < 4
  with pytest.raises(ValueError, match="pick one"):
    versus_trl.workload(quick=True, large=True)
