"""mmrag_jax: MMRAG-RFT (two-stage GRPO fine-tuning of Qwen2.5-VL for explainable multimodal RAG) in JAX.

Subpackages: `model` (Flax NNX Qwen2.5-VL), `processing` (tokenizer and image glue, prompts), `data`
(WebQA / MultimodalQA readers and pipelines), `sampling` (rollout engine), `formats` (completion parsing),
`rl` (GRPO and rewards), `evaluation` (official metrics), `parallel` (mesh and sharding rules), `recipe`
(the run behind `python -m mmrag_jax.main`), `plan` (TPU ahead-of-time plans), `sweep`, `pretrain`,
`benchmarks`. Each package's `__init__` names what it offers.
"""

__all__: list[str] = []  # the subpackages are the surface

__version__ = "0.1.0"
