"""Group-relative advantages of GRPO and their statistics.

Completions are laid out group-major: rows g*G ... g*G + G - 1 are the G samples of prompt g, so
rewards [N] reshape to [N / G, G]. With group mean m_g and sample standard deviation s_g (ddof = 1, as
in the GRPO reference implementations):

  scaling 'group'  A_i = (r_i - m_g) / (s_g + eps)       GRPO
  scaling 'batch'  A_i = (r_i - m_g) / (s_B + eps)       s_B = sample std of all valid rewards
  scaling 'none'   A_i =  r_i - m_g                      Dr.GRPO (no std scaling)

Rows of invalid prompts (padding rows of a batch, `valid` False) get A = 0 and are left out of every
statistic; a group is all valid or all invalid.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from mmrag_jax.parallel import platform_jit

__all__ = ["ADVANTAGE_SCALINGS", "Advantages", "group_advantages", "group_size_error"]

ADVANTAGE_SCALINGS = ("group", "batch", "none")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Advantages:
  """values [N] float32; group_mean, group_std [N / G]; stats: name -> [] float32 scalars."""

  values: jax.Array
  group_mean: jax.Array
  group_std: jax.Array
  stats: dict[str, jax.Array]


def _masked_std(x: jax.Array, weight: jax.Array, axis: int | None) -> jax.Array:
  """Sample standard deviation (ddof = 1) of x over `axis`, counting only entries with weight 1."""
  count = jnp.sum(weight, axis=axis)
  mean = jnp.sum(x * weight, axis=axis) / jnp.maximum(count, 1.0)
  centered = (x - (mean if axis is None else jnp.expand_dims(mean, axis))) * weight
  return jnp.sqrt(jnp.sum(centered**2, axis=axis) / jnp.maximum(count - 1.0, 1.0))


def _safe_divide(centered: jax.Array, scale: jax.Array) -> jax.Array:
  # A constant group (or batch) has centered == 0: keep its advantage 0 even when eps is 0.
  return centered / jnp.where(scale > 0, scale, 1.0)


def group_size_error(group_size: int) -> str | None:
  """Why `group_size` completions per prompt cannot give group-relative advantages; None when they can."""
  return None if group_size >= 2 else f"must be >= 2: advantages compare a prompt's samples, got {group_size}"


@functools.partial(platform_jit, static_argnames=("group_size", "scaling"))
def group_advantages(rewards: jax.Array, valid: jax.Array | None = None, *, group_size: int,
                     scaling: str = "group", eps: float = 1e-4) -> Advantages:
  """GRPO advantages of rewards [N] (N = num_prompts * group_size, group-major); see the module doc.

  valid: [N] bool, False for rows of padding prompts (None = all valid). eps: added to the std.
  stats: advantage mean / std / min / max over valid rows, `zero_variance_group_fraction` (groups whose
  rewards are all equal: they carry no learning signal) and `valid_groups`.

  >>> group_advantages(jnp.array([1., 0., 0., 0.]), group_size=2, scaling='none').values
  Array([ 0.5, -0.5,  0. ,  0. ], dtype=float32)
  """
  if scaling not in ADVANTAGE_SCALINGS:
    raise ValueError(f"advantage scaling {scaling!r} is not one of {ADVANTAGE_SCALINGS}")
  if why := group_size_error(group_size):
    raise ValueError(f"group_size {why}")
  if rewards.ndim != 1 or rewards.shape[0] % group_size:
    raise ValueError(f"rewards must be [N] with N a multiple of group_size={group_size}, got {rewards.shape}")
  rewards = rewards.astype(jnp.float32)
  weight = jnp.ones_like(rewards) if valid is None else valid.astype(jnp.float32)
  grouped = rewards.reshape(-1, group_size)  # [N / G, G]
  group_weight = weight.reshape(-1, group_size)
  group_mean = jnp.mean(grouped, axis=1)
  group_std = _masked_std(grouped, jnp.ones_like(grouped), axis=1)
  centered = grouped - group_mean[:, None]
  if scaling == "group":
    scaled = _safe_divide(centered, group_std[:, None] + eps)
  elif scaling == "batch":
    scaled = _safe_divide(centered, _masked_std(rewards, weight, axis=None) + eps)
  else:
    scaled = centered
  values = (scaled * group_weight).reshape(-1)

  group_valid = group_weight[:, 0]
  num_groups = jnp.maximum(jnp.sum(group_valid), 1.0)
  count = jnp.maximum(jnp.sum(weight), 1.0)
  mean = jnp.sum(values * weight) / count
  flat_valid = weight > 0
  stats = {
      "advantage_mean": mean,
      "advantage_std": jnp.sqrt(jnp.sum(((values - mean) * weight) ** 2) / count),
      "advantage_min": jnp.min(jnp.where(flat_valid, values, jnp.inf)),
      "advantage_max": jnp.max(jnp.where(flat_valid, values, -jnp.inf)),
      "zero_variance_group_fraction":
          jnp.sum((jnp.max(grouped, axis=1) == jnp.min(grouped, axis=1)) * group_valid) / num_groups,
      "valid_groups": jnp.sum(group_valid),
  }
  return Advantages(values=values, group_mean=group_mean, group_std=group_std, stats=stats)
