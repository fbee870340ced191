"""Device mesh, logical-axis sharding rules and multi-host start-up.

    maybe_initialize_distributed()                              # multi-host runs: before any other jax call
    mesh = make_mesh((1, -1, 1))                                # ('data', 'fsdp', 'tensor'): pure FSDP
    shardings = param_shardings(nnx.state(model), mesh)         # a NamedSharding per parameter
    rows = logical_sharding(mesh, ("batch", "length"))          # an input's layout from its logical axes

Parameters carry logical axis names; `LogicalRules` (DEFAULT_RULES, decode_rules(), kv_cache_rules()) map
them onto mesh axes (`logical_to_mesh_spec`). Inside a jitted function, `with activation_mesh(mesh):` makes
the model's `constrain` calls pin activations to their layouts.
"""

from mmrag_jax.parallel.distributed import maybe_initialize_distributed, shutdown_distributed
from mmrag_jax.parallel.mesh import compiler_options, make_mesh, platform_jit, resolve_mesh_shape
from mmrag_jax.parallel.rules import DEFAULT_RULES, LogicalRules, decode_rules, kv_cache_rules, logical_to_mesh_spec
from mmrag_jax.parallel.sharding import (activation_mesh, batch_shards, constrain, logical_sharding,
                                        param_shardings)

__all__ = [
    "DEFAULT_RULES", "LogicalRules", "activation_mesh", "batch_shards", "compiler_options", "constrain",
    "decode_rules", "kv_cache_rules", "logical_sharding", "logical_to_mesh_spec", "make_mesh",
    "maybe_initialize_distributed", "param_shardings", "platform_jit", "resolve_mesh_shape", "shutdown_distributed",
]
