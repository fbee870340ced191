"""Shardings for NNX model state, read from each Variable's logical axis names.

Layers create parameters with `nnx.with_partitioning(init, names)`; flax 0.12 stores `names` as the
Variable's `out_sharding` metadata. Here those names go through the rules table (`rules.py`) with
the array's shape, so dims that do not divide their mesh axes fall back to replication.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmrag_jax.parallel.rules import DEFAULT_RULES, LogicalRules, logical_to_mesh_spec

__all__ = [
    "activation_mesh", "batch_shards", "constrain", "create_sharded", "logical_sharding", "param_shardings",
    "shard_model", "variable_logical_axes",
]

_M = TypeVar("_M", bound=nnx.Module)


def variable_logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
  """The logical axis names a Variable was created with (None when it has none)."""
  names = variable.get_metadata().get("out_sharding")
  return tuple(names) if names else None


def logical_sharding(mesh: Mesh, names: Sequence[str | None], rules: LogicalRules = DEFAULT_RULES,
                     shape: Sequence[int] | None = None) -> NamedSharding:
  """NamedSharding for an array (activation, batch input) with logical dim `names`, e.g. ('batch', 'length')."""
  return NamedSharding(mesh, logical_to_mesh_spec(names, rules, shape=shape, mesh=mesh))


def param_shardings(state: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Any:
  """A pytree like `state` with a NamedSharding in place of every array.

  state: `nnx.state(model)`, or the state of `nnx.eval_shape(...)` (ShapeDtypeStruct values): any
  pytree whose leaves are nnx Variables or arrays. Variables keep their type and metadata and hold
  the NamedSharding as value, so the result can be given to `jax.device_put` or `jit(out_shardings=)`
  against the same structure. Variables without logical names, and bare arrays, are replicated.
  """
  def sharding_of(leaf: Any) -> Any:
    if isinstance(leaf, nnx.Variable):
      value = leaf.get_value()
      names = variable_logical_axes(leaf)
      if names is None or not hasattr(value, "shape"):
        return leaf.replace(NamedSharding(mesh, PartitionSpec()))
      spec = logical_to_mesh_spec(names, rules, shape=value.shape, mesh=mesh)
      return leaf.replace(NamedSharding(mesh, spec))
    if hasattr(leaf, "shape"):
      return NamedSharding(mesh, PartitionSpec())
    return leaf

  return jax.tree.map(sharding_of, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: _M, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> _M:
  """Moves every Variable of an existing model onto its sharding (in place); returns the model.

  The model's arrays must fit on the host first; `create_sharded` avoids that for big models.
  """
  state = nnx.state(model)
  nnx.update(model, jax.device_put(state, param_shardings(state, mesh, rules)))
  return model


def create_sharded(constructor: Callable[[], _M], mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> _M:
  """Builds `constructor()` with every parameter created directly on its shards (never whole on one device).

  The constructor runs once abstractly (shapes and logical names only), then inside a jit whose
  output shardings come from the rules, so XLA materialises each shard where it lives.
  """
  abstract = nnx.eval_shape(constructor)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = param_shardings(abstract_state, mesh, rules)

  @jax.jit(out_shardings=shardings)
  def init() -> Any:
    return nnx.state(constructor())

  return nnx.merge(graphdef, init())


# The mesh a traced program lays its activations out on (`activation_mesh`), read by `constrain`.
_ACTIVATION_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("activation_mesh", default=None)


def batch_shards(mesh: Mesh | None = None) -> int:
  """How many ways the 'batch' logical axis (DEFAULT_RULES) splits rows on `mesh`, by default the
  `activation_mesh`; 1 outside one."""
  mesh = _ACTIVATION_MESH.get() if mesh is None else mesh
  if mesh is None:
    return 1
  spec = logical_to_mesh_spec(("batch",), mesh=mesh)[0]
  axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
  return math.prod(mesh.shape[a] for a in axes)


@contextlib.contextmanager
def activation_mesh(mesh: Mesh | None) -> Iterator[None]:
  """While tracing under this context, `constrain` pins activations to their rule-table layout on `mesh`.

  Enter it inside the jitted function (so every trace of that function sees it, and a cached compilation
  never mixes the two); None, or a one-device mesh, leaves the program unconstrained.
  """
  token = _ACTIVATION_MESH.set(mesh)
  try:
    yield
  finally:
    _ACTIVATION_MESH.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """`x` with a sharding constraint to its logical layout `names` (DEFAULT_RULES) on the `activation_mesh`.

  Without the constraints XLA's partitioner may split a matmul over the FSDP-sharded width of its weight and
  all-gather the activations instead of the weights: the 7B stage-2 gradient step on a v5p-8 moved 1,268 GiB
  per chip through collectives that way, and 109 GiB with them (temporaries 57 -> 35 GiB). Outside
  `activation_mesh` this returns `x` unchanged.
  """
  mesh = _ACTIVATION_MESH.get()
  if mesh is None or mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, logical_sharding(mesh, names, shape=x.shape))
