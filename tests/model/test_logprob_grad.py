"""Token log-probs and their parameter gradients against torch autograd through the reference model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from mmrag_jax.model import abstract_model, chunked_logprobs
from mmrag_jax.model.hf_keys import canonical_key, model_params, to_flax

RESPONSE_LENGTH = 6
CHUNK = 16  # does not divide the sequence length: exercises the padded last chunk


def response_targets(input_ids):
  """Next-token targets [B, L] and a mask [B, L] over the last RESPONSE_LENGTH predictions of each row."""
  targets = np.roll(input_ids, -1, axis=1)
  mask = np.zeros(input_ids.shape, np.float32)
  mask[:, -RESPONSE_LENGTH - 1:-1] = 1.0
  return targets, mask


def reference_logprobs_and_grads(hf_model, batch, targets, mask, torch_batch):
  hf_model.zero_grad(set_to_none=True)
  logits = hf_model(**torch_batch(batch)).logits
  logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, torch.from_numpy(targets)[..., None])[..., 0]
  (logprobs * torch.from_numpy(mask)).sum().backward()
  grads = {canonical_key(name): p.grad.numpy().copy() for name, p in hf_model.named_parameters()}
  hf_model.zero_grad(set_to_none=True)
  return logprobs.detach().numpy(), grads


def test_response_logprob_gradients_match_torch(hf_parity_model, flax_parity_model, parity_batch, parity_inputs,
                                                torch_batch):
  targets, mask = response_targets(parity_batch["input_ids"])
  ref_logprobs, ref_grads = reference_logprobs_and_grads(hf_parity_model, parity_batch, targets, mask, torch_batch)

  # Rematerialised blocks: the training configuration, and the same gradients.
  config = flax_parity_model.config.replace(remat=True)
  model = abstract_model(config)
  nnx.update(model, nnx.state(flax_parity_model, nnx.Param))

  def masked_sum(model):
    logprobs, _ = chunked_logprobs(model.hidden_states(parity_inputs), model.head_weight(), jnp.asarray(targets),
                                   chunk_size=CHUNK)
    return jnp.sum(logprobs * mask), logprobs

  grads, logprobs = nnx.jit(nnx.grad(masked_sum, has_aux=True))(model)
  real = parity_batch["attention_mask"].astype(bool)
  assert np.abs(np.asarray(logprobs) - ref_logprobs)[real].max() <= 1e-4

  flat = dict(nnx.to_flat_state(grads))
  worst = 0.0
  for param in model_params(config):
    ours, ref = np.asarray(param.part(flat[param.path].get_value())), to_flax(ref_grads[param.key], param.kind)
    scale = np.abs(ref).max()
    assert scale > 0, f"no reference gradient reaches {param.key}"
    relative = np.abs(ours - ref).max() / scale
    worst = max(worst, relative)
    assert relative <= 1e-4, f"{param.key}: relative gradient error {relative:.2e}"
  print(f"gradients: worst max-relative error {worst:.2e} over {len(flat)} parameters")


def test_chunked_logprobs_equal_full_log_softmax():
  rng = np.random.default_rng(0)
  hidden = rng.normal(size=(2, 7, 5)).astype(np.float32)
  weight = rng.normal(size=(5, 11)).astype(np.float32)
  targets = rng.integers(0, 11, (2, 7))
  logits = hidden @ weight / 0.7
  shifted = logits - logits.max(-1, keepdims=True)
  expected = np.take_along_axis(shifted - np.log(np.exp(shifted).sum(-1, keepdims=True)), targets[..., None], -1)
  chunked = jax.jit(functools.partial(chunked_logprobs, temperature=0.7, chunk_size=3))
  got, _ = chunked(jnp.asarray(hidden), jnp.asarray(weight), jnp.asarray(targets))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), expected[..., 0], atol=1e-5)
