"""The pretraining's sequence loss against a numpy computation, its extra worlds, and its settings' errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mmrag_jax.pretrain import PretrainConfig, pretrain
from mmrag_jax.pretrain.train import extra_world_examples, model_config, sequence_loss, world_seed


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_sequence_loss_is_the_masked_next_token_nll():
  import jax.numpy as jnp
  from flax import nnx

  from mmrag_jax.model import Qwen25VL, forward
  from mmrag_jax.sampling import prompt_batch

  layout = model_config(PretrainConfig(hidden_size=32, num_layers=1, vision_depth=1))
  # The loss reads the image placeholder id from the model's config: here a text id the batch holds once,
  # so that a text-only batch checks its exclusion.
  config = dataclasses.replace(layout, image_token_id=7)
  model = Qwen25VL(config, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  ids = rng.integers(20, 300, size=(3, 9)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, :4] = 0  # left padding
  mask[2, :8] = 0  # one real token: nothing to predict
  ids[0, 3] = config.image_token_id  # an image placeholder is never a label
  inputs = prompt_batch({"input_ids": ids, "attention_mask": mask}, layout).model_inputs(layout)
  target_tokens = np.array([3, 2, 1], np.int32)
  loss, target_nll = (float(v) for v in sequence_loss(model, inputs, jnp.asarray(target_tokens)))

  logp = _log_softmax(np.asarray(forward(model, inputs), np.float64))
  labels = ids[:, 1:]
  nll = -np.take_along_axis(logp[:, :-1], labels[..., None], axis=-1)[..., 0]
  real = (mask[:, 1:] * mask[:, :-1] * (labels != config.image_token_id)).astype(bool)
  assert real.sum() == 8 + 4 - 1
  in_target = np.zeros_like(real)
  for row, t in enumerate(target_tokens):
    in_target[row, labels.shape[1] - t:] = True
  in_target &= real
  np.testing.assert_allclose(loss, nll[real].mean(), rtol=2e-5)
  np.testing.assert_allclose(target_nll, nll[in_target].mean(), rtol=2e-5)


def test_extra_worlds_bring_documents_the_benchmark_world_never_shows(tmp_path):
  config = PretrainConfig(seed=3, num_train=8, extra_worlds=2, tasks=("check",))
  examples = extra_world_examples(str(tmp_path), config)
  assert world_seed(3, 0) != world_seed(3, 1) and world_seed(3, 0) not in range(1000)
  assert examples and {os_dir.name for os_dir in (tmp_path / "worlds").iterdir()} == {"0", "1"}
  images = [c for ex in examples for c in ex.candidates if c.kind == "image"]
  assert images and all(c.image_bytes for c in images)  # pictures travel with the records
  from mmrag_jax.data import read_webqa
  from mmrag_jax.data.synthetic import generate_webqa

  generate_webqa(str(tmp_path / "own"), num_train=8, num_val=0, num_test=0, seed=3)
  own_titles = {c.title for q in read_webqa(str(tmp_path / "own"), "train", verbose=False).questions
                for c in q.candidates}
  extra_titles = {c.title for ex in examples for c in ex.candidates}
  assert len(extra_titles - own_titles) > len(extra_titles) // 2


def test_sequence_pretraining_runs_and_writes_a_loadable_model(tmp_path):
  from mmrag_jax.model import load_pretrained

  config = PretrainConfig(seed=5, num_train=8, num_val=2, num_test=1, hidden_size=32, num_layers=1, vision_depth=1,
                          steps=3, batch_size=4, tasks=("check",), max_new_tokens=8, length_buckets=(128,),
                          loss="sequence")
  result = pretrain(str(tmp_path), config, progress=False)
  assert len(result["nll_curve"]) == 3 and all(np.isfinite(result["nll_curve"]))
  assert load_pretrained(result["model_dir"], dtype="float32").config.text.hidden_size == 32


@pytest.mark.parametrize("field, value", [("loss", "tokens"), ("extra_worlds", -1)])
def test_bad_pretraining_settings_name_the_field(field, value):
  with pytest.raises(ValueError, match=f"PretrainConfig.{field}"):
    PretrainConfig(**{field: value})
