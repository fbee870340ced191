"""Text decoder pieces: M-RoPE tables, masks, text-only batches, input validation."""

import decimal
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as hf_qwen

from mmrag_jax.model import load_pretrained, prepare_inputs
from mmrag_jax.model.layers import attention, shared_prefix_attention
from mmrag_jax.model.text import causal_padding_mask, mrope_cos_sin, rotary_inv_freq
from tests.model.conftest import save_hf_checkpoint
from tests.model.rotary_bounds import (exact_inv_freq, exponents, ours_table_bound, torch_inv_freq_bound,
                                       torch_table_bound)


ROPE_CASES = pytest.mark.parametrize("head_dim, theta, section", [(16, 10000.0, (2, 3, 3)),
                                                                  (128, 1e6, (16, 24, 24))])
# Positions up to 3e4, where one ulp of a frequency (~6e-8 for inv ~ 1) already moves an angle by ~2e-3.
MAX_POSITION = 30000


def _positions() -> np.ndarray:
  """[3, B=2, T=9] t/h/w positions, 0 and MAX_POSITION included."""
  positions = np.random.default_rng(0).integers(0, MAX_POSITION, (3, 2, 9))
  positions[:, 0, 0], positions[:, 1, -1] = 0, MAX_POSITION
  return positions


def _tables(positions, head_dim, theta, section):
  fn = functools.partial(mrope_cos_sin, head_dim=head_dim, theta=theta, mrope_section=section, dtype=jnp.float32)
  cos, sin = jax.jit(fn)(jnp.asarray(positions))
  return np.asarray(cos), np.asarray(sin)


def _exact_angles(positions, head_dim, theta, section):
  """float64 angles [B, T, head_dim]: slot i uses the t, h or w position by `section`, duplicated."""
  slot_axis = np.repeat(np.arange(3), section)
  angles = np.moveaxis(positions, 0, -1)[..., slot_axis] * exact_inv_freq(head_dim, theta)
  return np.concatenate([angles, angles], axis=-1)


@pytest.mark.parametrize("dim, theta", [(16, 1e4), (128, 1e6), (40, 1e4), (8, 1e4)])
def test_rotary_inv_freq_is_the_nearest_float32(dim, theta):
  # Independent 40-digit reference: each float32 frequency is within half an ulp of theta^(-2i/dim).
  decimal.getcontext().prec = 40
  got = rotary_inv_freq(dim, theta)
  assert got.dtype == np.float32
  for i, value in enumerate(got):
    exact = decimal.Decimal(theta) ** (decimal.Decimal(-2 * i) / decimal.Decimal(dim))
    assert abs(decimal.Decimal(float(value)) - exact) <= decimal.Decimal(float(np.spacing(value))) / 2, i


@ROPE_CASES
def test_mrope_tables_are_within_float32_rounding_of_the_exact_angles(head_dim, theta, section):
  """|table - cos(exact angle)| <= 2u * angle + 2u: one rounding of the frequency, one of the product,
  and cos/sin within 2 ulp (derivation in tests/model/rotary_bounds.py)."""
  positions = _positions()
  cos, sin = _tables(positions, head_dim, theta, section)
  angles = _exact_angles(positions, head_dim, theta, section)
  bound = ours_table_bound(angles)
  assert (np.abs(cos - np.cos(angles)) <= bound).all()
  assert (np.abs(sin - np.sin(angles)) <= bound).all()


@ROPE_CASES
def test_mrope_tables_match_reference(head_dim, theta, section):
  """Against transformers, whose float32 pow gives frequencies an ulp or more off (CPU-dependent): the
  tolerance is our bound plus torch's, pos * inv * (ln(theta) * e + 4) * u + 2u (see rotary_bounds)."""
  text_config = transformers.Qwen2_5_VLTextConfig(
      hidden_size=head_dim * 2, num_attention_heads=2, num_key_value_heads=1, head_dim=head_dim,
      rope_parameters=dict(rope_type="default", rope_theta=theta, mrope_section=list(section)))
  rotary = hf_qwen.Qwen2_5_VLRotaryEmbedding(text_config)
  # The premise of the bound: torch's frequencies are within its float32 pow's error.
  torch_error = np.abs(rotary.inv_freq.numpy().astype(np.float64) - exact_inv_freq(head_dim, theta))
  assert (torch_error <= torch_inv_freq_bound(head_dim, theta)).all()
  positions = _positions()
  with torch.no_grad():
    ref_cos, ref_sin = rotary(torch.zeros(1, dtype=torch.float32), torch.from_numpy(positions))
  cos, sin = _tables(positions, head_dim, theta, section)
  angles = _exact_angles(positions, head_dim, theta, section)
  slot_exponents = np.tile(exponents(head_dim), 2)
  bound = ours_table_bound(angles) + torch_table_bound(angles, slot_exponents, theta)
  assert (np.abs(cos - ref_cos.numpy()) <= bound).all()
  assert (np.abs(sin - ref_sin.numpy()) <= bound).all()


def test_mrope_section_must_cover_half_the_head():
  with pytest.raises(ValueError, match="must sum to head_dim / 2 = 8"):
    mrope_cos_sin(jnp.zeros((3, 1, 2), jnp.int32), head_dim=16, theta=1e4, mrope_section=(2, 2, 2),
                  dtype=jnp.float32)


def test_causal_padding_mask_hides_pads_and_the_future():
  mask = np.asarray(causal_padding_mask(jnp.array([[0, 1, 1, 1]])))[0]
  np.testing.assert_array_equal(mask, [[0, 0, 0, 0],
                                       [0, 1, 0, 0],
                                       [0, 1, 1, 0],
                                       [0, 1, 1, 1]])


@pytest.mark.parametrize("steps, chunk", [(24, 8), (23, 8), (24, 64)])
def test_query_chunked_attention_is_the_unchunked_attention(steps, chunk):
  """Each query row is computed by the same ops either way; a chunk only changes which rows share a kernel,
  so rows agree to float32 round-off of an S-term weighted sum (<= S ulps of max |v|), gradients likewise.
  Covers GQA (6 query heads over 2 kv heads), left padding and T not a multiple of the chunk."""
  rng = np.random.default_rng(0)
  batch, keys, heads, kv_heads, dim = 2, steps, 6, 2, 8
  q = jnp.asarray(rng.standard_normal((batch, steps, heads, dim)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((batch, keys, kv_heads, dim)), jnp.float32)
  v = jnp.asarray(rng.standard_normal((batch, keys, kv_heads, dim)), jnp.float32)
  mask = causal_padding_mask(jnp.asarray(np.arange(steps)[None, :] >= np.array([[0], [5]]), jnp.int32))
  plain = lambda q, k, v: attention(q, k, v, mask, dim**-0.5)
  chunked = lambda q, k, v: attention(q, k, v, mask, dim**-0.5, query_chunk=chunk)
  bound = keys * 2.0**-23 * float(jnp.abs(v).max())
  np.testing.assert_allclose(chunked(q, k, v), plain(q, k, v), rtol=0, atol=bound)
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
  for got, want in zip(jax.grad(loss(chunked), argnums=(0, 1, 2))(q, k, v),
                       jax.grad(loss(plain), argnums=(0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, rtol=0, atol=4 * bound * max(1.0, float(jnp.abs(want).max())))


@pytest.mark.parametrize("chunk", [None, 2])
def test_shared_prefix_attention_is_attention_over_each_rows_concatenated_keys(chunk):
  """3 rows per prefix, 2 prefixes with padded keys, rows left-padded: the two-part softmax against
  `attention` over [prefix keys repeated per row, own keys]. Both sum the same S = Lp + T terms in float32,
  in a different order: outputs agree to S ulps of max |v|, gradients to a few times that."""
  rng = np.random.default_rng(1)
  prefixes, group, prefix_length, steps, heads, kv_heads, dim = 2, 3, 7, 5, 6, 2, 8
  rows = prefixes * group
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  q, k, v = normal(rows, steps, heads, dim), normal(rows, steps, kv_heads, dim), normal(rows, steps, kv_heads, dim)
  prefix_k, prefix_v = normal(prefixes, prefix_length, kv_heads, dim), normal(prefixes, prefix_length, kv_heads, dim)
  prefix_mask = jnp.asarray(np.arange(prefix_length)[None, :] >= np.array([[0], [3]]))
  own_mask = causal_padding_mask(jnp.asarray(np.arange(steps)[None, :] >= rng.integers(0, 3, (rows, 1)), jnp.int32))
  per_row = lambda a: jnp.repeat(a, group, axis=0)

  def concatenated(q, prefix_k, prefix_v, k, v):
    mask = jnp.concatenate([jnp.broadcast_to(per_row(prefix_mask)[:, None], (rows, steps, prefix_length)),
                            own_mask], axis=2)
    return attention(q, jnp.concatenate([per_row(prefix_k), k], 1), jnp.concatenate([per_row(prefix_v), v], 1),
                     mask, dim**-0.5)

  shared = lambda q, prefix_k, prefix_v, k, v: shared_prefix_attention(
      q, prefix_k, prefix_v, prefix_mask, k, v, own_mask, dim**-0.5, query_chunk=chunk)
  args = (q, prefix_k, prefix_v, k, v)
  bound = (prefix_length + steps) * 2.0**-23 * float(max(jnp.abs(v).max(), jnp.abs(prefix_v).max()))
  np.testing.assert_allclose(shared(*args), concatenated(*args), rtol=0, atol=bound)
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
  for got, want in zip(jax.grad(loss(shared), argnums=tuple(range(5)))(*args),
                       jax.grad(loss(concatenated), argnums=tuple(range(5)))(*args)):
    np.testing.assert_allclose(got, want, rtol=0, atol=4 * bound * max(1.0, float(jnp.abs(want).max())))


def test_model_with_chunked_attention_gives_the_same_logits(hf_parity_model, flax_parity_model, make_batch,
                                                            tiny_config, tmp_path):
  """`attention_query_chunk` through the loader: a 4-query chunk over these 9-token rows (3 chunks) gives the
  unchunked logits to round-off."""
  chunked = load_pretrained(save_hf_checkpoint(hf_parity_model, tmp_path), attention_query_chunk=4)
  assert chunked.config.attention_query_chunk == 4
  batch = make_batch([[9], [4], [7]], tiny_config, seed=4)
  logits, got = np.asarray(flax_parity_model(**batch)), np.asarray(chunked(**batch))
  real = batch["attention_mask"].astype(bool)
  assert np.abs(got - logits)[real].max() <= 1e-5 * float(np.abs(logits[real]).max())


def test_text_only_left_padded_batch_matches_reference(hf_parity_model, flax_parity_model, make_batch,
                                                       tiny_config, torch_batch):
  batch = make_batch([[9], [4], [7]], tiny_config, seed=4)
  logits = np.asarray(flax_parity_model(**batch))
  torch_inputs = torch_batch(batch)
  # Without images the reference forward counts positions from the first (pad) slot; its generate and
  # get_rope_index count from the first real token, as we always do.
  positions, _ = hf_parity_model.model.get_rope_index(
      torch_inputs["input_ids"], mm_token_type_ids=torch_inputs["mm_token_type_ids"],
      attention_mask=torch_inputs["attention_mask"])
  with torch.no_grad():
    reference = hf_parity_model(**torch_inputs, position_ids=positions).logits.numpy()
  real = batch["attention_mask"].astype(bool)
  assert np.abs(logits - reference)[real].max() <= 1e-4


@pytest.fixture
def image_batch(tiny_config, make_batch):
  return make_batch([[2, (1, 4, 4), 1]], tiny_config, seed=0)


def test_prepare_inputs_pads_patches_and_scatter_slots(image_batch, tiny_config):
  inputs = prepare_inputs(image_batch, tiny_config, num_patches=32)
  assert inputs.pixel_values.shape == (32, tiny_config.vision.patch_dim)
  np.testing.assert_array_equal(inputs.pixel_values[:16], image_batch["pixel_values"])
  assert not inputs.pixel_values[16:].any()
  # Four image tokens sit after two text tokens and <|vision_start|>; padding slots point past the batch.
  np.testing.assert_array_equal(inputs.image_scatter, [3, 4, 5, 6, 9, 9, 9, 9])
  assert inputs.vision_index.num_patches_padded == 32


def test_prepare_inputs_gives_image_free_batches_padding_vision_inputs_under_a_budget(tiny_config, make_batch):
  batch = make_batch([[3], [5]], tiny_config, seed=0)
  assert prepare_inputs(batch, tiny_config).pixel_values is None
  inputs = prepare_inputs(batch, tiny_config, num_patches=16)
  assert inputs.pixel_values.shape == (16, tiny_config.vision.patch_dim) and not inputs.pixel_values.any()
  np.testing.assert_array_equal(inputs.image_scatter, [10] * 4)  # every slot past the 2 x 5 tokens: dropped
  assert (inputs.vision_index.segment_ids == -1).all()


@pytest.mark.parametrize("edit, message", [
    (lambda b: b.update(attention_mask=np.array([[1] * 8 + [0]])), "must be left-padded"),
    (lambda b: b.pop("image_grid_thw"), "must be given together"),
    (lambda b: b.update(pixel_values=b["pixel_values"][:8]), "pixel_values has shape"),
    (lambda b: b.update(image_grid_thw=np.array([[1, 4, 8]])), "does not split into whole images"),
    (lambda b: b.pop("input_ids"), "no 'input_ids'"),
])
def test_prepare_inputs_rejects_inconsistent_batches(image_batch, tiny_config, edit, message):
  batch = dict(image_batch)
  edit(batch)
  with pytest.raises(ValueError, match=message):
    prepare_inputs(batch, tiny_config)


def test_prepare_inputs_rejects_a_patch_budget_below_the_images(image_batch, tiny_config):
  with pytest.raises(ValueError, match="num_patches=8 is smaller than the 16 patches"):
    prepare_inputs(image_batch, tiny_config, num_patches=8)
