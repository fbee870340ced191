"""Qwen2.5-VL configuration: frozen dataclasses, presets, and Hugging Face config.json conversion.

Every field the port needs is explicit (the transformers class defaults differ from the published
checkpoints, e.g. vision hidden 3584 and text rms_norm_eps 1e-5, so nothing is left to a default there).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

__all__ = ["Qwen25VLConfig", "TINY_SPECIAL_IDS", "TextConfig", "VisionConfig", "preset", "tiny"]


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 3420
  num_heads: int = 16
  out_hidden_size: int = 3584
  in_channels: int = 3
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  rms_norm_eps: float = 1e-6
  tokens_per_second: int = 2

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    """Values per flattened patch row of `pixel_values`: C * T * P * P (1176 for the real model)."""
    return self.in_channels * self.temporal_patch_size * self.patch_size**2

  @property
  def merge_unit(self) -> int:
    """Patches merged into one language-model token (4)."""
    return self.spatial_merge_size**2


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 152064
  hidden_size: int = 3584
  intermediate_size: int = 18944
  num_hidden_layers: int = 28
  num_attention_heads: int = 28
  num_key_value_heads: int = 4
  head_dim: int = 128
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1_000_000.0
  mrope_section: tuple[int, int, int] = (16, 24, 24)
  max_position_embeddings: int = 128000
  tie_word_embeddings: bool = False


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
  """Full model config. `dtype` is the compute dtype, `param_dtype` the storage dtype of parameters."""

  text: TextConfig = dataclasses.field(default_factory=TextConfig)
  vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  bos_token_id: int = 151643
  eos_token_id: int = 151645
  pad_token_id: int = 151643
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  # Slots of a full-attention frame block (`VisionIndex.frames`): the largest frame the input pipeline
  # sends (`vision_index.max_frame_patches` of its max_pixels). None: one block of all pixel rows.
  frame_block_size: int | None = None
  # Queries per chunk of the text attention (`layers.attention`): its scores take memory ~ T x chunk, not
  # T^2, per layer. None: one chunk.
  attention_query_chunk: int | None = None
  # Unroll the decoder's layer scan and the vision tower's block scans (same math, one program copy per
  # layer). For cost analysis: XLA counts a loop body once, so a scanned program's FLOPs and bytes read as
  # one layer's.
  unroll_layers: bool = False

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def storage_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def replace(self, **kwargs: Any) -> "Qwen25VLConfig":
    return dataclasses.replace(self, **kwargs)

  # -- Hugging Face config.json ---------------------------------------------------------------

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any], **overrides: Any) -> "Qwen25VLConfig":
    """Builds a config from a Hugging Face `config.json` dict (flat hub layout or nested `text_config`)."""
    text_d = dict(d)
    if isinstance(d.get("text_config"), dict):
      # Newer saves nest the decoder fields; prefer them, fall back to the flat top level.
      text_d.update({k: v for k, v in d["text_config"].items() if v is not None})
    vis_d = d.get("vision_config")
    if not isinstance(vis_d, dict):
      raise ValueError("config.json has no 'vision_config' dict: not a Qwen2.5-VL checkpoint")

    def need(src: dict[str, Any], key: str, where: str) -> Any:
      if key not in src:
        raise ValueError(f"config.json is missing '{where}{key}'")
      return src[key]

    # The rotary dict: `rope_parameters` (transformers 5, in text_config) or `rope_scaling` (published hub
    # configs, flat). The nested text_config wins over a flat copy at the top level.
    rope = {}
    for src in (d, d.get("text_config") or {}):
      rope = src.get("rope_parameters") or src.get("rope_scaling") or rope
    mrope_section = tuple(rope.get("mrope_section", (16, 24, 24)))
    rope_theta = rope.get("rope_theta", text_d.get("rope_theta", 1_000_000.0))
    n_heads = need(text_d, "num_attention_heads", "")
    hidden = need(text_d, "hidden_size", "")
    text = TextConfig(
        vocab_size=need(text_d, "vocab_size", ""),
        hidden_size=hidden,
        intermediate_size=need(text_d, "intermediate_size", ""),
        num_hidden_layers=need(text_d, "num_hidden_layers", ""),
        num_attention_heads=n_heads,
        num_key_value_heads=text_d.get("num_key_value_heads", n_heads),
        head_dim=text_d.get("head_dim") or hidden // n_heads,
        rms_norm_eps=text_d.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope_theta),
        mrope_section=mrope_section,  # type: ignore[arg-type]
        max_position_embeddings=text_d.get("max_position_embeddings", 128000),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", text_d.get("tie_word_embeddings", False))),
    )
    vision = VisionConfig(
        depth=need(vis_d, "depth", "vision_config."),
        hidden_size=need(vis_d, "hidden_size", "vision_config."),
        intermediate_size=need(vis_d, "intermediate_size", "vision_config."),
        num_heads=need(vis_d, "num_heads", "vision_config."),
        out_hidden_size=vis_d.get("out_hidden_size", hidden),
        in_channels=vis_d.get("in_channels", vis_d.get("in_chans", 3)),
        patch_size=vis_d.get("patch_size", 14),
        temporal_patch_size=vis_d.get("temporal_patch_size", 2),
        spatial_merge_size=vis_d.get("spatial_merge_size", 2),
        window_size=vis_d.get("window_size", 112),
        fullatt_block_indexes=tuple(vis_d.get("fullatt_block_indexes", ())),
        rms_norm_eps=vis_d.get("rms_norm_eps", 1e-6),
        tokens_per_second=vis_d.get("tokens_per_second", 2),
    )
    ids = {}
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                "bos_token_id", "eos_token_id", "pad_token_id"):
      for src in (d, text_d):
        if src.get(key) is not None:
          ids[key] = src[key]
          break
    if isinstance(ids.get("eos_token_id"), list):
      ids["eos_token_id"] = ids["eos_token_id"][0]
    return cls(text=text, vision=vision, **ids, **overrides)

  def to_hf_dict(self) -> dict[str, Any]:
    """A `config.json` dict that transformers' `Qwen2_5_VLConfig` reads back into this config."""
    t, v = self.text, self.vision
    text_config = {
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads,
        "head_dim": t.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": t.rms_norm_eps,
        "rope_theta": t.rope_theta,
        # transformers 5's own layout; its text config exempts mrope_section from rope validation.
        "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta,
                            "mrope_section": list(t.mrope_section)},
        "max_position_embeddings": t.max_position_embeddings,
        "tie_word_embeddings": t.tie_word_embeddings,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": self.eos_token_id,
        "pad_token_id": self.pad_token_id,
        "model_type": "qwen2_5_vl_text",
    }
    vision_config = {
        "depth": v.depth,
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_heads": v.num_heads,
        "out_hidden_size": v.out_hidden_size,
        "in_channels": v.in_channels,
        "patch_size": v.patch_size,
        "temporal_patch_size": v.temporal_patch_size,
        "spatial_merge_size": v.spatial_merge_size,
        "window_size": v.window_size,
        "fullatt_block_indexes": list(v.fullatt_block_indexes),
        "tokens_per_second": v.tokens_per_second,
        "hidden_act": "silu",
        "model_type": "qwen2_5_vl",
    }
    # Flat copies for readers of the hub layout, but no rope dict: the top-level config validates one
    # without the text config's exemption and warns "Unrecognized keys ... {'mrope_section'}".
    flat = {k: val for k, val in text_config.items() if k not in ("model_type", "rope_parameters")}
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        **flat,
        "text_config": text_config,
        "vision_config": vision_config,
        "image_token_id": self.image_token_id,
        "video_token_id": self.video_token_id,
        "vision_start_token_id": self.vision_start_token_id,
        "vision_end_token_id": self.vision_end_token_id,
        "torch_dtype": self.param_dtype,
    }


# -- Presets ---------------------------------------------------------------------------------------
# Published Qwen2.5-VL-{3B,7B}-Instruct config.json values (see shared/reference/qwen25vl.md).

_REAL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, window_size=112,
                    fullatt_block_indexes=(7, 15, 23, 31))


def _qwen25vl_3b(**overrides: Any) -> Qwen25VLConfig:
  text = TextConfig(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                    num_attention_heads=16, num_key_value_heads=2, head_dim=128, tie_word_embeddings=True)
  return Qwen25VLConfig(text=text, vision=VisionConfig(out_hidden_size=2048, **_REAL_VISION), **overrides)


def _qwen25vl_7b(**overrides: Any) -> Qwen25VLConfig:
  text = TextConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                    num_attention_heads=28, num_key_value_heads=4, head_dim=128, tie_word_embeddings=False)
  return Qwen25VLConfig(text=text, vision=VisionConfig(out_hidden_size=3584, **_REAL_VISION), **overrides)


# Special-token ids of the offline tiny tokenizer (ids 496.. of its 512-entry vocabulary).
TINY_SPECIAL_IDS = {
    "<|endoftext|>": 496,
    "<|im_start|>": 497,
    "<|im_end|>": 498,
    "<|vision_start|>": 499,
    "<|vision_end|>": 500,
    "<|image_pad|>": 501,
    "<|video_pad|>": 502,
}


def tiny(vocab_size: int = 512, **overrides: Any) -> Qwen25VLConfig:
  """A few-layer model for tests and the demo: GQA 4/2 heads, 4 vision blocks (2 windowed, 2 full).

  Special token ids are placed at the top of the small vocabulary, matching the offline test
  tokenizer (`mmrag_jax.processing.tiny_tokenizer`).
  """
  text = TextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0,
                    mrope_section=(2, 3, 3), max_position_embeddings=4096, tie_word_embeddings=False)
  vision = VisionConfig(depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                        window_size=112, fullatt_block_indexes=(1, 3))
  ids = dict(bos_token_id=TINY_SPECIAL_IDS["<|endoftext|>"], pad_token_id=TINY_SPECIAL_IDS["<|endoftext|>"],
             eos_token_id=TINY_SPECIAL_IDS["<|im_end|>"],
             vision_start_token_id=TINY_SPECIAL_IDS["<|vision_start|>"],
             vision_end_token_id=TINY_SPECIAL_IDS["<|vision_end|>"],
             image_token_id=TINY_SPECIAL_IDS["<|image_pad|>"], video_token_id=TINY_SPECIAL_IDS["<|video_pad|>"])
  ids.update(overrides)
  return Qwen25VLConfig(text=text, vision=vision, **ids)


_PRESETS = {
    "tiny": tiny,
    "qwen2.5-vl-3b": _qwen25vl_3b,
    "qwen2.5-vl-7b": _qwen25vl_7b,
}


def preset(name: str, **overrides: Any) -> Qwen25VLConfig:
  if name not in _PRESETS:
    raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(_PRESETS)}")
  return _PRESETS[name](**overrides)
