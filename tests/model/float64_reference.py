"""transformers' Qwen2.5-VL in float64: the exact values that float32 results are measured against.

A float32 network's round-off is not a constant: it grows with depth, widths and weight scale, and its
realisation depends on the CPU's kernels (summation order, vector width, thread count). So float32
results are compared against float64 truth, and the yardstick is the reference's own float32 error on
the same inputs: `roundoff = max |torch32 - truth|`. A float32 run of ours must be as accurate within
ROUNDOFF_FACTOR (our error / the reference's measures 0.6 - 1.1 on these tests, 1.4 in bf16; 3 leaves
room for other CPUs' kernels). Two float32 runs of ours then agree within 2 * ROUNDOFF_FACTOR *
roundoff, and one of ours agrees with the reference's within (ROUNDOFF_FACTOR + 1) * roundoff.

The reference keeps deliberate float32 islands (RMSNorm statistics, both rotaries' angles and cos/sin,
the vision rotary's rotated q/k, the eager softmax); `float64_islands` widens them and `float64_copy`
uses SDPA attention, whose softmax runs in the input dtype, and exact float64 rotary frequencies.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import numpy as np
import torch
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as hf_qwen

from tests.model.rotary_bounds import exact_inv_freq

# Our float32 error may be up to this multiple of the reference's float32 error against float64 truth.
ROUNDOFF_FACTOR = 3.0


def roundoff(float32: np.ndarray, exact: np.ndarray) -> float:
  """max |float32 - exact| of a float32 (or bf16) run; the reference's is the yardstick of the tolerances."""
  return float(np.abs(np.asarray(float32, np.float64) - exact).max())


def _rms_norm_forward(self, x):
  return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def _vision_rotary_forward(self, x, position_ids):
  angles = position_ids[..., None].double() * self.inv_freq.double()
  return self.recomposition_frequencies(angles.cos()), self.recomposition_frequencies(angles.sin())


def _text_rotary_forward(self, x, position_ids):
  angles = position_ids.expand(3, -1, -1)[..., None].double() * self.inv_freq.double()
  cos, sin = angles.cos() * self.attention_scaling, angles.sin() * self.attention_scaling
  return self.recomposition_frequencies(cos).to(x.dtype), self.recomposition_frequencies(sin).to(x.dtype)


def _apply_rotary_vision(q, k, cos, sin):
  cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
  return q * cos + hf_qwen.rotate_half(q) * sin, k * cos + hf_qwen.rotate_half(k) * sin


@contextlib.contextmanager
def float64_islands() -> Iterator[None]:
  """Runs the reference's float32 islands in the input dtype (the text rotary applies no cast)."""
  patches = [(hf_qwen.Qwen2_5_VLRMSNorm, "forward", _rms_norm_forward),
             (hf_qwen.Qwen2_5_VLVisionRotaryEmbedding, "forward", _vision_rotary_forward),
             (hf_qwen.Qwen2_5_VLRotaryEmbedding, "forward", _text_rotary_forward),
             (hf_qwen, "apply_rotary_pos_emb_vision", _apply_rotary_vision)]
  saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
  try:
    for owner, name, value in patches:
      setattr(owner, name, value)
    yield
  finally:
    for owner, name, value in saved:
      setattr(owner, name, value)


def float64_copy(module: torch.nn.Module) -> torch.nn.Module:
  """A float64 copy of a reference model (or its vision tower) with SDPA and exact rotary frequencies."""
  module = copy.deepcopy(module).double()
  for sub in module.modules():
    config = getattr(sub, "config", None)
    if config is not None:
      for c in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None)):
        if c is not None:
          c._attn_implementation = "sdpa"
    if isinstance(sub, (hf_qwen.Qwen2_5_VLRotaryEmbedding, hf_qwen.Qwen2_5_VLVisionRotaryEmbedding)):
      # inv_freq holds theta^(-2i / dim) for i < dim / 2.
      dim, theta = 2 * sub.inv_freq.numel(), sub.config.rope_parameters["rope_theta"]
      sub.inv_freq = torch.from_numpy(exact_inv_freq(dim, theta))
  return module


def float64_logits(hf_model: torch.nn.Module, torch_inputs: dict[str, torch.Tensor], **kwargs: Any) -> np.ndarray:
  """Exact logits [B, L, V] (float64) of `hf_model` on a torch batch (pixel_values widened)."""
  inputs = {k: (v.double() if k == "pixel_values" else v) for k, v in torch_inputs.items()}
  with float64_islands(), torch.no_grad():
    return float64_copy(hf_model)(**inputs, **kwargs).logits.numpy()
