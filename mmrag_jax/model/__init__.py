"""Flax NNX Qwen2.5-VL: config, model, host-side inputs, chunked token log-probs, KV cache, HF checkpoints.

    model = load_pretrained("/ckpt/Qwen2.5-VL-7B-Instruct", dtype="bfloat16")    # or Qwen25VL(tiny(), rngs=...)
    inputs = prepare_inputs(processor_batch, model.config, num_patches=4096)     # ModelInputs, host numpy
    logits = nnx.jit(forward)(model, inputs)                                     # [B, L, V]
    save_pretrained(model, "/out/policy")                                        # transformers loads it

Configs: `preset("3b" | "7b")`, `tiny()` for tests. Decoding with a cache lives in `kv_cache` (`KVCache`,
`prefill`, `decode_step`); the sampler in `mmrag_jax.sampling` drives it.
"""

from mmrag_jax.model.checkpoint import load_pretrained, save_pretrained
from mmrag_jax.model.config import Qwen25VLConfig, TextConfig, VisionConfig, preset, tiny
from mmrag_jax.model.kv_cache import KVCache
from mmrag_jax.model.logprobs import chunked_logprobs
from mmrag_jax.model.qwen25vl import ModelInputs, Qwen25VL, abstract_model, forward, prepare_inputs
from mmrag_jax.model.vision_index import VisionIndex

__all__ = [
    "KVCache", "ModelInputs", "Qwen25VL", "Qwen25VLConfig", "TextConfig", "VisionConfig", "VisionIndex",
    "abstract_model", "chunked_logprobs", "forward", "load_pretrained", "prepare_inputs", "preset",
    "save_pretrained", "tiny",
]
