"""Rollout engine: jitted multimodal sampling with a group-shared prefix, and the stage-1 scorer.

    sampler = Sampler(model, SamplerConfig(max_new_tokens=256, method=TopP(0.95)))
    prompts = prompt_batch(processor_output, model.config, length_buckets=(512,))  # or a pipeline batch's
    out = sampler.generate(prompts, jax.random.key(0), group_size=8)             # SampleOutput
    scores = Scorer(model, yes_token_id=yes, no_token_id=no)(stage1_prompts)      # P(yes) [N]
"""

from mmrag_jax.sampling.decode import DecodeSettings, DecodeState, decode_loop
from mmrag_jax.sampling.host_batch import (
    completion_batch,
    fit_length,
    images_per_row,
    select_rows,
    smallest_bucket,
)
from mmrag_jax.sampling.keys import row_keys, step_keys
from mmrag_jax.sampling.methods import Categorical, Greedy, SamplingMethod, TopK, TopP, top_k_logits, top_p_logits
from mmrag_jax.sampling.inputs import place_inputs
from mmrag_jax.sampling.prompt_batch import (
    Pick,
    PromptBatch,
    PromptTokens,
    gather_prompts,
    prompt_batch,
    with_padding_rows,
)
from mmrag_jax.sampling.sampler import SampleOutput, Sampler, SamplerConfig
from mmrag_jax.sampling.scorer import (
    Scorer,
    ScorerConfig,
    judgment_continuation,
    judgment_token_ids,
    with_continuation,
    yes_probability,
)
from mmrag_jax.sampling.steps import decode_one, float32_logits, prefill_group

__all__ = [
    "Categorical",
    "DecodeSettings",
    "DecodeState",
    "Greedy",
    "Pick",
    "PromptBatch",
    "PromptTokens",
    "SampleOutput",
    "Sampler",
    "SamplerConfig",
    "SamplingMethod",
    "Scorer",
    "ScorerConfig",
    "TopK",
    "TopP",
    "completion_batch",
    "decode_loop",
    "decode_one",
    "fit_length",
    "float32_logits",
    "gather_prompts",
    "images_per_row",
    "judgment_continuation",
    "judgment_token_ids",
    "place_inputs",
    "prefill_group",
    "prompt_batch",
    "row_keys",
    "select_rows",
    "smallest_bucket",
    "step_keys",
    "top_k_logits",
    "top_p_logits",
    "with_padding_rows",
    "with_continuation",
    "yes_probability",
]
