"""Device mesh, logical-axis sharding rules and multi-host start-up."""

from mmrag_jax.parallel.distributed import maybe_initialize_distributed, shutdown_distributed
from mmrag_jax.parallel.mesh import MESH_AXES, make_mesh, resolve_mesh_shape
from mmrag_jax.parallel.rules import DEFAULT_RULES, LogicalRules, decode_rules, kv_cache_rules, logical_to_mesh_spec
from mmrag_jax.parallel.sharding import (
    activation_mesh,
    constrain,
    create_sharded,
    logical_sharding,
    param_shardings,
    shard_model,
    variable_logical_axes,
)

__all__ = [
    "activation_mesh",
    "constrain",
    "DEFAULT_RULES",
    "LogicalRules",
    "MESH_AXES",
    "create_sharded",
    "decode_rules",
    "kv_cache_rules",
    "logical_sharding",
    "logical_to_mesh_spec",
    "make_mesh",
    "maybe_initialize_distributed",
    "shutdown_distributed",
    "param_shardings",
    "resolve_mesh_shape",
    "shard_model",
    "variable_logical_axes",
]
