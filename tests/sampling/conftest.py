"""Fixtures for the sampler tests: one tiny random Qwen2.5-VL, as transformers and as our loaded model.

The transformers model (float32, eager attention, weights drawn with initializer_range 0.2 so logits are
far from ties) is saved with `save_pretrained` and read back through the production `load_pretrained`.
All tests share one 4-row prompt batch (images of several sizes, a text-only row, left padding) so the
jitted prefill and decode loop compile only a few times per session.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
import pytest
import torch
import transformers

from mmrag_jax.model import Qwen25VLConfig, load_pretrained, tiny
from mmrag_jax.model.synthetic_batch import random_processor_batch
from mmrag_jax.sampling import PromptBatch, SampleOutput, Sampler, SamplerConfig, SamplingMethod, TopP, prompt_batch
from mmrag_jax.sampling.host_batch import completion_batch
from tests.model.float64_reference import ROUNDOFF_FACTOR, float64_logits, roundoff

INIT_RANGE = 0.2
MAX_NEW_TOKENS = 16
LENGTH_BUCKETS = (32, 64)
PATCH_BUCKETS = (128, 512)

# Per row: ints are runs of random text tokens, tuples are (t, h, w) image patch grids.
PROMPT_ROWS = (
    [3, (1, 4, 6), 2],
    [5, (1, 2, 2), 4, (1, 4, 4), 1],
    [9, 3],
    [2, (1, 8, 8), 1],
)


def bucketed(batch: dict[str, Any], config: Qwen25VLConfig) -> PromptBatch:
  """The sampler's input for a processor batch, at the shared test buckets."""
  return prompt_batch(batch, config, length_buckets=LENGTH_BUCKETS, patch_buckets=PATCH_BUCKETS)


def to_torch(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
  """Processor keys as torch tensors (mm_token_type_ids included: the reference needs it for M-RoPE)."""
  keys = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
  return {k: torch.from_numpy(np.asarray(batch[k])) for k in keys if k in batch}


@pytest.fixture(scope="session")
def make_prompts() -> Callable[..., dict[str, np.ndarray]]:
  """`make_prompts(rows, config, seed)`, see `random_processor_batch`."""
  return lambda rows, config, seed: random_processor_batch(rows, config, seed=seed)


@pytest.fixture(scope="session")
def config() -> Qwen25VLConfig:
  return tiny()


@pytest.fixture(scope="session")
def hf_model(config) -> transformers.Qwen2_5_VLForConditionalGeneration:
  hf = config.to_hf_dict()
  hf["initializer_range"] = INIT_RANGE
  hf["text_config"]["initializer_range"] = INIT_RANGE
  hf["vision_config"]["initializer_range"] = INIT_RANGE
  hf_config = transformers.Qwen2_5_VLConfig(**hf)
  for c in (hf_config, hf_config.text_config, hf_config.vision_config):
    c._attn_implementation = "eager"
  torch.manual_seed(0)
  return transformers.Qwen2_5_VLForConditionalGeneration(hf_config).eval()


@pytest.fixture(scope="session")
def checkpoint_dir(hf_model, tmp_path_factory) -> str:
  directory = tmp_path_factory.mktemp("sampler_checkpoint")
  hf_model.save_pretrained(str(directory))
  return str(directory)


@pytest.fixture(scope="session")
def model(checkpoint_dir):
  """`hf_model` loaded through the production `load_pretrained` (float32, one device)."""
  return load_pretrained(checkpoint_dir)


@pytest.fixture(scope="session")
def torch_inputs() -> Callable[[dict[str, Any]], dict[str, torch.Tensor]]:
  return to_torch


@pytest.fixture(scope="session")
def make_config() -> Callable[..., SamplerConfig]:
  """`make_config(**fields)`: a SamplerConfig with the shared test T."""
  def make(**fields: Any) -> SamplerConfig:
    return SamplerConfig(**{"max_new_tokens": MAX_NEW_TOKENS, **fields})
  return make


@pytest.fixture(scope="session")
def prompts(config) -> dict[str, np.ndarray]:
  return random_processor_batch(PROMPT_ROWS, config, seed=0)


@pytest.fixture(scope="session")
def prompt_inputs(prompts, config) -> PromptBatch:
  """`prompts` as the sampler takes them (`bucketed`)."""
  return bucketed(prompts, config)


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
  """The shared stochastic rollout: `group_size` samples per prompt with `method`, key `seed`."""

  method: SamplingMethod = TopP(p=0.9, temperature=0.7)
  group_size: int = 2
  seed: int = 7


@pytest.fixture(scope="session")
def rollout_spec() -> RolloutSpec:
  return RolloutSpec()


@pytest.fixture(scope="session")
def shared_rollout(model, prompt_inputs, make_config, rollout_spec) -> SampleOutput:
  """Top-p samples of `prompts` on one device, prefix shared."""
  sampler = Sampler(model, make_config(method=rollout_spec.method))
  return sampler.generate(prompt_inputs, jax.random.key(rollout_spec.seed), group_size=rollout_spec.group_size)


@dataclasses.dataclass(frozen=True)
class Roundoff:
  """The reference's float32 error against its float64 run on the shared rollout's prompt + completions:
  the unit of the float32 tolerances here (see tests/model/float64_reference.py).

  Two float32 runs of ours (another program, batch shape or mesh: other summation orders) each stay
  within ROUNDOFF_FACTOR of it, so they agree within `pairwise(unit)` = 2 * ROUNDOFF_FACTOR * unit.
  """

  policy_logprob: float  # max |error| of log p(completion token), temperature 1
  logit: float  # max |error| of the logits over real positions, relative to max |logit|

  @staticmethod
  def pairwise(unit: float) -> float:
    return 2 * ROUNDOFF_FACTOR * unit


@pytest.fixture(scope="session")
def reference_roundoff(hf_model, prompts, config, rollout_spec, shared_rollout) -> Roundoff:
  sequences = completion_batch(prompts, shared_rollout.tokens, rollout_spec.group_size, config)
  inputs = to_torch(sequences)
  with torch.no_grad():
    float32 = hf_model(**inputs).logits
  exact = float64_logits(hf_model, inputs)
  start, steps = prompts["input_ids"].shape[1] - 1, shared_rollout.tokens.shape[1]
  tokens = torch.tensor(shared_rollout.tokens)[..., None]
  logprob = lambda logits: torch.log_softmax(logits[:, start:start + steps], -1).gather(-1, tokens)[..., 0].numpy()
  mask, real = shared_rollout.completion_mask, sequences["attention_mask"].astype(bool)
  return Roundoff(policy_logprob=roundoff(logprob(float32)[mask], logprob(torch.from_numpy(exact))[mask]),
                  logit=roundoff(float32.numpy()[real], exact[real]) / np.abs(exact[real]).max())
