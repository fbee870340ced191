"""Tokenizer and image-processor glue for Qwen2.5-VL prompts (no torchvision needed).

    processor = load_processor("/ckpt/Qwen2.5-VL-7B-Instruct", min_pixels=3136, max_pixels=200_704)
    batch = processor([processor.apply_chat_template(messages)], [[image]])    # numpy dict for the model

`build_tiny_tokenizer` / `build_tiny_processor_dir` make the offline tiny tokenizer (Qwen2.5-VL's special
tokens and chat template) that tests and the demo use. Prompts of both stages: `prompts`; their
reference completions: `targets`.
"""

from mmrag_jax.processing.processor import QwenVLProcessor, load_processor
from mmrag_jax.processing.tiny_tokenizer import build_tiny_processor_dir, build_tiny_tokenizer

__all__ = ["QwenVLProcessor", "build_tiny_processor_dir", "build_tiny_tokenizer", "load_processor"]
