"""Logical axis names -> PartitionSpecs: hand-written cases, fallbacks, and agreement with flax's rules."""

import logging

import flax.core.spmd
import jax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from mmrag_jax.parallel import DEFAULT_RULES, logical_to_mesh_spec, make_mesh


@pytest.fixture(scope="module")
def mesh():
  return make_mesh((2, 2, 2))


@pytest.mark.parametrize(("names", "expected"), [
    (("vocab", "embed"), P("tensor", "fsdp")),
    (("embed", "q_heads"), P("fsdp", "tensor")),
    (("q_heads", "embed"), P("tensor", "fsdp")),
    (("embed", "mlp"), P("fsdp", "tensor")),
    (("norm",), P(None)),
    (("batch", "length"), P(("data", "fsdp"), None)),
    (("vis_patch", "vis_embed"), P(None, "fsdp")),
    (("vis_embed", "vis_qkv"), P("fsdp", "tensor")),
    (("vis_merge", "vis_mlp"), P("fsdp", "tensor")),
    # Pixel rows split over every axis, so the attention heads beside them stay whole.
    (("vis_rows", "vis_heads", None), P(("data", "fsdp", "tensor"), None, None)),
    (("vis_tokens", "embed"), P(("data", "fsdp", "tensor"), None)),
    ((None, "embed"), P(None, "fsdp")),
])
def test_default_rules(names, expected):
  assert logical_to_mesh_spec(names, DEFAULT_RULES) == expected


def test_a_mesh_axis_shards_only_the_first_dim_that_claims_it():
  # 'embed' also wants 'fsdp', which 'batch' already took.
  assert logical_to_mesh_spec(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)
  assert logical_to_mesh_spec(("vocab", "mlp")) == P("tensor", None)


def test_custom_rules_first_match_wins():
  rules = (("embed", ("fsdp", "tensor")), ("embed", None), ("mlp", None))
  assert logical_to_mesh_spec(("embed", "mlp"), rules) == P(("fsdp", "tensor"), None)


def test_indivisible_dim_falls_back_to_replication_and_logs_once(mesh, caplog):
  with caplog.at_level(logging.WARNING, logger="mmrag_jax.parallel.rules"):
    # 503 rows (the tiny tokenizer's count) do not split over tensor=2; 64 splits over fsdp=2.
    assert logical_to_mesh_spec(("vocab", "embed"), shape=(503, 64), mesh=mesh) == P(None, "fsdp")
    assert logical_to_mesh_spec(("vocab", "embed"), shape=(503, 64), mesh=mesh) == P(None, "fsdp")
  fallbacks = [r for r in caplog.records if "'vocab' of size 503" in r.getMessage()]
  assert len(fallbacks) == 1


def test_indivisible_multi_axis_dim_keeps_the_longest_dividing_prefix(mesh):
  assert logical_to_mesh_spec(("batch", "length"), shape=(4, 7), mesh=mesh) == P(("data", "fsdp"), None)
  assert logical_to_mesh_spec(("batch", "length"), shape=(2, 7), mesh=mesh) == P("data", None)
  assert logical_to_mesh_spec(("batch", "length"), shape=(3, 7), mesh=mesh) == P(None, None)


def test_errors_name_the_problem(mesh):
  with pytest.raises(ValueError, match="'heads' has no sharding rule"):
    logical_to_mesh_spec(("heads",))
  with pytest.raises(ValueError, match=r"not in mesh axes"):
    logical_to_mesh_spec(("embed",), (("embed", "model"),), mesh=mesh)
  with pytest.raises(ValueError, match=r"do not match an array of shape \(4,\)"):
    logical_to_mesh_spec(("vocab", "embed"), shape=(4,), mesh=mesh)


def test_agrees_with_flax_logical_axis_rules_on_divisible_shapes():
  """flax's own rule application (nnx.get_partition_spec under logical_axis_rules) is the oracle."""
  def named(init, names):
    return nnx.with_partitioning(init, names, eager_sharding=False)

  model = nnx.Sequential(
      nnx.Embed(8, 4, embedding_init=named(nnx.initializers.ones, ("vocab", "embed")), rngs=nnx.Rngs(0)),
      nnx.Linear(4, 16, kernel_init=named(nnx.initializers.ones, ("embed", "mlp")),
                 bias_init=named(nnx.initializers.zeros, ("mlp",)), rngs=nnx.Rngs(0)),
  )
  with flax.core.spmd.logical_axis_rules(DEFAULT_RULES):
    flax_specs = nnx.get_partition_spec(nnx.state(model))
  is_variable = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
  variables = jax.tree.leaves(nnx.state(model), is_leaf=is_variable)
  expected = jax.tree.leaves(flax_specs, is_leaf=is_variable)
  assert len(variables) == len(expected) == 3
  for variable, flax_spec in zip(variables, expected):
    names = variable.get_metadata()["out_sharding"]
    assert logical_to_mesh_spec(names, DEFAULT_RULES) == flax_spec.get_value(), names
