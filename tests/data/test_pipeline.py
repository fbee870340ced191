"""Stage-1 / stage-2 grain pipelines: static shapes, image tokens vs patches, labels vs prompts, resuming."""

import dataclasses
import itertools

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mmrag_jax.data import decode_image, read_mmqa, read_webqa
from mmrag_jax.data.pipeline import stage1_pipeline, stage2_pipeline
from mmrag_jax.model import prepare_inputs
from mmrag_jax.model.config import TINY_SPECIAL_IDS, tiny
from mmrag_jax.model.vision_index import max_frame_patches
from mmrag_jax.processing.prompts import ANSWER_STYLE
from mmrag_jax.sampling.prompt_batch import PromptTokens

IMAGE_PAD = TINY_SPECIAL_IDS["<|image_pad|>"]
VISION_START = TINY_SPECIAL_IDS["<|vision_start|>"]
K = 4


@pytest.fixture(scope="module")
def webqa_train(webqa_clean):
  data_dir, manifest = webqa_clean
  data = read_webqa(data_dir, "train", image_check="decode", verbose=False)
  return data, manifest


@pytest.fixture(scope="module")
def config(pipeline_config):
  return pipeline_config


def _take(dataset, n):
  return list(itertools.islice(iter(dataset), n))


def _row_images(batch, b):
  """(grids [m, 3], patch rows [p, 1176]) of row b's images."""
  prompts = batch.prompts
  start = int(prompts.image_counts[:b].sum())
  grids = prompts.image_grid_thw[start:start + prompts.image_counts[b]]
  first_patch = int(np.prod(prompts.image_grid_thw[:start], axis=1).sum())
  n_patches = int(np.prod(grids, axis=1).sum())
  if n_patches == 0:
    return grids, np.zeros((0, 1176), np.float32)
  return grids, prompts.pixel_values[first_patch:first_patch + n_patches]


def _arrays(batch):
  """Every array of a pipeline batch by name (prompt fields, then 'meta/<field>')."""
  out = {f.name: getattr(batch.prompts, f.name) for f in dataclasses.fields(batch.prompts)}
  out.update({f"meta/{k}": v for k, v in batch.meta.items()})
  return out


def _check_layout(batch, processor, buckets):
  """Left padding, bucketed length, <|image_pad|> runs = patches / 4 per image, patches from the real image."""
  prompts = batch.prompts
  length = prompts.input_ids.shape[1]
  lengths = prompts.attention_mask.sum(axis=1)
  assert length == min(bk for bk in buckets if bk >= lengths.max())
  assert len(prompts.image_grid_thw) == prompts.image_counts.sum()
  if prompts.pixel_values is None:
    assert prompts.num_patches == 0
  else:
    assert not prompts.pixel_values[prompts.num_patches:].any()
  for b in range(prompts.input_ids.shape[0]):
    mask = prompts.attention_mask[b]
    n = int(mask.sum())
    assert mask.tolist() == [0] * (length - n) + [1] * n
    if not prompts.valid[b]:  # a single pad token, no image
      assert n == 1 and prompts.input_ids[b, -1] == processor.pad_token_id and prompts.image_counts[b] == 0
      continue
    ids = prompts.input_ids[b, length - n:]
    grids, _ = _row_images(batch, b)
    starts = np.flatnonzero(ids == VISION_START)
    assert len(starts) == len(grids)
    for start, grid in zip(starts, grids):
      run = 0
      while ids[start + 1 + run] == IMAGE_PAD:
        run += 1
      assert run == np.prod(grid) // 4
    if len(grids) == 0:  # text only: plain RoPE positions 0..n-1 on all three axes
      assert (prompts.positions[:, b, length - n:] == np.arange(n)).all()
    assert prompts.rope_deltas[b] == prompts.positions[:, b].max() + 1 - n


def _decoded(processor, batch, b):
  n = int(batch.prompts.attention_mask[b].sum())
  return processor.decode(batch.prompts.input_ids[b, -n:])


def _candidate(questions, qid, cid):
  question = next(q for q in questions if q.qid == qid)
  return question, next(c for c in question.candidates if c.id == cid)


def test_stage1_batches_have_static_layout_and_labels_match_the_prompt(webqa_train, config, processor):
  data, manifest = webqa_train
  batches = _take(stage1_pipeline(data.questions, data.images, config, negatives_per_positive=1.0), 6)
  # One patch bucket (the batch's worst case) for every batch with an image; image-free batches carry none.
  assert {b.prompts.pixel_values.shape for b in batches if b.prompts.image_counts.any()} == {(4 * 64, 1176)}
  image_rows = 0
  for batch in batches:
    _check_layout(batch, processor, config.length_buckets)
    for b in np.flatnonzero(batch.prompts.valid):
      question, candidate = _candidate(data.questions, batch.meta["qid"][b], batch.meta["candidate_id"][b])
      assert batch.meta["label"][b] == int(candidate.id in manifest.questions[question.qid].gold_ids)
      assert batch.meta["candidate_kind"][b] == candidate.kind and batch.meta["category"][b] == question.category
      assert batch.meta["dataset"][b] == "webqa"
      text = _decoded(processor, batch, b)
      assert f"Question: {question.question}" in text and candidate.text in text and candidate.title in text
      grids, patches = _row_images(batch, b)
      assert len(grids) == (candidate.kind == "image")
      if candidate.kind == "image":
        image_rows += 1
        # Oracle: transformers' image processor applied to the stored image of this very candidate.
        image = decode_image(data.images.read_bytes(candidate.image_ref))
        expected = processor.image_processor([image], return_tensors="np")
        np.testing.assert_array_equal(grids, expected["image_grid_thw"])
        np.testing.assert_allclose(patches, expected["pixel_values"], rtol=0, atol=1e-6)
  assert image_rows > 0


def test_single_bucket_gives_identical_shapes_for_every_batch(webqa_train, config):
  data, _ = webqa_train
  single = dataclasses.replace(config, length_buckets=(1024,), num_epochs=1)
  batches = list(stage1_pipeline(data.questions, data.images, single))
  shapes = {tuple((k, np.shape(v)) for k, v in sorted(_arrays(b).items()) if k != "image_grid_thw")
            for b in batches if b.prompts.pixel_values is not None}
  assert len(batches) > 3 and len(shapes) == 1
  assert not batches[-1].prompts.valid.all() or len(batches) * 4 == sum(b.prompts.valid.sum() for b in batches)


def test_stage2_batches_number_candidates_as_their_gold_flags_say(webqa_train, config, processor):
  data, manifest = webqa_train
  batches = _take(stage2_pipeline(data.questions, data.images, config, k=K), 4)
  assert {b.meta["candidate_ids"].shape for b in batches} == {(4, K)}
  assert {b.prompts.pixel_values.shape for b in batches if b.prompts.image_counts.any()} == {(4 * K * 64, 1176)}
  for batch in batches:
    _check_layout(batch, processor, config.length_buckets)
    for b in np.flatnonzero(batch.prompts.valid):
      qid = batch.meta["qid"][b]
      gold = manifest.questions[qid].gold_ids
      ids = [c for c in batch.meta["candidate_ids"][b] if c]
      assert len(ids) == batch.meta["num_candidates"][b] == min(K, len(manifest.questions[qid].candidate_ids))
      assert batch.meta["candidate_is_gold"][b].tolist() == [c in gold for c in ids] + [False] * (K - len(ids))
      assert set(gold[:K]) <= set(ids)  # training rows hold every gold source (all fit k here)
      assert batch.meta["num_gold_total"][b] == len(gold) and batch.meta["labeled"][b]
      assert tuple(batch.meta["answers"][b]) == tuple(manifest.questions[qid].answers)
      text = _decoded(processor, batch, b)
      cursor = 0
      for number, cid in enumerate(ids, start=1):
        _, candidate = _candidate(data.questions, qid, cid)
        heading = f"[{number}] {'Image' if candidate.kind == 'image' else 'Text'} (title: {candidate.title})"
        cursor = text.index(heading, cursor)
      grids, _ = _row_images(batch, b)
      kinds = [_candidate(data.questions, qid, c)[1].kind for c in ids]
      assert len(grids) == kinds.count("image")


def test_stage2_mmqa_prompts_ask_for_short_answers(mmqa_planted, config, processor):
  data = read_mmqa(mmqa_planted[0], "dev", image_check="decode", verbose=False)
  batch = _take(stage2_pipeline(data.questions, data.images, config, k=K), 1)[0]
  _check_layout(batch, processor, config.length_buckets)
  assert batch.prompts.valid.all() and set(batch.meta["dataset"]) == {"mmqa"}
  for b in range(4):
    assert ANSWER_STYLE["mmqa"] in _decoded(processor, batch, b)


def test_epochs_cover_every_row_once_in_a_new_order(webqa_train, config):
  data, _ = webqa_train
  two_epochs = dataclasses.replace(config, num_epochs=2, batch_size=3)
  rows = [(b.meta["qid"][i], b.meta["candidate_id"][i]) for b in stage1_pipeline(data.questions, data.images, two_epochs)
          for i in np.flatnonzero(b.prompts.valid)]
  half = len(rows) // 2
  assert sorted(rows[:half]) == sorted(rows[half:]) and len(set(rows[:half])) == half
  assert rows[:half] != rows[half:]


def _save(directory, iterator):
  with ocp.CheckpointManager(directory) as manager:
    manager.save(0, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()


def _restore(directory, iterator):
  with ocp.CheckpointManager(directory) as manager:
    manager.restore(0, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(iterator)))


def _assert_same_batch(a, b):
  a, b = _arrays(a), _arrays(b)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_resume_from_saved_iterator_state_gives_the_identical_next_batches(webqa_train, config, tmp_path):
  data, _ = webqa_train
  iterator = iter(stage2_pipeline(data.questions, data.images, config, k=K))
  for _ in range(2):
    next(iterator)
  _save(tmp_path / "ckpt", iterator)
  expected = [next(iterator), next(iterator)]
  fresh = iter(stage2_pipeline(data.questions, data.images, config, k=K))
  _restore(tmp_path / "ckpt", fresh)
  for want in expected:
    _assert_same_batch(next(fresh), want)


def test_worker_processes_give_the_same_batches_and_restore_state(webqa_train, config, tmp_path):
  data, _ = webqa_train
  in_process = _take(stage1_pipeline(data.questions, data.images, config), 5)
  iterator = iter(stage1_pipeline(data.questions, data.images, dataclasses.replace(config, worker_count=2)))
  try:
    for want in in_process[:3]:
      _assert_same_batch(next(iterator), want)
    _save(tmp_path / "ckpt", iterator)
    for want in in_process[3:]:
      _assert_same_batch(next(iterator), want)
    # Restoring rewinds the running workers (a fresh-process restore is covered without workers above).
    _restore(tmp_path / "ckpt", iterator)
    for want in in_process[3:]:
      _assert_same_batch(next(iterator), want)
  finally:
    iterator.close()


def test_with_the_model_layout_the_workers_build_each_batchs_model_inputs(webqa_train, config):
  data, _ = webqa_train
  model = tiny().replace(frame_block_size=max_frame_patches(config.max_pixels, tiny().vision))
  layout = PromptTokens.of(model)
  iterator = iter(stage1_pipeline(data.questions, data.images, dataclasses.replace(config, worker_count=1,
                                                                                   layout=layout)))
  try:
    batches = [next(iterator) for _ in range(2)]
  finally:
    iterator.close()
  assert any(batch.prompts.pixel_values is not None for batch in batches)
  for batch in batches:
    prompts = batch.prompts
    built_layout, built = prompts.__dict__["_model_inputs"]  # came back from the worker process with it
    assert built_layout == layout and prompts.model_inputs(model) is built
    # The model's own preparation of the same processor batch (real pixel rows, padded to the batch's P).
    processed = {"input_ids": prompts.input_ids, "attention_mask": prompts.attention_mask}
    if prompts.pixel_values is not None:
      processed.update(pixel_values=prompts.pixel_values[:prompts.num_patches], image_grid_thw=prompts.image_grid_thw)
    want = prepare_inputs(processed, model, num_patches=prompts.patch_rows or None)
    assert jax.tree.structure(built) == jax.tree.structure(want)
    for got_leaf, want_leaf in zip(jax.tree.leaves(built), jax.tree.leaves(want)):
      np.testing.assert_array_equal(got_leaf, want_leaf)


def test_a_model_whose_token_ids_are_not_the_processors_is_refused(webqa_train, config):
  data, _ = webqa_train
  layout = dataclasses.replace(PromptTokens.of(tiny()), pad_token_id=3)
  with pytest.raises(ValueError, match="the processor of .* lays prompts out with"):
    next(iter(stage1_pipeline(data.questions, data.images, dataclasses.replace(config, layout=layout))))


def test_unreadable_image_drops_its_row_not_the_run(webqa_planted, config):
  data_dir, manifest = webqa_planted
  data = read_webqa(data_dir, "train", image_check="exists", verbose=False)
  bad_qid = manifest.planted["undecodable_image"][0]
  bad_question = next(q for q in data.questions if q.qid == bad_qid)
  truncated_or_bad = {c.id for c in bad_question.candidates if c.kind == "image" and c.id not in manifest.scenes}
  scoring = dataclasses.replace(config, num_epochs=1, shuffle=False)
  batches = list(stage1_pipeline(data.questions, data.images, scoring, negatives_per_positive=None))
  dropped = [(b.meta["qid"][i], b.meta["candidate_id"][i], b.meta["drop_reason"][i]) for b in batches
             for i in np.flatnonzero(~b.prompts.valid) if b.meta["qid"][i]]
  assert dropped == [(bad_qid, cid, "undecodable_image") for cid in truncated_or_bad]
  assert all(r == "" for b in batches for r, ok in zip(b.meta["drop_reason"], b.prompts.valid) if ok)


def test_rows_beyond_the_length_or_patch_budget_are_dropped(webqa_train, config):
  data, _ = webqa_train
  short = dataclasses.replace(config, length_buckets=(16,), num_epochs=1)
  batch = _take(stage1_pipeline(data.questions, data.images, short), 1)[0]
  assert batch.prompts.input_ids.shape == (4, 16) and not batch.prompts.valid.any()
  assert batch.prompts.pixel_values is None and batch.prompts.num_patches == 0
  assert list(batch.meta["drop_reason"]) == ["prompt_too_long"] * 4
  tight = dataclasses.replace(config, patch_buckets=(64,), num_epochs=1, shuffle=False)
  reasons = set()
  for batch in stage1_pipeline(data.questions, data.images, tight, negatives_per_positive=None):
    assert batch.prompts.pixel_values is None or batch.prompts.pixel_values.shape == (64, 1176)
    assert batch.prompts.num_patches <= 64
    reasons.update(r for r, qid, ok in zip(batch.meta["drop_reason"], batch.meta["qid"], batch.prompts.valid) if qid and not ok)
  assert reasons == {"patch_budget"}
