"""Host-side assembly of a rollout: pipeline batch -> metadata, rewards, TrainBatch."""

import numpy as np
import pytest

from mmrag_jax.data.batching import PipelineBatch
from mmrag_jax.model import tiny
from mmrag_jax.rl.batch import build_train_batch, group_image_slots
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.reward_fns import stage1_reward_fn, stage2_reward_fn
from mmrag_jax.rl.rewards import (
    MMQAAnswer,
    Stage2Reference,
    WebQAAnswer,
    stage1_rewards,
    stage2_rewards,
)
from mmrag_jax.rl.rollout import checked_rewards, prompt_metadata
from mmrag_jax.rl.trainer import TrainerConfig
from mmrag_jax.sampling import prompt_batch

CONFIG = tiny()
PAD = CONFIG.pad_token_id


def pipeline_batch():
  """Two prompts shaped like `mmrag_jax.data.batching` output: row 0 with a 4x4-patch image, row 1 a
  dropped example (all padding); pixel rows padded beyond what is used."""
  ids = np.full((2, 8), PAD, np.int32)
  ids[0, 1:] = [5, CONFIG.vision_start_token_id] + [CONFIG.image_token_id] * 4 + [CONFIG.vision_end_token_id]
  mask = (ids != PAD).astype(np.int32)
  pixels = np.random.default_rng(0).normal(size=(16, 1176)).astype(np.float32)
  processed = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels,
               "image_grid_thw": np.array([[1, 4, 4]], np.int32)}
  prompts = prompt_batch(processed, CONFIG, length_buckets=(8,), patch_buckets=(32,), valid=np.array([True, False]))
  meta = {"qid": np.array(["q0", ""], object), "label": np.array([1, -1], np.int32)}
  return PipelineBatch(prompts=prompts, meta=meta)


def test_a_row_without_tokens_becomes_one_real_pad_token():
  prompts = pipeline_batch().prompts
  np.testing.assert_array_equal(prompts.attention_mask[1], [0] * 7 + [1])
  np.testing.assert_array_equal(prompts.image_counts, [1, 0])
  assert prompts.patch_rows == 32 and prompts.num_patches == 16


def test_prompt_metadata_repeats_each_prompt_for_its_samples():
  meta = prompt_metadata(pipeline_batch().meta, group_size=3)
  assert sorted(meta) == ["label", "qid"]
  assert meta["qid"].tolist() == ["q0"] * 3 + [""] * 3
  assert meta["label"].tolist() == [1, 1, 1, -1, -1, -1]


def test_reward_outputs_are_checked():
  with pytest.raises(ValueError, match="'total'"):
    checked_rewards({"format": np.zeros(4)}, 4)
  with pytest.raises(ValueError, match="'format' has shape"):
    checked_rewards({"total": np.zeros(4), "format": np.zeros(3)}, 4)


def test_stage1_reward_fn_scores_against_the_label():
  completions = ["<answer>yes</answer>", "<answer>no</answer>", "<answer>yes</answer>", "maybe"]
  rewards = stage1_reward_fn()(completions, {"label": np.array([1, 1, 0, 0])})
  expected = stage1_rewards(completions, [True, True, False, False])
  np.testing.assert_allclose(rewards["total"], expected.total)
  np.testing.assert_allclose(rewards["relevance"], [1, 0, 0, 0])


def test_stage2_reward_fn_builds_webqa_and_mmqa_references():
  completions = ["<think>r</think><evidence>[2]</evidence><answer>It is red.</answer>",
                 "<think>r</think><evidence>[1], [3]</evidence><answer>Paris; Lyon</answer>"]
  answers = np.empty(2, object)  # one tuple of answer strings per row, as the pipeline collates them
  answers[0], answers[1] = ("The roof is red.",), ("Paris", "Lyon")
  metadata = {
      "answers": answers,
      "category": np.array(["color", "TextQ"], object),
      "num_candidates": np.array([3, 3]),
      "candidate_is_gold": np.array([[False, True, False, False], [True, False, False, False]]),
  }
  rewards = stage2_reward_fn()(completions, metadata)
  references = [Stage2Reference(3, (2,), WebQAAnswer("The roof is red.", "color")),
                Stage2Reference(3, (1,), MMQAAnswer(("Paris", "Lyon")))]
  expected = stage2_rewards(completions, references)
  np.testing.assert_allclose(rewards["total"], expected.total)
  for name, values in expected.components.items():
    np.testing.assert_allclose(rewards[name], values, err_msg=name)


def test_train_batch_continues_positions_after_the_prompt_and_masks_padding():
  prompts = pipeline_batch().prompts  # row 1 is not valid
  tokens = np.array([[7, 8, 9], [7, 8, 9], [1, 2, 3], [4, 5, 6]])
  batch = build_train_batch(prompts, tokens, np.array([3, 1, 2, 3]), np.full((4, 3), -1.0, np.float32),
                            group_size=2, config=CONFIG)
  # Row 0: 2 text tokens, a 2x2 merged image (advances 2), vision_end: positions run 0..4, so the
  # completion starts at 5 on all three axes.
  np.testing.assert_array_equal(batch.inputs.positions[:, 0, 8:], [[5, 6, 7]] * 3)
  np.testing.assert_array_equal(batch.completion_mask, [[1, 1, 1], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(batch.completion_ids[1], [7, PAD, PAD])
  np.testing.assert_array_equal(batch.inputs.attention_mask[1, 8:], [1, 0, 0])
  np.testing.assert_array_equal(batch.sampler_logprobs[1], [-1, 0, 0])
  np.testing.assert_array_equal(batch.inputs.input_ids[:2, :8], prompts.input_ids[[0, 0]])


def test_group_image_slots_point_every_group_member_at_its_own_copy():
  # Prompt batch B=2, Lp=4: image tokens at (row 0, col 2) and (row 1, col 1), one padding entry.
  scatter = np.array([2, 5, 8])
  slots = group_image_slots(scatter, num_prompts=2, prompt_length=4, total_length=6, group_size=2)
  # Row b*G + g of the [4, 6] batch, same column; padding -> 4 * 6.
  np.testing.assert_array_equal(slots, [[0 * 6 + 2, 2 * 6 + 1, 24], [1 * 6 + 2, 3 * 6 + 1, 24]])


def test_build_train_batch_rejects_completions_of_the_wrong_shape():
  prompts = pipeline_batch().prompts
  with pytest.raises(ValueError, match="group_size=2 need 4"):
    build_train_batch(prompts, np.zeros((3, 2)), np.ones(3), np.zeros((3, 2)), group_size=2, config=CONFIG)
  with pytest.raises(ValueError, match="completion_lengths"):
    build_train_batch(prompts, np.zeros((4, 2)), np.full(4, 3), np.zeros((4, 2)), group_size=2, config=CONFIG)


def test_configs_name_the_bad_field():
  with pytest.raises(ValueError, match="unknown GRPOConfig field.*'group'"):
    GRPOConfig.from_mapping({"group": 8})
  with pytest.raises(ValueError, match="GRPOConfig.group_size"):
    GRPOConfig(group_size=1)
  with pytest.raises(ValueError, match="GRPOConfig.aggregation"):
    GRPOConfig(aggregation="mean")
  with pytest.raises(ValueError, match="GRPOConfig.old_logprobs"):
    GRPOConfig(old_logprobs="reference")
  with pytest.raises(ValueError, match="TrainerConfig.micro_batches"):
    TrainerConfig(num_steps=3, micro_batches=0)
  assert GRPOConfig.from_mapping({"group_size": 4, "max_new_tokens": 64}).loss_config().norm_length == 64
