"""The model on a (data=2, fsdp=2, tensor=2) mesh of emulated devices: placement and forward parity."""

import dataclasses

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmrag_jax.model import forward, load_pretrained, prepare_inputs
from mmrag_jax.parallel import logical_sharding, logical_to_mesh_spec, make_mesh
from mmrag_jax.parallel.sharding import variable_logical_axes
from tests.model.float64_reference import ROUNDOFF_FACTOR, float64_logits, roundoff

# Four rows (divisible by data * fsdp): images of several sizes, one text-only row, left padding.
ROWS = ([3, (1, 4, 6), 2], [5, (1, 2, 2), 4, (1, 4, 4), 1], [9, 3], [2, (1, 8, 8), 1])


@pytest.fixture(scope="module")
def mesh():
  return make_mesh((2, 2, 2))


@pytest.fixture(scope="module")
def sharded_model(hf_parity_model, tmp_path_factory, mesh):
  directory = tmp_path_factory.mktemp("sharded_checkpoint")
  hf_parity_model.save_pretrained(str(directory))
  return load_pretrained(str(directory), mesh=mesh)


def param_items(model):
  return list(nnx.to_flat_state(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(("path", "spec"), [
    (("language_model", "embed_tokens", "embedding"), P("tensor", "fsdp")),
    # decoder parameters are stacked [layers, ...]; the layer axis is not sharded
    (("language_model", "layers", "self_attn", "q_proj", "kernel"), P(None, "fsdp", "tensor")),
    (("language_model", "layers", "self_attn", "o_proj", "kernel"), P(None, "tensor", "fsdp")),
    (("language_model", "layers", "mlp", "down_proj", "kernel"), P(None, "tensor", "fsdp")),
    (("language_model", "layers", "input_layernorm", "weight"), P(None, None)),
    (("language_model", "norm", "weight"), P(None)),
    (("lm_head", "kernel"), P("fsdp", "tensor")),
    (("visual", "patch_embed", "proj", "kernel"), P(None, "fsdp")),
    # vision blocks too: [layers, Dv, 3 Dv]
    (("visual", "blocks", "attn", "qkv", "kernel"), P(None, "fsdp", "tensor")),
    (("visual", "blocks", "norm1", "weight"), P(None, None)),
    (("visual", "merger", "fc2", "kernel"), P("tensor", "fsdp")),
])
def test_load_pretrained_places_params_on_rule_shardings(sharded_model, mesh, path, spec):
  params = dict(param_items(sharded_model))
  value = params[path].get_value()
  assert value.sharding == NamedSharding(mesh, spec)


def test_every_param_follows_its_logical_axes(sharded_model, mesh):
  for path, variable in param_items(sharded_model):
    value = variable.get_value()
    names = variable_logical_axes(variable)
    assert names is not None, path
    expected = logical_to_mesh_spec(names, shape=value.shape, mesh=mesh)
    assert value.sharding == NamedSharding(mesh, expected), path
    assert len(value.addressable_shards) == 8


def test_sharded_params_equal_unsharded(sharded_model, flax_parity_model):
  unsharded = dict(param_items(flax_parity_model))
  for path, variable in param_items(sharded_model):
    np.testing.assert_array_equal(np.asarray(variable.get_value()), np.asarray(unsharded[path].get_value()),
                                  err_msg=str(path))


def shard_over_batch(inputs, mesh):
  """Batch-major arrays split over ('data', 'fsdp'); the vision arrays stay replicated."""
  rows = logical_sharding(mesh, ("batch", "length"))
  return dataclasses.replace(
      inputs,
      input_ids=jax.device_put(inputs.input_ids, rows),
      attention_mask=jax.device_put(inputs.attention_mask, rows),
      positions=jax.device_put(inputs.positions, logical_sharding(mesh, (None, "batch", "length"))),
      rope_deltas=jax.device_put(inputs.rope_deltas, logical_sharding(mesh, ("batch",))))


def test_sharded_forward_equals_unsharded_forward(sharded_model, flax_parity_model, hf_parity_model,
                                                   make_batch, torch_batch, tiny_config, mesh):
  batch = make_batch(ROWS, tiny_config, seed=3)
  inputs = prepare_inputs(batch, tiny_config)
  expected = np.asarray(nnx.jit(forward)(flax_parity_model, inputs))
  logits = nnx.jit(forward)(sharded_model, shard_over_batch(inputs, mesh))
  assert len(logits.sharding.device_set) == 8

  # Sharded contractions sum in another order: the two runs differ by float32 round-off, measured by
  # the reference's own (float32 against float64) on the same batch.
  with torch.no_grad():
    reference = hf_parity_model(**torch_batch(batch)).logits.numpy()
  real = batch["attention_mask"].astype(bool)
  exact = float64_logits(hf_parity_model, torch_batch(batch))
  unit = roundoff(reference[real], exact[real])
  sharded, unsharded = np.asarray(logits)[real], expected[real]
  print(f"sharded vs unsharded {np.abs(sharded - unsharded).max():.2e}, errors {roundoff(sharded, exact[real]):.2e}"
        f" and reference's {unit:.2e}")
  assert np.abs(sharded - unsharded).max() <= 2 * ROUNDOFF_FACTOR * unit
  assert roundoff(sharded, exact[real]) <= ROUNDOFF_FACTOR * unit
