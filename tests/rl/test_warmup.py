"""The supervised format warm-up: its target batches, its update (the gradient of the token-mean NLL of the
targets, checked against the transformers model on prompt + completion) and a short run after which the
policy greedily writes its targets."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx

from mmrag_jax.data.batching import PipelineBatch
from mmrag_jax.model import save_pretrained
from mmrag_jax.model.hf_keys import canonical_key, model_params, to_torch, torch_shape
from mmrag_jax.parallel import make_mesh
from mmrag_jax.processing import build_tiny_tokenizer
from mmrag_jax.processing.targets import stage1_target
from mmrag_jax.rl.config import GRPOConfig
from mmrag_jax.rl.update import PolicyUpdater
from mmrag_jax.rl.warmup import WarmupConfig, supervised_warmup, target_batch
from mmrag_jax.sampling import Greedy, Sampler, SamplerConfig, prompt_batch

# Left-padded prompts of different lengths, two with images (see `random_processor_batch`).
PROMPT_ROWS = ([2, (1, 4, 4), 2], [5], [3, (1, 2, 4), 1])
LENGTH_BUCKETS, PATCH_BUCKETS = (32,), (32,)
WIDTH, GROUP_SIZE = 8, 2  # completion tokens T; rows per prompt, each a copy of its target


@pytest.fixture(scope="module")
def tokenize():
  tokenizer = build_tiny_tokenizer()
  return lambda text: tokenizer.encode(text, add_special_tokens=False)


@pytest.fixture(scope="module")
def single_device_mesh():
  return make_mesh((1, 1, 1), jax.devices()[:1])


def warmup_config(max_new_tokens: int, **fields) -> WarmupConfig:
  return WarmupConfig(**{"steps": 1, "learning_rate": 1.0, "max_new_tokens": max_new_tokens, **fields})


def pipeline_batch(processed, config, valid=None) -> PipelineBatch:
  """A processor batch as the pipeline gives it (no metadata: the targets here are given directly)."""
  prompts = prompt_batch(processed, config, length_buckets=LENGTH_BUCKETS, patch_buckets=PATCH_BUCKETS, valid=valid)
  return PipelineBatch(prompts=prompts, meta={})


def reference_completions(targets, tokenize, stop_id, width):
  """Per row: the target's tokens and the stop id, cut to `width` (what the policy should write)."""
  return [(list(tokenize(text)) + [stop_id])[:width] for text in targets]


def full_sequence_batch(prompts, completions, pad_token_id):
  """Processor form of prompt + completion per row: each row's real prompt tokens followed by its completion,
  left-padded again to the longest row; the images are the prompts' own."""
  sequences = [np.concatenate([ids[mask == 1], completion]) for ids, mask, completion in
               zip(prompts["input_ids"], prompts["attention_mask"], completions)]
  length = max(map(len, sequences))
  input_ids = np.full((len(sequences), length), pad_token_id, np.int64)
  attention_mask = np.zeros((len(sequences), length), np.int64)
  for row, sequence in enumerate(sequences):
    input_ids[row, length - len(sequence):] = sequence
    attention_mask[row, length - len(sequence):] = 1
  return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": prompts["pixel_values"],
          "image_grid_thw": prompts["image_grid_thw"]}


def reference_nll_and_gradient(model, prompts, completions, directory):
  """(token-mean NLL of the completions, its gradient by checkpoint key in the checkpoint layout) under the
  transformers model loaded from `model`'s export: one full forward of prompt + completion, a float32
  log-softmax over the vocabulary. Each completion ends its left-padded row, so token j of a completion of n
  tokens sits at column L - n + j and is predicted by column L - n + j - 1."""
  save_pretrained(model, directory)
  reference = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
      directory, attn_implementation="eager", dtype=torch.float32)
  full = full_sequence_batch(prompts, completions, model.config.pad_token_id)
  input_ids = full["input_ids"]
  logits = reference(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(full["attention_mask"]),
                     mm_token_type_ids=torch.from_numpy((input_ids == model.config.image_token_id).astype(np.int64)),
                     pixel_values=torch.from_numpy(full["pixel_values"]),
                     image_grid_thw=torch.from_numpy(full["image_grid_thw"])).logits
  logprobs = torch.log_softmax(logits.float(), dim=-1)
  length = input_ids.shape[1]
  picked = [logprobs[row, torch.arange(length - len(c) - 1, length - 1), torch.tensor(c)]
            for row, c in enumerate(completions)]
  nll = -torch.cat(picked).mean()
  nll.backward()
  return nll.item(), {canonical_key(name): p.grad.numpy() for name, p in reference.named_parameters()}


def checkpoint_layout(state, config):
  """An NNX state shaped like the parameters (e.g. a parameter step) by checkpoint key, in the checkpoint
  layout: the export's own linear map, so gradients map the same way as parameters."""
  flat = {path: np.asarray(variable.get_value()) for path, variable in nnx.to_flat_state(state)}
  return {p.key: to_torch(p.part(flat[p.path]), p.kind, torch_shape(p, flat[p.path].shape, config.vision))
          for p in model_params(config)}


@pytest.mark.parametrize("group_size", [1, 2])
def test_target_batch_appends_the_stop_id_cuts_to_width_and_masks_invalid_rows(make_tiny_policy, rl_cases,
                                                                                 tokenize, group_size):
  model, width = make_tiny_policy(), 6
  stop_id, pad_id = model.config.eos_token_id, model.config.pad_token_id
  batch = pipeline_batch(rl_cases.processor_prompts(PROMPT_ROWS, seed=0), model.config,
                         valid=np.array([True, False, True]))
  # stage1_target(1) is 5 tokens + stop: exactly the width, not cut; the think target is cut.
  targets = [stage1_target(1), stage1_target(0), stage1_target(0, think=True)]
  lengths = [len(tokenize(text)) + 1 for text in targets]
  assert lengths[0] == width and lengths[2] > width

  train, cut = target_batch(model, batch, targets, tokenize, stop_id, warmup_config(width, group_size=group_size))
  assert cut == 1  # targets are counted, not their copies
  expected = reference_completions(targets, tokenize, stop_id, width)
  ids, mask = np.asarray(train.completion_ids), np.asarray(train.completion_mask)
  assert ids.shape == mask.shape == (3 * group_size, width)
  for prompt in (0, 2):
    for row in range(prompt * group_size, (prompt + 1) * group_size):  # group-major copies
      assert ids[row].tolist() == expected[prompt] + [pad_id] * (width - len(expected[prompt]))
      assert mask[row].tolist() == [True] * len(expected[prompt]) + [False] * (width - len(expected[prompt]))
  assert ids[0, -1] == stop_id  # the stop token fits and is a loss token
  assert stop_id not in ids[2 * group_size].tolist()  # a cut target loses its stop token
  invalid = slice(group_size, 2 * group_size)
  assert not mask[invalid].any() and (ids[invalid] == pad_id).all()
  np.testing.assert_array_equal(train.advantages, np.ones(3 * group_size, np.float32))
  # The completions follow their prompts in the model inputs.
  np.testing.assert_array_equal(np.asarray(train.inputs.input_ids)[:, -width:], ids)


def test_grpo_config_keeps_the_runs_loss_settings_with_a_constant_rate_and_no_kl():
  warmup = warmup_config(64, steps=40, learning_rate=3e-3, max_grad_norm=0.5)
  base = GRPOConfig(group_size=4, eps_high=0.28, beta=0.04, num_iterations=2, old_logprobs="sampler",
                    learning_rate=1e-6, warmup_steps=10, total_steps=500, final_lr_fraction=0.1,
                    temperature=0.7, max_new_tokens=64, logprob_chunk_size=128)
  config = warmup.grpo_config(base)
  assert (config.group_size, config.eps_low, config.eps_high, config.kl_estimator) == (4, 0.2, 0.28, "k3")
  assert (config.beta, config.num_iterations, config.old_logprobs, config.temperature) == (0.0, 1, "trainer", 1.0)
  assert (config.aggregation, config.max_new_tokens, config.max_grad_norm) == ("token-mean", 64, 0.5)
  schedule = config.learning_rate_schedule()
  assert [float(schedule(step)) for step in (0, 20, 40)] == pytest.approx([3e-3] * 3)
  # A KL-free token-mean run keeps its loss settings: the two updaters share the compiled gradient step.
  plain = dataclasses.replace(base, beta=0.0)
  assert warmup.grpo_config(plain).loss_config() == plain.loss_config()


def test_warmup_update_moves_the_parameters_by_minus_the_nll_gradient(make_tiny_policy, rl_cases, tokenize,
                                                                        single_device_mesh, tmp_path):
  """Every prompt's target is copied into G = 2 rows: copies leave the token-mean NLL (and its gradient)
  of the distinct targets unchanged."""
  config = rl_cases.config
  stop_id = config.eos_token_id
  batch = rl_cases.processor_prompts(PROMPT_ROWS, seed=1)
  # 6 tokens (two pads), 22 tokens (cut to 8), 6 tokens.
  targets = [stage1_target(1), stage1_target(0, think=True), stage1_target(0)]
  warmup = warmup_config(WIDTH, group_size=GROUP_SIZE)
  grpo = dataclasses.replace(warmup.grpo_config(), max_grad_norm=0.0)
  expected_nll, expected_grad = reference_nll_and_gradient(
      make_tiny_policy(), batch, reference_completions(targets, tokenize, stop_id, WIDTH), str(tmp_path))

  model = make_tiny_policy()
  train, _ = target_batch(model, pipeline_batch(batch, config), targets, tokenize, stop_id, warmup)
  updater = PolicyUpdater(model, grpo, single_device_mesh, tx=optax.sgd(1.0))
  before = jax.tree.map(np.array, updater.params)
  metrics, (logprobs,) = updater.optimizer_update([updater.place_batch(train)])

  mask = np.asarray(train.completion_mask)
  assert -float((np.asarray(logprobs) * mask).sum() / mask.sum()) == pytest.approx(expected_nll, rel=1e-5)
  assert float(metrics["loss"]) == pytest.approx(-1.0, rel=1e-6)  # -(1/|M|) sum ratio * A with ratio = A = 1
  # With plain SGD at rate 1, before - after is the gradient the update used.
  step = checkpoint_layout(jax.tree.map(lambda old, new: old - np.asarray(new), before, updater.params), config)
  assert step.keys() == expected_grad.keys()
  keys = sorted(step)
  flat_step = np.concatenate([step[k].ravel() for k in keys])
  flat_expected = np.concatenate([expected_grad[k].ravel() for k in keys])
  assert np.linalg.norm(flat_step - flat_expected) <= 1e-5 * np.linalg.norm(flat_expected)
  for key in keys:
    np.testing.assert_allclose(step[key], expected_grad[key], rtol=1e-4, atol=2e-6, err_msg=key)
  assert float(metrics["grad_norm"]) == pytest.approx(float(np.linalg.norm(flat_expected)), rel=1e-5)
  assert np.abs(step["visual.patch_embed.proj.weight"]).max() > 0  # the images are trained through


def test_supervised_warmup_lowers_the_nll_and_teaches_greedy_decoding_the_targets(make_tiny_policy, rl_cases,
                                                                                   tokenize, single_device_mesh):
  # The batch geometry of the test above, so this run reuses its compiled gradient step.
  stop_id = rl_cases.config.eos_token_id
  batch = rl_cases.processor_prompts(PROMPT_ROWS, seed=2)
  targets = [stage1_target(1), stage1_target(0), stage1_target(1)]
  config = warmup_config(WIDTH, steps=30, learning_rate=2e-2, group_size=GROUP_SIZE)
  history = []
  prompts = pipeline_batch(batch, rl_cases.config)
  model = supervised_warmup(make_tiny_policy(), itertools.repeat(prompts), lambda _: targets, tokenize, config,
                            mesh=single_device_mesh, stop_id=stop_id,
                            on_step=lambda step, metrics: history.append((step, metrics)))

  assert [step for step, _ in history] == list(range(1, config.steps + 1))
  nll = [metrics["nll"] for _, metrics in history]
  assert nll[-1] < 0.1 * nll[0]
  assert all(metrics["cut_targets"] == 0 for _, metrics in history)

  sampler = Sampler(model, SamplerConfig(max_new_tokens=WIDTH, method=Greedy(), stop_ids=(stop_id,)))
  out = sampler.generate(prompts.prompts, jax.random.key(0))
  expected = reference_completions(targets, tokenize, stop_id, WIDTH)
  assert [out.tokens[row, :out.lengths[row]].tolist() for row in range(len(targets))] == expected
