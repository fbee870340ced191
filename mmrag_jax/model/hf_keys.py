"""The correspondence between Hugging Face Qwen2.5-VL checkpoint keys and our NNX parameter paths.

One table, used both ways (import and export). Keys are in the published layout (`visual.*`,
`model.*`, `lm_head.weight`); `canonical_key` maps the newer `model.visual.*` /
`model.language_model.*` layout onto it. The decoder's layers and the vision tower's blocks are stacked,
so each `model.layers.{i}.*` / `visual.blocks.{i}.*` key is slice i of one parameter: `HFParam.layer` = i,
e.g. `model.layers.3.mlp.up_proj.weight` -> up_proj.kernel[3] of path ('language_model', 'layers', 'mlp',
'up_proj', 'kernel'), `visual.blocks.2.attn.qkv.weight` -> qkv.kernel[2] of ('visual', 'blocks', 'attn',
'qkv', 'kernel'). Conversions between torch and Flax layouts (of one slice):

  linear: torch Linear weight [out, in]            <-> Flax kernel [in, out] (transpose)
  conv:   torch Conv3d weight [out, C, T, P, P]    <-> Flax kernel [C*T*P*P, out] (flatten + transpose)
  copy:   biases, norm weights, embedding [V, D]   <-> same layout
"""

from __future__ import annotations

import dataclasses
from typing import Literal, TypeVar

import numpy as np

from mmrag_jax.model.config import Qwen25VLConfig, VisionConfig

__all__ = [
    "HFParam", "Kind", "Path", "canonical_key", "model_params", "to_flax", "to_torch", "torch_shape", "vision_params",
]

Kind = Literal["linear", "conv", "copy"]
Path = tuple[str | int, ...]
_A = TypeVar("_A")

# Newer transformers saves nest both towers under `model.`; the published checkpoints do not.
_NEWER_PREFIXES = (("model.visual.", "visual."), ("model.language_model.", "model."))


@dataclasses.dataclass(frozen=True)
class HFParam:
  """One checkpoint tensor: its key (published layout), our parameter path, and the layout change.

  layer: for a parameter stacked over layers ([layers, ...]), the slice this tensor is; None otherwise.
  """

  key: str
  path: Path
  kind: Kind
  layer: int | None = None

  def part(self, array: _A) -> _A:
    """This tensor's part of the parameter `array`: slice [layer] when stacked, else all of it."""
    return array if self.layer is None else array[self.layer]


def canonical_key(key: str) -> str:
  """A checkpoint key in the published layout (`model.visual.x` -> `visual.x`, ...)."""
  for newer, published in _NEWER_PREFIXES:
    if key.startswith(newer):
      return published + key[len(newer):]
  return key


def _linear(key: str, path: Path, bias: bool, layer: int | None = None) -> list[HFParam]:
  params = [HFParam(f"{key}.weight", (*path, "kernel"), "linear", layer)]
  if bias:
    params.append(HFParam(f"{key}.bias", (*path, "bias"), "copy", layer))
  return params


def _norm(key: str, path: Path, layer: int | None = None) -> HFParam:
  return HFParam(f"{key}.weight", (*path, "weight"), "copy", layer)


def vision_params(config: VisionConfig, key_prefix: str = "", path_prefix: Path = ()) -> list[HFParam]:
  """Table of the vision tower (block i: slice i of the stacked block parameters); keys relative to
  `key_prefix`, paths relative to `path_prefix`."""
  k, p = key_prefix, path_prefix
  params = [HFParam(f"{k}patch_embed.proj.weight", (*p, "patch_embed", "proj", "kernel"), "conv")]
  pb = (*p, "blocks")
  for i in range(config.depth):
    kb = f"{k}blocks.{i}"
    params += [_norm(f"{kb}.norm1", (*pb, "norm1"), i), _norm(f"{kb}.norm2", (*pb, "norm2"), i)]
    params += _linear(f"{kb}.attn.qkv", (*pb, "attn", "qkv"), bias=True, layer=i)
    params += _linear(f"{kb}.attn.proj", (*pb, "attn", "proj"), bias=True, layer=i)
    for name in ("gate_proj", "up_proj", "down_proj"):
      params += _linear(f"{kb}.mlp.{name}", (*pb, "mlp", name), bias=True, layer=i)
  params.append(_norm(f"{k}merger.ln_q", (*p, "merger", "ln_q")))
  params += _linear(f"{k}merger.mlp.0", (*p, "merger", "fc1"), bias=True)
  params += _linear(f"{k}merger.mlp.2", (*p, "merger", "fc2"), bias=True)
  return params


def _text_params(config: Qwen25VLConfig) -> list[HFParam]:
  """Table of the decoder (layer i: slice i of the stacked layer parameters) and the LM head (absent
  when tied to the embedding)."""
  lm = ("language_model",)
  params = [HFParam("model.embed_tokens.weight", (*lm, "embed_tokens", "embedding"), "copy")]
  pl = (*lm, "layers")
  for i in range(config.text.num_hidden_layers):
    kl = f"model.layers.{i}"
    params += [_norm(f"{kl}.input_layernorm", (*pl, "input_layernorm"), i),
               _norm(f"{kl}.post_attention_layernorm", (*pl, "post_attention_layernorm"), i)]
    for name in ("q_proj", "k_proj", "v_proj"):
      params += _linear(f"{kl}.self_attn.{name}", (*pl, "self_attn", name), bias=True, layer=i)
    params += _linear(f"{kl}.self_attn.o_proj", (*pl, "self_attn", "o_proj"), bias=False, layer=i)
    for name in ("gate_proj", "up_proj", "down_proj"):
      params += _linear(f"{kl}.mlp.{name}", (*pl, "mlp", name), bias=False, layer=i)
  params.append(_norm("model.norm", (*lm, "norm")))
  if not config.text.tie_word_embeddings:
    params += _linear("lm_head", ("lm_head",), bias=False)
  return params


def model_params(config: Qwen25VLConfig) -> list[HFParam]:
  """Table of every parameter of `Qwen25VL(config)`."""
  return vision_params(config.vision, "visual.", ("visual",)) + _text_params(config)


def to_flax(array: np.ndarray, kind: Kind) -> np.ndarray:
  """A checkpoint tensor in our layout (a view where possible)."""
  if kind == "linear":
    return array.T
  if kind == "conv":
    return array.reshape(array.shape[0], -1).T
  return array


def to_torch(array: np.ndarray, kind: Kind, torch_shape: tuple[int, ...] | None = None) -> np.ndarray:
  """One of our parameters in the checkpoint layout; `conv` needs the Conv3d `torch_shape`."""
  if kind == "linear":
    return array.T
  if kind == "conv":
    if torch_shape is None:
      raise ValueError("converting a conv kernel to the checkpoint layout needs its Conv3d shape")
    return array.T.reshape(torch_shape)
  return array


def torch_shape(param: HFParam, flax_shape: tuple[int, ...], config: VisionConfig) -> tuple[int, ...]:
  """The checkpoint shape of `param` when the parameter at `param.path` has Flax shape `flax_shape`
  (for a stacked parameter, [layers, ...]: the shape of one slice is converted)."""
  if param.layer is not None:
    flax_shape = tuple(flax_shape[1:])
  if param.kind == "linear":
    return tuple(reversed(flax_shape))
  if param.kind == "conv":
    p = config.patch_size
    return (flax_shape[1], config.in_channels, config.temporal_patch_size, p, p)
  return tuple(flax_shape)
