"""Vision tower and shared layers against the transformers Qwen2.5-VL reference (tiny, float32, eager)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as hf_qwen

from mmrag_jax.model.checkpoint import assign_hf_tensors
from mmrag_jax.model.hf_keys import vision_params
from mmrag_jax.model.layers import RMSNorm, rotate_half
from mmrag_jax.model.text import rotary_inv_freq
from mmrag_jax.model.vision import (VISION_ROPE_THETA, VisionTower, block_runs, full_attention_period,
                                    vision_rotary)
from mmrag_jax.model.vision_index import VisionIndex
from tests.model.float64_reference import ROUNDOFF_FACTOR, float64_copy, float64_islands, roundoff
from tests.model.rotary_bounds import U32, exact_inv_freq, exponents, ours_table_bound, torch_table_bound

# Several images: a window-multiple side (16), sides below the 8-patch window, non-multiples (18, 6,
# 20, 12), a single merge block, and a two-frame entry (frames attend separately).
GRID = np.array([[1, 18, 6], [1, 4, 4], [1, 16, 20], [1, 2, 2], [2, 4, 12]])
NUM_PATCHES = int(np.prod(GRID, axis=1).sum())
# Frame blocks of the largest frame (16 x 20 patches): the smaller frames share blocks next-fit.
FRAME_BLOCKS = [None, 320]


def _tower(vision_config, torch_visual, *, dtype=jnp.float32, remat=False) -> VisionTower:
  """Our tower with the reference's weights, copied through the checkpoint key table."""
  graphdef, abstract_state = nnx.split(nnx.eval_shape(
      lambda: VisionTower(vision_config, dtype=dtype, param_dtype=dtype, remat=remat, rngs=nnx.Rngs(0))))
  tensors = {k: v.detach().numpy() for k, v in torch_visual.state_dict().items()}
  return nnx.merge(graphdef, assign_hf_tensors(abstract_state, tensors, vision_params(vision_config),
                                               vision_config=vision_config))


@nnx.jit
def _run(tower: VisionTower, pixel_values: jax.Array, index: VisionIndex) -> jax.Array:
  return tower(pixel_values, index)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
  return np.random.default_rng(0).standard_normal((NUM_PATCHES, 1176)).astype(np.float32)


@pytest.fixture(scope="module")
def reference_output(hf_model, pixels) -> np.ndarray:
  with torch.no_grad():
    return hf_model.model.visual(torch.from_numpy(pixels), grid_thw=torch.from_numpy(GRID)).pooler_output.numpy()


@pytest.fixture(scope="module")
def tower(tiny_config, hf_model) -> VisionTower:
  return _tower(tiny_config.vision, hf_model.model.visual)


def _bf16(x) -> np.ndarray:
  return np.asarray(x, np.float32).astype(jnp.bfloat16)


def test_rms_norm_matches_reference_in_float32_and_bfloat16():
  n = 32
  rng = np.random.default_rng(1)
  x = rng.standard_normal((5, n)).astype(np.float32) * 3
  weight = rng.standard_normal(n).astype(np.float32)
  ref_norm = hf_qwen.Qwen2_5_VLRMSNorm(n, eps=1e-6)
  ours = RMSNorm(n, eps=1e-6, rngs=nnx.Rngs(0))
  ref_norm.weight.data = torch.from_numpy(weight)
  ours.weight[...] = jnp.asarray(weight)
  # Each side's relative error, in float32 units u = 2^-24: the mean of n squares in any order <= (n + 1)u,
  # halved by the rsqrt, which adds <= 2 ulp = 4u of its own; then x * r and w * (...) one u each. So each
  # element is within (n / 2 + 6.5)u of exact and the two sides within (n + 13)u of each other.
  normalise_error = (n / 2 + 6.5) * U32
  with torch.no_grad():
    np.testing.assert_allclose(ours(jnp.asarray(x)), ref_norm(torch.from_numpy(x)).numpy(), rtol=2 * normalise_error,
                               atol=0)
    ref_norm.to(torch.bfloat16)
    ours_bf16 = RMSNorm(n, eps=1e-6, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    ours_bf16.weight[...] = jnp.asarray(weight, jnp.bfloat16)
    got = ours_bf16(jnp.asarray(x, jnp.bfloat16))
    want = ref_norm(torch.from_numpy(x).to(torch.bfloat16)).float().numpy()
  assert got.dtype == jnp.bfloat16
  # bf16: normalise in float32, round to bf16, then scale by the bf16 weight (a bf16 product is exact in
  # float32, then rounded once). Bit-identical, except where the float32 normalised value is within its
  # round-off of a bf16 rounding boundary: there either neighbour is right.
  x_bf16 = _bf16(x).astype(np.float64)
  exact = x_bf16 / np.sqrt(np.mean(x_bf16**2, axis=-1, keepdims=True) + 1e-6)
  w_bf16 = _bf16(weight).astype(np.float32)
  lo, hi = (_bf16(_bf16(exact * (1 + s * normalise_error)).astype(np.float32) * w_bf16) for s in (-1, 1))
  for out in (np.asarray(got), _bf16(want)):
    assert ((out == lo) | (out == hi)).all()
  print(f"bf16 RMSNorm: {int((lo != hi).sum())} of {lo.size} elements near a rounding boundary")


def test_rotate_half_matches_reference():
  x = np.arange(24, dtype=np.float32).reshape(2, 12)
  np.testing.assert_array_equal(rotate_half(jnp.asarray(x)), hf_qwen.rotate_half(torch.from_numpy(x)).numpy())


def _exact_vision_angles(position_ids: np.ndarray, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
  """float64 angles [P, head_dim] ([h*f, w*f] duplicated) and each column's exponent e of theta^-e."""
  rotary_dim = head_dim // 2
  angles = position_ids[:, :, None] * exact_inv_freq(rotary_dim, VISION_ROPE_THETA)  # [P, 2, F]
  angles = angles.reshape(len(position_ids), -1)
  return np.concatenate([angles, angles], axis=-1), np.tile(exponents(rotary_dim), 4)


def test_vision_rotary_matches_reference(tiny_config, hf_model):
  """Within float32 rounding of the exact angles, and of transformers' (whose float32 pow may be an ulp
  or more off): bounds derived in tests/model/rotary_bounds.py."""
  index = VisionIndex.build(GRID, tiny_config.vision)
  cos, sin = vision_rotary(jnp.asarray(index.position_ids), head_dim=tiny_config.vision.head_dim)
  cos, sin = np.asarray(cos), np.asarray(sin)
  angles, slot_exponents = _exact_vision_angles(index.position_ids, tiny_config.vision.head_dim)
  ours = ours_table_bound(angles)
  assert (np.abs(cos - np.cos(angles)) <= ours).all() and (np.abs(sin - np.sin(angles)) <= ours).all()
  with torch.no_grad():
    ref_cos, ref_sin = hf_model.model.visual.rotary_pos_emb(
        torch.zeros(1), torch.from_numpy(index.position_ids.astype(np.int64)))
  both = ours + torch_table_bound(angles, slot_exponents, VISION_ROPE_THETA)
  assert (np.abs(cos - ref_cos.numpy()) <= both).all() and (np.abs(sin - ref_sin.numpy()) <= both).all()


@pytest.fixture(scope="module")
def exact_output(hf_model, pixels) -> np.ndarray:
  """The reference tower in float64 (islands widened, exact frequencies): the truth."""
  with float64_islands(), torch.no_grad():
    visual64 = float64_copy(hf_model.model.visual)
    return visual64(torch.from_numpy(pixels).double(), grid_thw=torch.from_numpy(GRID)).pooler_output.numpy()


def _assert_within_reference_roundoff(out, reference_output, exact_output):
  """Our float32 tower is as accurate as the reference's float32 tower, within ROUNDOFF_FACTOR."""
  error, unit = roundoff(out, exact_output), roundoff(reference_output, exact_output)
  print(f"float32 tower: max error {error:.2e}, reference's {unit:.2e}")
  assert error <= ROUNDOFF_FACTOR * unit


def test_tower_matches_reference_float32(tiny_config, tower, pixels, reference_output, exact_output):
  out = np.asarray(_run(tower, pixels, VisionIndex.build(GRID, tiny_config.vision)))
  assert out.shape == (NUM_PATCHES // 4, tiny_config.vision.out_hidden_size)
  _assert_within_reference_roundoff(out, reference_output, exact_output)


@pytest.mark.parametrize("frame_block_size", FRAME_BLOCKS)
def test_tower_matches_reference_float64_to_round_off(tiny_config, hf_model, pixels, frame_block_size):
  """In float64 any algorithmic difference would show far above the 1e-12 round-off level; with frame
  blocks (full attention per packed frame) as with one block of every patch."""
  visual64 = float64_copy(hf_model.model.visual)
  # Our float32 frequencies, widened (our float64 tower uses them), not the exact ones.
  rotary_dim = tiny_config.vision.head_dim // 2
  visual64.rotary_pos_emb.inv_freq = torch.from_numpy(rotary_inv_freq(rotary_dim, VISION_ROPE_THETA)).double()
  with float64_islands(), torch.no_grad():
    want = visual64(torch.from_numpy(pixels).double(), grid_thw=torch.from_numpy(GRID)).pooler_output.numpy()
  with jax.enable_x64(True):
    tower64 = _tower(tiny_config.vision, visual64, dtype=jnp.float64)
    index = VisionIndex.build(GRID, tiny_config.vision, frame_block_size=frame_block_size)
    got = np.asarray(_run(tower64, pixels.astype(np.float64), index))
  assert got.dtype == np.float64
  if frame_block_size is not None:
    assert index.frames.patches.shape == (3, 320)  # [108 16], [320], [4 48 48]
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("frame_block_size", FRAME_BLOCKS)
def test_padding_rows_never_touch_real_outputs(tiny_config, tower, pixels, reference_output, exact_output,
                                               frame_block_size):
  real_tokens = NUM_PATCHES // 4
  index = VisionIndex.build(GRID, tiny_config.vision, num_patches_padded=NUM_PATCHES + 68,
                            frame_block_size=frame_block_size)
  rng = np.random.default_rng(2)
  outs = []
  for pad_scale in (1.0, 50.0):
    pad = (pad_scale * rng.standard_normal((68, 1176))).astype(np.float32)
    outs.append(np.asarray(_run(tower, np.concatenate([pixels, pad]), index)))
  assert outs[0].shape == (real_tokens + 17, tiny_config.vision.out_hidden_size)
  # Same compiled shapes, different padding content: real rows are bit-identical.
  np.testing.assert_array_equal(outs[0][:real_tokens], outs[1][:real_tokens])
  assert np.isfinite(outs[1]).all()
  _assert_within_reference_roundoff(outs[0][:real_tokens], reference_output, exact_output)


# Block layouts (depth, fullatt_block_indexes): periodic runs the nested group scan, irregular one scan per
# run of same-kind blocks ([w], [f], [w w w]).
LAYOUTS = {"periodic": (4, (1, 3)), "irregular": (5, (1,))}
SMALL_GRID = np.array([[1, 10, 6], [1, 4, 4]])


def _random_towers(tiny_config, layout: str, **variants: dict) -> tuple[VisionIndex, dict[str, VisionTower]]:
  """The index of SMALL_GRID and, per variant name, a tower of `layout` with the same random weights and the
  variant's attributes (e.g. {"unrolled": {"unroll_layers": True}})."""
  depth, full = LAYOUTS[layout]
  config = dataclasses.replace(tiny_config.vision, depth=depth, fullatt_block_indexes=full)
  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: VisionTower(config, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(3)
  state = jax.tree.map(lambda a: (0.2 * rng.standard_normal(a.shape)).astype(a.dtype), abstract_state)
  towers = {}
  for name, attributes in variants.items():
    towers[name] = nnx.merge(graphdef, state)
    for attribute, value in attributes.items():
      setattr(towers[name], attribute, value)
  return VisionIndex.build(SMALL_GRID, config), towers


def _loss_and_grads(tower: VisionTower, index: VisionIndex) -> tuple[jax.Array, list[jax.Array]]:
  """Mean squared output and its gradient leaves w.r.t. every parameter, on fixed random pixels."""
  pixels = np.random.default_rng(4).standard_normal((76, 1176)).astype(np.float32)

  @nnx.jit
  def loss_and_grad(model):
    return nnx.value_and_grad(lambda m: jnp.mean(jnp.square(m(pixels, index))))(model)

  loss, grads = loss_and_grad(tower)
  return loss, jax.tree.leaves(grads)


def _assert_same_loss_and_grads(got, want):
  (got_loss, got_grads), (want_loss, want_grads) = got, want
  assert float(want_loss) > 0
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  for g, w in zip(got_grads, want_grads, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * np.abs(w).max())


def test_full_attention_period_finds_the_last_block_of_every_group():
  assert full_attention_period(32, (7, 15, 23, 31)) == 8
  assert full_attention_period(4, (1, 3)) == 2
  assert full_attention_period(2, (1,)) == 2
  for depth, full in [(5, (1,)), (4, ()), (4, (0, 2)), (4, (0, 1, 2, 3)), (6, (1, 3))]:
    assert full_attention_period(depth, full) is None, (depth, full)


def test_block_runs_are_maximal_runs_of_one_kind():
  assert block_runs(5, (1,)) == [(False, 0, 1), (True, 1, 2), (False, 2, 5)]
  assert block_runs(3, ()) == [(False, 0, 3)]
  assert block_runs(4, (2, 3)) == [(False, 0, 2), (True, 2, 4)]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scanned_blocks_match_unrolled_blocks_in_value_and_gradient(tiny_config, layout):
  index, towers = _random_towers(tiny_config, layout, scanned={}, unrolled={"unroll_layers": True})
  _assert_same_loss_and_grads(_loss_and_grads(towers["scanned"], index), _loss_and_grads(towers["unrolled"], index))


def test_scanned_tower_traces_one_body_per_attention_kind_whatever_the_depth(tiny_config):
  """Depth 4 and 8 (periodic) trace the same matmuls: one window and one full block body. Unrolled, each
  block adds its own."""
  def matmuls(depth, full, unroll_layers):
    config = dataclasses.replace(tiny_config.vision, depth=depth, fullatt_block_indexes=full)
    tower = VisionTower(config, unroll_layers=unroll_layers, rngs=nnx.Rngs(0))
    pixels = np.zeros((76, 1176), np.float32)
    return str(jax.make_jaxpr(lambda p: tower(p, VisionIndex.build(SMALL_GRID, config)))(pixels)).count("dot_general")

  assert matmuls(4, (1, 3), False) == matmuls(8, (3, 7), False)
  per_block = matmuls(5, (1, 3), True) - matmuls(4, (1, 3), True)
  assert per_block > 0 and matmuls(8, (3, 7), True) == matmuls(4, (1, 3), True) + 4 * per_block


@pytest.mark.parametrize("layout", LAYOUTS)
def test_remat_changes_neither_output_nor_gradient(tiny_config, layout):
  index, towers = _random_towers(tiny_config, layout, plain={}, remat={"remat": True})
  _assert_same_loss_and_grads(_loss_and_grads(towers["remat"], index), _loss_and_grads(towers["plain"], index))


def test_bfloat16_compute_tracks_float32(tiny_config, hf_model, pixels, reference_output):
  bf16 = _tower(tiny_config.vision, hf_model.model.visual, dtype=jnp.bfloat16)
  out = _run(bf16, pixels, VisionIndex.build(GRID, tiny_config.vision))
  assert out.dtype == jnp.bfloat16
  assert bf16.blocks.attn.qkv.kernel[...].dtype == jnp.bfloat16
  error = np.abs(np.asarray(out, np.float32) - reference_output).max() / np.abs(reference_output).max()
  assert error < 0.05, error


def test_pixel_rows_must_match_the_index(tiny_config, tower, pixels):
  with pytest.raises(ValueError, match="pixel_values has 40 rows"):
    tower(pixels[:40], VisionIndex.build(GRID, tiny_config.vision))
