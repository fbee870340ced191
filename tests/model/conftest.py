"""Fixtures for the model tests: tiny random transformers Qwen2.5-VL models as the parity oracle.

Every field of the reference config is set explicitly (its class defaults differ from the real
checkpoints) and weights are drawn with initializer_range 0.2 so that port errors are not hidden by
near-zero activations. The reference runs in float32 with eager attention.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from mmrag_jax.model import config as config_lib
from mmrag_jax.model import load_pretrained, prepare_inputs
from mmrag_jax.model.kv_cache import decode_step, prefill
from mmrag_jax.model.synthetic_batch import random_processor_batch

HF_INIT_RANGE = 0.2


def hf_config_kwargs(config: config_lib.Qwen25VLConfig, initializer_range: float = HF_INIT_RANGE) -> dict[str, Any]:
  """Keyword arguments of `transformers.Qwen2_5_VLConfig` equal to `config`, every field explicit."""
  t, v = config.text, config.vision
  text = dict(
      vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
      num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
      num_key_value_heads=t.num_key_value_heads, head_dim=t.head_dim, hidden_act="silu",
      max_position_embeddings=t.max_position_embeddings, rms_norm_eps=t.rms_norm_eps, use_cache=True,
      use_sliding_window=False, attention_dropout=0.0, initializer_range=initializer_range,
      rope_parameters=dict(rope_type="default", rope_theta=t.rope_theta, mrope_section=list(t.mrope_section)),
      bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
      tie_word_embeddings=t.tie_word_embeddings)
  vision = dict(
      depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_heads=v.num_heads,
      out_hidden_size=v.out_hidden_size, in_channels=v.in_channels, patch_size=v.patch_size,
      temporal_patch_size=v.temporal_patch_size, spatial_merge_size=v.spatial_merge_size,
      window_size=v.window_size, fullatt_block_indexes=list(v.fullatt_block_indexes),
      tokens_per_second=v.tokens_per_second, hidden_act="silu", initializer_range=initializer_range)
  return dict(
      text_config=text, vision_config=vision, image_token_id=config.image_token_id,
      video_token_id=config.video_token_id, vision_start_token_id=config.vision_start_token_id,
      vision_end_token_id=config.vision_end_token_id, tie_word_embeddings=t.tie_word_embeddings,
      initializer_range=initializer_range)


def build_hf_model(config: config_lib.Qwen25VLConfig, seed: int = 0) -> transformers.Qwen2_5_VLForConditionalGeneration:
  """A random float32 reference model (eager attention, eval mode) with the architecture of `config`."""
  hf_config = transformers.Qwen2_5_VLConfig(**hf_config_kwargs(config))
  hf_config._attn_implementation = "eager"
  hf_config.vision_config._attn_implementation = "eager"
  hf_config.text_config._attn_implementation = "eager"
  torch.manual_seed(seed)
  return transformers.Qwen2_5_VLForConditionalGeneration(hf_config).eval()


@pytest.fixture(scope="session")
def tiny_config() -> config_lib.Qwen25VLConfig:
  return config_lib.tiny()


@pytest.fixture(scope="session")
def tiny_tied_config(tiny_config) -> config_lib.Qwen25VLConfig:
  return tiny_config.replace(text=dataclasses.replace(tiny_config.text, tie_word_embeddings=True))


@pytest.fixture(scope="session")
def make_hf_model() -> Callable[..., transformers.Qwen2_5_VLForConditionalGeneration]:
  """Factory fixture: `make_hf_model(config, seed=0)` -> random reference model."""
  return build_hf_model


@pytest.fixture(scope="session")
def hf_model(tiny_config) -> transformers.Qwen2_5_VLForConditionalGeneration:
  """The shared tiny reference model (untied head)."""
  return build_hf_model(tiny_config, seed=0)


# -- Text decoder, KV cache and full-model fixtures -------------------------------------------------

# A left-padded batch of two rows and four images: text lengths are ints, images are (t, h, w) patch
# grids. Row 0 mixes text and images (10x12 patches is not a multiple of the 8x8-patch window); row 1
# has two adjacent images (the 8x8 one fills exactly one window).
PARITY_ROWS = ([3, (1, 4, 6), 2, (1, 10, 12), 4], [5, (1, 2, 2), (1, 8, 8), 6])


def to_torch_batch(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
  """The numpy processor batch as torch tensors (mm_token_type_ids included: the reference needs it)."""
  return {key: torch.from_numpy(np.asarray(value)) for key, value in batch.items()}


def randomize_biases_and_norms(model: torch.nn.Module, seed: int) -> None:
  """Biases ~ N(0, 0.2) and norm weights ~ 1 + N(0, 0.2) (the reference inits them to 0 and 1, which
  would hide errors in bias handling or the RMSNorm cast order)."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator) * HF_INIT_RANGE
      if name.endswith(".bias"):
        param.copy_(noise)
      elif "norm" in name or "ln_q" in name:
        param.copy_(1.0 + noise)


def save_hf_checkpoint(model: torch.nn.Module, directory) -> str:
  model.save_pretrained(str(directory))
  return str(directory)


@pytest.fixture(scope="session")
def hf_parity_model(tiny_config) -> transformers.Qwen2_5_VLForConditionalGeneration:
  """Reference model for the full-model tests: random weights, biases and norm weights."""
  model = build_hf_model(tiny_config, seed=1)
  randomize_biases_and_norms(model, seed=1)
  return model


@pytest.fixture(scope="session")
def flax_parity_model(hf_parity_model, tmp_path_factory):
  """`hf_parity_model` saved by transformers and loaded through `load_pretrained` (float32)."""
  return load_pretrained(save_hf_checkpoint(hf_parity_model, tmp_path_factory.mktemp("parity_ckpt")))


@pytest.fixture(scope="session")
def parity_batch(tiny_config) -> dict[str, Any]:
  return random_processor_batch(PARITY_ROWS, tiny_config, seed=0)


@pytest.fixture(scope="session")
def parity_reference_logits(hf_parity_model, parity_batch) -> np.ndarray:
  """Reference logits [B, L, V] of `parity_batch`."""
  with torch.no_grad():
    return hf_parity_model(**to_torch_batch(parity_batch)).logits.numpy()


@pytest.fixture(scope="session")
def make_batch() -> Callable[..., dict[str, Any]]:
  """Factory fixture: `make_batch(rows, config, seed=0, wrap_images=True)`, see `random_processor_batch`."""
  return lambda rows, config, seed=0, **kw: random_processor_batch(rows, config, seed=seed, **kw)


@pytest.fixture(scope="session")
def torch_batch() -> Callable[[dict[str, Any]], dict[str, torch.Tensor]]:
  """`torch_batch(numpy_batch)` -> the same batch as torch tensors."""
  return to_torch_batch


# Free cache slots after the prompt. One cache size keeps the decoding tests on one compiled prefill and
# one compiled decode step.
GENERATION_STEPS = 16


@pytest.fixture(scope="session")
def jitted_decoding():
  """(prefill, decode_step) under `nnx.jit`; the cache argument of decode_step is donated."""
  return (nnx.jit(prefill, static_argnames=("cache_size", "all_logits")),
          nnx.jit(decode_step, donate_argnames="cache"))


@pytest.fixture(scope="session")
def parity_inputs(tiny_config, parity_batch):
  """`ModelInputs` of the parity batch, vision patches padded from 212 to a budget of 256."""
  return prepare_inputs(parity_batch, tiny_config, num_patches=256)


@pytest.fixture(scope="session")
def parity_prefill(flax_parity_model, parity_batch, parity_inputs, jitted_decoding):
  """Prefill of the parity batch: (logits [B, L, V], cache with GENERATION_STEPS free slots)."""
  length = parity_batch["input_ids"].shape[1]
  return jitted_decoding[0](flax_parity_model, parity_inputs, cache_size=length + GENERATION_STEPS,
                            all_logits=True)
