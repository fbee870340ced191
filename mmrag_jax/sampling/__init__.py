"""Rollout engine: jitted multimodal sampling with a group-shared prefix, and the stage-1 scorer.

    sampler = Sampler(model, SamplerConfig(max_new_tokens=256, method=TopP(0.95)))
    prompts = prompt_batch(processor_output, model.config, length_buckets=(512,))  # or a pipeline batch's
    out = sampler.generate(prompts, jax.random.key(0), group_size=8)             # SampleOutput
    scores = Scorer(model, yes_token_id=yes, no_token_id=no)(stage1_prompts)      # P(yes) [N]

Sampling methods: `Greedy`, `Categorical`, `TopK`, `TopP` (each a `SamplingMethod`). The jitted steps
(`steps`, `decode`), host-side batch helpers (`host_batch`) and per-row keys (`keys`) are the modules'.
"""

from mmrag_jax.sampling.methods import Categorical, Greedy, SamplingMethod, TopK, TopP
from mmrag_jax.sampling.prompt_batch import PromptBatch, prompt_batch
from mmrag_jax.sampling.sampler import SampleOutput, Sampler, SamplerConfig
from mmrag_jax.sampling.scorer import Scorer, ScorerConfig, judgment_continuation

__all__ = [
    "Categorical", "Greedy", "PromptBatch", "SampleOutput", "Sampler", "SamplerConfig", "SamplingMethod", "Scorer",
    "ScorerConfig", "TopK", "TopP", "judgment_continuation", "prompt_batch",
]
