"""Flax NNX Qwen2.5-VL: config, model, host-side inputs, chunked token log-probs, KV-cache decoding, HF checkpoints."""

from mmrag_jax.model.checkpoint import load_pretrained, save_pretrained
from mmrag_jax.model.config import (
    PRESETS,
    TINY_SPECIAL_IDS,
    Qwen25VLConfig,
    TextConfig,
    VisionConfig,
    preset,
    qwen25vl_3b,
    qwen25vl_7b,
    tiny,
)
from mmrag_jax.model.kv_cache import (
    KVCache,
    decode_hidden,
    decode_step,
    init_cache,
    prefill,
    prefill_hidden,
    repeat_rows,
)
from mmrag_jax.model.logprobs import chunked_logprobs
from mmrag_jax.model.qwen25vl import (
    ModelInputs,
    Qwen25VL,
    abstract_model,
    forward,
    prepare_inputs,
)
from mmrag_jax.model.rope_index import image_scatter_indices, mrope_positions
from mmrag_jax.model.vision_index import VisionIndex

__all__ = [
    "KVCache",
    "ModelInputs",
    "PRESETS",
    "Qwen25VL",
    "Qwen25VLConfig",
    "TINY_SPECIAL_IDS",
    "TextConfig",
    "VisionConfig",
    "VisionIndex",
    "abstract_model",
    "chunked_logprobs",
    "decode_hidden",
    "decode_step",
    "forward",
    "image_scatter_indices",
    "init_cache",
    "load_pretrained",
    "mrope_positions",
    "prefill",
    "prefill_hidden",
    "prepare_inputs",
    "preset",
    "repeat_rows",
    "qwen25vl_3b",
    "qwen25vl_7b",
    "save_pretrained",
    "tiny",
]
