"""Hugging Face checkpoint import/export against checkpoints written and read by transformers itself."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from mmrag_jax.model.checkpoint import CheckpointError, load_pretrained, save_pretrained
from mmrag_jax.model.hf_keys import model_params
from mmrag_jax.model.qwen25vl import Qwen25VL, abstract_model
from mmrag_jax.parallel import make_mesh
from tests.model.float64_reference import ROUNDOFF_FACTOR, float64_logits, roundoff

GRID = np.array([[1, 4, 6], [1, 8, 4]])  # 6 + 8 merged image tokens


def _batch(config) -> dict[str, np.ndarray]:
  """One prompt with two images: text, <vs> 6 x <pad> <ve>, text, <vs> 8 x <pad> <ve>, text."""
  rng = np.random.default_rng(0)
  text = lambda n: list(rng.integers(0, 400, n))
  image = lambda n: [config.vision_start_token_id] + [config.image_token_id] * n + [config.vision_end_token_id]
  ids = np.array([text(3) + image(6) + text(2) + image(8) + text(4)], np.int64)
  pixels = rng.standard_normal((int(np.prod(GRID, axis=1).sum()), 1176)).astype(np.float32)
  return dict(input_ids=ids, attention_mask=np.ones_like(ids), pixel_values=pixels, image_grid_thw=GRID)


def _reference_logits(hf_model, batch, image_token_id) -> tuple[np.ndarray, np.ndarray]:
  """The reference's float32 logits [B, L, V] and the exact (float64) ones."""
  ids = torch.from_numpy(batch["input_ids"])
  inputs = dict(input_ids=ids, attention_mask=torch.from_numpy(batch["attention_mask"]),
                pixel_values=torch.from_numpy(batch["pixel_values"]),
                image_grid_thw=torch.from_numpy(batch["image_grid_thw"]),
                mm_token_type_ids=(ids == image_token_id).long())
  with torch.no_grad():
    return hf_model(**inputs).logits.numpy(), float64_logits(hf_model, inputs)


def _assert_logits_close(ours, reference):
  """Our float32 logits are as accurate as the reference's float32 logits (within ROUNDOFF_FACTOR)."""
  float32, exact = reference
  error, unit = roundoff(ours, exact), roundoff(float32, exact)
  print(f"logits: max error {error:.2e}, reference's {unit:.2e}")
  assert error <= ROUNDOFF_FACTOR * unit


def _flat_params(model) -> dict:
  return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _rewrite(src: str, dst: str, edit) -> str:
  """Copies checkpoint dir `src` to `dst` with its single safetensors file's tensors passed through `edit`."""
  shutil.copytree(src, dst)
  path = os.path.join(dst, "model.safetensors")
  save_file(edit(load_file(path)), path, metadata={"format": "pt"})
  return dst


@pytest.fixture(scope="module")
def published_dir(hf_model, tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("published"))
  hf_model.save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def loaded(published_dir) -> Qwen25VL:
  return load_pretrained(published_dir)


def test_transformers_writes_the_published_layout(published_dir):
  keys = load_file(os.path.join(published_dir, "model.safetensors")).keys()
  assert "visual.blocks.0.attn.qkv.weight" in keys and "model.layers.0.self_attn.q_proj.weight" in keys


def test_loaded_tensors_land_in_the_right_parameters(hf_model, loaded):
  sd = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  vis, lm = "model.visual.", "model.language_model."
  np.testing.assert_array_equal(loaded.visual.patch_embed.proj.kernel[...],
                                sd[vis + "patch_embed.proj.weight"].reshape(32, 1176).T)
  # The vision blocks are stacked too: `visual.blocks.{i}.*` is slice i.
  np.testing.assert_array_equal(loaded.visual.blocks.attn.qkv.kernel[2], sd[vis + "blocks.2.attn.qkv.weight"].T)
  np.testing.assert_array_equal(loaded.visual.blocks.mlp.down_proj.bias[3], sd[vis + "blocks.3.mlp.down_proj.bias"])
  np.testing.assert_array_equal(loaded.visual.merger.fc1.kernel[...], sd[vis + "merger.mlp.0.weight"].T)
  np.testing.assert_array_equal(loaded.visual.merger.fc2.bias[...], sd[vis + "merger.mlp.2.bias"])
  np.testing.assert_array_equal(loaded.language_model.embed_tokens.embedding[...], sd[lm + "embed_tokens.weight"])
  # The decoder's parameters are stacked over layers: `model.layers.{i}.*` is slice i.
  np.testing.assert_array_equal(loaded.language_model.layers.self_attn.k_proj.kernel[1],
                                sd[lm + "layers.1.self_attn.k_proj.weight"].T)
  np.testing.assert_array_equal(loaded.language_model.layers.post_attention_layernorm.weight[0],
                                sd[lm + "layers.0.post_attention_layernorm.weight"])
  np.testing.assert_array_equal(loaded.lm_head.kernel[...], sd["lm_head.weight"].T)
  table = model_params(loaded.config)
  assert len(sd) == len(table) and len(_flat_params(loaded)) == len({p.path for p in table})


def test_loaded_model_logits_match_reference(hf_model, loaded, tiny_config):
  batch = _batch(tiny_config)
  _assert_logits_close(loaded(**batch), _reference_logits(hf_model, batch, tiny_config.image_token_id))


def test_newer_layout_loads_the_same_parameters(published_dir, loaded, tmp_path):
  def to_newer(tensors):
    renamed = {}
    for key, value in tensors.items():
      if key.startswith("visual."):
        key = "model." + key
      elif key.startswith("model."):
        key = "model.language_model." + key.removeprefix("model.")
      renamed[key] = value
    return renamed

  newer = _rewrite(published_dir, str(tmp_path / "newer"), to_newer)
  assert "model.language_model.norm.weight" in load_file(os.path.join(newer, "model.safetensors"))
  want = _flat_params(loaded)
  got = _flat_params(load_pretrained(newer))
  assert got.keys() == want.keys()
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))


def test_sharded_checkpoint_with_index_loads(hf_model, loaded, tmp_path):
  hf_model.save_pretrained(tmp_path, max_shard_size="100KB")
  with open(tmp_path / "model.safetensors.index.json") as f:
    assert len(set(json.load(f)["weight_map"].values())) > 3
  want = _flat_params(loaded)
  got = _flat_params(load_pretrained(str(tmp_path)))
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))


def test_tied_head_checkpoint_loads_without_lm_head(make_hf_model, tiny_tied_config, tmp_path):
  hf_tied = make_hf_model(tiny_tied_config, seed=1)
  hf_tied.save_pretrained(tmp_path)
  assert "lm_head.weight" not in load_file(os.path.join(tmp_path, "model.safetensors"))
  model = load_pretrained(str(tmp_path))
  assert model.config.text.tie_word_embeddings and model.lm_head is None
  batch = _batch(tiny_tied_config)
  _assert_logits_close(model(**batch), _reference_logits(hf_tied, batch, tiny_tied_config.image_token_id))


def test_tied_checkpoint_may_carry_an_identical_head_copy(make_hf_model, tiny_tied_config, tmp_path):
  make_hf_model(tiny_tied_config, seed=1).save_pretrained(tmp_path / "tied")
  with_copy = _rewrite(str(tmp_path / "tied"), str(tmp_path / "copy"),
                       lambda t: {**t, "lm_head.weight": t["model.embed_tokens.weight"].copy()})
  assert load_pretrained(with_copy).lm_head is None
  differing = _rewrite(str(tmp_path / "tied"), str(tmp_path / "differing"),
                       lambda t: {**t, "lm_head.weight": t["model.embed_tokens.weight"] + 1.0})
  with pytest.raises(CheckpointError, match="unexpected key 'lm_head.weight': the head is tied"):
    load_pretrained(differing)


def test_export_loads_in_transformers_with_equal_logits(tiny_config, tmp_path):
  # A model that never came from transformers, with large random weights, so no bug can cancel out.
  graphdef, abstract_state = nnx.split(abstract_model(tiny_config))
  rng = np.random.default_rng(5)
  ours = nnx.merge(graphdef, jax.tree.map(
      lambda a: (0.2 * rng.standard_normal(a.shape)).astype(a.dtype), abstract_state))
  save_pretrained(ours, str(tmp_path), max_shard_bytes=200_000)
  assert os.path.exists(tmp_path / "model.safetensors.index.json")

  hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
      str(tmp_path), attn_implementation="eager", dtype=torch.float32).eval()
  batch = _batch(tiny_config)
  _assert_logits_close(ours(**batch), _reference_logits(hf, batch, tiny_config.image_token_id))
  # And back: our loader reads our own export bit-exactly.
  again = _flat_params(load_pretrained(str(tmp_path)))
  for path, value in _flat_params(ours).items():
    np.testing.assert_array_equal(again[path], value, err_msg=str(path))


def test_bfloat16_export_round_trips_at_bfloat16(loaded, tmp_path):
  save_pretrained(loaded, str(tmp_path), dtype="bfloat16")
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["torch_dtype"] == "bfloat16"
  model = load_pretrained(str(tmp_path))  # storage dtype defaults to the checkpoint's
  assert model.config.param_dtype == "bfloat16"
  kernel = model.visual.blocks.attn.qkv.kernel[...]  # [depth, Dv, 3 Dv]
  assert kernel.dtype == jnp.bfloat16
  np.testing.assert_array_equal(kernel, loaded.visual.blocks.attn.qkv.kernel[...].astype(jnp.bfloat16))


def test_load_onto_a_mesh_shards_every_parameter(published_dir, loaded):
  mesh = make_mesh((2, 2, 2))
  model = load_pretrained(published_dir, mesh=mesh)
  qkv = model.visual.blocks.attn.qkv.kernel[...]  # [depth, Dv, 3 Dv]: the block axis is not sharded
  embedding = model.language_model.embed_tokens.embedding[...]
  assert qkv.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert embedding.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  assert all(v.get_value().sharding.mesh.shape == mesh.shape
             for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
  np.testing.assert_array_equal(qkv, loaded.visual.blocks.attn.qkv.kernel[...])
  np.testing.assert_array_equal(embedding, loaded.language_model.embed_tokens.embedding[...])


@pytest.mark.parametrize("edit, message", [
    (lambda t: {k: v for k, v in t.items() if k != "visual.blocks.1.mlp.up_proj.bias"},
     r"missing key 'visual\.blocks\.1\.mlp\.up_proj\.bias'"),
    (lambda t: {**t, "model.layers.0.mlp.extra_proj.weight": np.zeros((2, 2), np.float32)},
     r"unexpected key 'model\.layers\.0\.mlp\.extra_proj\.weight'"),
    (lambda t: {**t, "model.norm.weight": np.ones(63, np.float32)},
     r"wrong shape for key 'model\.norm\.weight': checkpoint has \(63,\), the model needs \(64,\)"),
])
def test_loader_errors_name_the_key(published_dir, tmp_path, edit, message):
  broken = _rewrite(published_dir, str(tmp_path / "broken"), edit)
  with pytest.raises(CheckpointError, match=message):
    load_pretrained(broken)
