"""DAPO dynamic sampling: prompt re-assembly across pipeline batches, refills, metrics, exact resume."""

import dataclasses

import grain
import jax
import numpy as np
import pytest

from mmrag_jax.data.batching import BatchShapes, Collator, MetaField
from mmrag_jax.model.synthetic_batch import random_processor_batch
from mmrag_jax.parallel import make_mesh
from mmrag_jax.rl.batch import build_train_batch
from mmrag_jax.rl.dynamic_sampling import dynamic_sample, informative_groups, regroup_rollout, select_prompts
from mmrag_jax.rl.metrics_log import read_metrics
from mmrag_jax.rl.rollout import Rollout, collect_rollout
from mmrag_jax.rl.trainer import GRPOTrainer, TrainerConfig
from mmrag_jax.sampling.prompt_batch import PromptTokens
from tests.rl.conftest import TINY
from tests.rl.test_trainer_loop import (
    BATCH,
    GRPO,
    PROMPT_LENGTH,
    PROMPTS,
    SAMPLER,
    contains_target,
    detokenize,
    head_sum,
    pipeline_batch,
    prompt_dataset,
    without_timings,
)

PAD = TINY.pad_token_id
G = 2
META = {"qid": MetaField(object, ""), "label": MetaField(np.int32, -1),
        "candidate_is_gold": MetaField(np.bool_, False, width=2)}
# Per source batch, each prompt's parts (see `random_processor_batch`): text runs and image grids.
LAYOUTS = [
    [[3, (1, 4, 4), 2], [5], [2, (1, 2, 4), 1, (1, 4, 4)]],
    [[1, (1, 4, 6)], [(1, 2, 2), 4, (1, 2, 4)], [20]],  # its last prompt needs the 32 bucket
]
LENGTH_BUCKETS, PATCH_BUCKETS = (16, 32), (64, 128)


def encoded_prompt(parts, seed, qid):
  """One prompt as the pipeline's encoders give it to the collator (unpadded ids, its images, metadata)."""
  row = random_processor_batch([parts], TINY, seed=seed)
  grids = row.get("image_grid_thw", np.zeros((0, 3)))
  return {"input_ids": row["input_ids"][0].astype(np.int32),
          "pixel_values": row.get("pixel_values", np.zeros((0, 1176), np.float32)),
          "image_grid_thw": grids.astype(np.int32), "error": "", "error_reason": "",
          "meta": {"qid": qid, "label": seed % 3, "candidate_is_gold": (seed % 2 == 0,)}}


def collate(examples, batch_size, length_buckets=LENGTH_BUCKETS):
  """The pipeline's collator (`mmrag_jax.data.batching`): static-shape, left-padded, pixel rows bucketed."""
  shapes = BatchShapes(batch_size=batch_size, length_buckets=length_buckets, patch_buckets=PATCH_BUCKETS, max_images=8)
  return Collator(shapes, META, PromptTokens.of(TINY))(examples)


@pytest.fixture(scope="module")
def sources():
  """(examples per batch, pipeline batches): two batches of 4 rows, the last row of each padding."""
  examples = [[encoded_prompt(parts, seed=10 * b + r, qid=f"q{b}{r}") for r, parts in enumerate(layout)]
              for b, layout in enumerate(LAYOUTS)]
  return examples, [collate(e, batch_size=4) for e in examples]


def row_images(prompts, b):
  """(grids, patch rows) of row b of a prompt batch."""
  start = int(prompts.image_counts[:b].sum())
  grids = prompts.image_grid_thw[start:start + prompts.image_counts[b]]
  first = int(np.prod(prompts.image_grid_thw[:start], axis=1).sum())
  count = int(np.prod(grids, axis=1).sum())
  return grids, prompts.pixel_values[first:first + count] if count else np.zeros((0, 1176), np.float32)


PICKS = [(1, 1), (0, 2), (0, 1), (1, 0), (0, 0)]


def test_selected_prompts_keep_their_tokens_positions_images_and_metadata(sources):
  _, batches = sources
  selected = select_prompts(batches, PICKS, pad_token_id=PAD)
  got = selected.prompts
  width = max(b.prompts.length for b in batches)
  assert got.input_ids.shape == (5, width)
  for i, (b, row) in enumerate(PICKS):
    source = batches[b].prompts
    length = source.length
    np.testing.assert_array_equal(got.input_ids[i, width - length:], source.input_ids[row])
    assert (got.input_ids[i, :width - length] == PAD).all()
    assert (got.attention_mask[i, :width - length] == 0).all()
    np.testing.assert_array_equal(got.attention_mask[i, width - length:], source.attention_mask[row])
    np.testing.assert_array_equal(got.positions[:, i, width - length:], source.positions[:, row])
    for a, want in zip(row_images(got, i), row_images(source, row)):
      np.testing.assert_array_equal(a, want)
    for key in ("rope_deltas", "valid", "image_counts"):
      np.testing.assert_array_equal(getattr(got, key)[i], getattr(source, key)[row], err_msg=key)
    for key in ("qid", "label", "candidate_is_gold", "drop_reason"):
      np.testing.assert_array_equal(selected.meta[key][i], batches[b].meta[key][row], err_msg=key)
  assert len(got.image_grid_thw) == sum(batches[b].prompts.image_counts[r] for b, r in PICKS)


def test_selected_prompts_equal_a_batch_collated_from_the_same_examples(sources):
  examples, batches = sources
  selected = select_prompts(batches, PICKS, pad_token_id=PAD)
  # The collator computes M-RoPE positions on its own padding: the gathered rows must agree with them.
  direct = collate([examples[b][r] for b, r in PICKS], batch_size=len(PICKS),
                   length_buckets=(selected.prompts.length,))
  for field in dataclasses.fields(direct.prompts):
    np.testing.assert_array_equal(getattr(selected.prompts, field.name), getattr(direct.prompts, field.name),
                                  err_msg=field.name)
  for key in ("qid", "label", "candidate_is_gold"):
    np.testing.assert_array_equal(selected.meta[key], direct.meta[key], err_msg=key)


def test_a_padding_pick_is_a_single_pad_token_without_images(sources):
  _, batches = sources
  got = select_prompts(batches, [(0, 0), None], pad_token_id=PAD).prompts
  assert got.valid.tolist() == [True, False]
  assert got.attention_mask[1].tolist() == [0] * (got.length - 1) + [1]
  assert (got.input_ids[1] == PAD).all()
  assert got.image_counts.tolist() == [1, 0]
  assert got.num_patches == 16


def optional_row_fields(batch):
  """TrainBatch fields [N, T] the builder leaves None unless given (e.g. the sampling distribution's log-probs)."""
  return [f.name for f in dataclasses.fields(batch) if f.name not in ("inputs", "image_slots")
          and getattr(batch, f.name) is None]


def with_optional_rows(batch, rng):
  """The batch with every optional per-row field filled (random on loss tokens, 0 elsewhere)."""
  mask = np.asarray(batch.completion_mask)
  return dataclasses.replace(batch, **{name: (rng.normal(size=mask.shape) * mask).astype(np.float32)
                                       for name in optional_row_fields(batch)})


def host_rollout(batch, seed):
  """A Rollout of a pipeline batch built as `collect_rollout` builds it, with random completions."""
  rng = np.random.default_rng(seed)
  rows, width = batch.prompts.num_prompts * G, 5
  tokens, lengths = rng.integers(0, 400, (rows, width)), rng.integers(1, width + 1, rows)
  logprobs = rng.normal(-2, 0.5, (rows, width)).astype(np.float32)
  train_batch = with_optional_rows(build_train_batch(batch.prompts, tokens, lengths, logprobs, group_size=G,
                                                     config=TINY), rng)
  rewards = {"total": rng.random(rows).astype(np.float32), "format": rng.random(rows).astype(np.float32)}
  return Rollout(batch=train_batch, rewards=rewards, valid=np.repeat(batch.prompts.valid, G), lengths=lengths,
                 truncated=lengths == width, texts=[f"text {seed} {i}" for i in range(rows)])


def test_regrouped_train_batch_equals_one_built_from_a_batch_of_the_same_prompts(sources):
  examples, batches = sources
  rollouts = [host_rollout(b, seed=i) for i, b in enumerate(batches)]
  selected, got = regroup_rollout(batches, rollouts, PICKS, group_size=G, model_config=TINY)

  def rows(values):
    return np.concatenate([np.asarray(values[b])[r * G:(r + 1) * G] for b, r in PICKS])

  direct = collate([examples[b][r] for b, r in PICKS], batch_size=len(PICKS),
                   length_buckets=(selected.prompts.length,))
  want = build_train_batch(direct.prompts, rows([r.batch.completion_ids for r in rollouts]),
                           rows([r.lengths for r in rollouts]), rows([r.batch.sampler_logprobs for r in rollouts]),
                           group_size=G, config=TINY)
  want = dataclasses.replace(want, **{name: rows([getattr(r.batch, name) for r in rollouts])
                                      for name in optional_row_fields(want)})  # carried over, not rebuilt
  assert want.image_slots is not None
  got_leaves, structure = jax.tree.flatten(got.batch)
  want_leaves, want_structure = jax.tree.flatten(want)
  assert structure == want_structure
  for a, b in zip(got_leaves, want_leaves):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  for name in ("total", "format"):
    np.testing.assert_array_equal(got.rewards[name], rows([r.rewards[name] for r in rollouts]))
  np.testing.assert_array_equal(got.truncated, rows([r.truncated for r in rollouts]))
  assert got.texts == [t for b, r in PICKS for t in rollouts[b].texts[r * G:(r + 1) * G]]


def test_padding_groups_are_masked_out_of_the_train_batch(sources):
  _, batches = sources
  rollouts = [host_rollout(b, seed=i) for i, b in enumerate(batches)]
  _, got = regroup_rollout(batches, rollouts, [(1, 0), None], group_size=G, model_config=TINY)
  assert got.valid.tolist() == [True] * G + [False] * G
  for field in dataclasses.fields(got.batch):  # masks, log-probs, advantages: 0 on padding rows
    value = getattr(got.batch, field.name)
    if field.name not in ("inputs", "image_slots", "completion_ids", "group_size") and value is not None:
      assert not np.asarray(value)[G:].any(), field.name
  assert (got.batch.completion_ids[G:] == PAD).all() and got.batch.group_size == G
  np.testing.assert_array_equal(got.batch.completion_mask[:G], rollouts[1].batch.completion_mask[:G])


def test_informative_groups_are_the_valid_groups_with_unequal_rewards():
  rewards = np.array([1, 1, 0, 1, 0, 0, 1, 0], np.float32)
  valid = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)
  assert informative_groups(rewards, valid, group_size=2).tolist() == [False, True, False, False]


# -- the loop ------------------------------------------------------------------------------------
# In-order prompts 0..15, batches of 8: every batch holds 4 odd prompts.


def ordered_dataset():
  ids = np.random.default_rng(0).integers(0, 400, (PROMPTS, PROMPT_LENGTH)).astype(np.int32)
  rows = [{"input_ids": ids[i], "attention_mask": np.ones(PROMPT_LENGTH, np.int32), "prompt_index": np.int32(i)}
          for i in range(PROMPTS)]
  return grain.MapDataset.source(rows).repeat().batch(BATCH, batch_fn=pipeline_batch).to_iter_dataset()


def odd_prompts_informative(completions, metadata):
  """Rewards 0, 1, 0, 1, ... within the groups of odd prompts, all 0 for even ones (group-major rows)."""
  odd = metadata["prompt_index"] % 2 == 1
  return {"total": np.where(odd, np.arange(len(completions)) % 2, 0).astype(np.float32)}


def dynamic_trainer(make_tiny_policy, workdir, num_steps, *, reward_fn=contains_target, data=None, grpo=None,
                    **config):
  config = {"progress_bar": False, "eval_every": 1, "tensorboard": False, **config}
  grpo = grpo or dataclasses.replace(GRPO, dynamic_sampling=True)
  return GRPOTrainer(make_tiny_policy(init_std=0.02, seed=1), grpo, SAMPLER, TrainerConfig(num_steps=num_steps, **config),
                     mesh=make_mesh((1, 1, 1), jax.devices()[:1]), workdir=str(workdir),
                     data=iter(data if data is not None else prompt_dataset()), reward_fn=reward_fn,
                     detokenize=detokenize, eval_fn=head_sum)


def test_the_update_batch_holds_only_informative_groups(make_tiny_policy, tmp_path):
  model = dynamic_trainer(make_tiny_policy, tmp_path, 1).model()  # the policy on the device
  data = iter(ordered_dataset())

  def draw(index):
    batch = next(data)
    return batch, collect_rollout(model, batch, jax.random.PRNGKey(index), sampler_config=SAMPLER, group_size=8,
                                  reward_fn=odd_prompts_informative, detokenize=detokenize)

  # M = 2 batches of 8 prompts need 16 informative groups; every batch holds 4: 2 refills.
  sample = dynamic_sample(draw, micro_batches=2, max_refill_batches=4, group_size=8, model_config=model.config)
  assert len(sample.sampled) == 4 and len(sample.kept) == 2
  for prompts, rollout in zip(sample.prompts, sample.kept):
    assert prompts.prompts.valid.all() and (prompts.meta["prompt_index"] % 2 == 1).all()
    assert informative_groups(rollout.rewards["total"], rollout.valid, 8).all()
  # Sampling order: the odd prompts of batches 0 (0..7), 1 (8..15), 2, 3.
  assert [p.meta["prompt_index"].tolist() for p in sample.prompts] == [[1, 3, 5, 7, 9, 11, 13, 15]] * 2
  assert sample.metrics == {
      "dynamic_sampling/groups_dropped": 16.0, "dynamic_sampling/extra_batches": 2.0,
      "dynamic_sampling/rollouts_per_kept_group": 2.0, "dynamic_sampling/shortfall_groups": 0.0,
      "dynamic_sampling/groups_discarded": 0.0, "reward_kept/total": 0.5}


@pytest.mark.parametrize("refills, extra, shortfall", [(4, 2, 0), (1, 1, 4)])
def test_a_step_refills_as_the_configuration_implies(make_tiny_policy, tmp_path, refills, extra, shortfall):
  calls = []

  def counted(completions, metadata):
    calls.append(len(completions))
    return odd_prompts_informative(completions, metadata)

  grpo = dataclasses.replace(GRPO, dynamic_sampling=True, max_refill_batches=refills)
  trainer = dynamic_trainer(make_tiny_policy, tmp_path, 1, reward_fn=counted, data=ordered_dataset(), grpo=grpo,
                            micro_batches=2)
  metrics = trainer.train_step()
  assert len(calls) == 2 + extra  # the extra batches are consumed from the iterator within the step
  assert metrics["dynamic_sampling/extra_batches"] == extra
  assert metrics["dynamic_sampling/shortfall_groups"] == shortfall
  assert metrics["dynamic_sampling/groups_dropped"] == 4 * (2 + extra)
  assert metrics["reward/total"] == 0.25  # over every sampled completion: 4 of 8 prompts, half their samples
  assert metrics["reward_kept/total"] == 0.5
  assert metrics["valid_groups"] == 16 - shortfall  # advantage statistics over what is trained
  assert metrics["zero_variance_group_fraction"] == 0.0


def test_resumed_run_with_dynamic_sampling_equals_an_uninterrupted_run(make_tiny_policy, tmp_path):
  straight = dynamic_trainer(make_tiny_policy, tmp_path / "straight", 2, checkpoint_every=1)
  straight.run()
  dynamic_trainer(make_tiny_policy, tmp_path / "resumed", 1).run()
  resumed = dynamic_trainer(make_tiny_policy, tmp_path / "resumed", 2)
  assert resumed.step == 1
  resumed.run()
  expected, got = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
  assert [row["step"] for row in got] == [1, 2]
  assert all(row["dynamic_sampling/extra_batches"] > 0 for row in expected)  # the refills are exercised
  assert [without_timings(r) for r in got] == [without_timings(r) for r in expected]
  for a, b in zip(jax.tree.leaves(jax.tree.map(np.asarray, resumed.updater.params)),
                  jax.tree.leaves(jax.tree.map(np.asarray, straight.updater.params))):
    np.testing.assert_array_equal(a, b)
