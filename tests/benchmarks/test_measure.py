"""`benchmarks.measure.prefill_flops` against XLA's own FLOP count of the jitted forward."""

from __future__ import annotations

import jax
import pytest
from flax import nnx

from mmrag_jax.benchmarks.measure import prefill_flops
from mmrag_jax.model import Qwen25VL, TextConfig, VisionConfig, forward, prepare_inputs, tiny
from mmrag_jax.model.synthetic_batch import random_processor_batch


@pytest.mark.parametrize("grid", [(1, 8, 8), (1, 16, 8)], ids=["one-window", "two-windows"])
def test_prefill_flops_are_the_compiled_forwards_matmuls(grid):
  # Layers unrolled: XLA's cost analysis counts a scanned body once. A 16 x 8 grid holds two 8 x 8 windows
  # (112 px / 14 px), so window and full-attention blocks differ.
  text = TextConfig(vocab_size=2048, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32, mrope_section=(4, 6, 6))
  vision = VisionConfig(depth=2, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=128,
                        fullatt_block_indexes=(1,))
  config = tiny().replace(text=text, vision=vision, unroll_layers=True)
  batch = random_processor_batch([[40, grid, 40]], config, seed=0)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen25VL(config, rngs=nnx.Rngs(0))))
  inputs = prepare_inputs(batch, config)
  compiled = jax.jit(lambda s, i: forward(nnx.merge(graphdef, s), i)).lower(state, inputs).compile()
  xla = compiled.cost_analysis()["flops"]
  ours = prefill_flops(config, batch["input_ids"].shape[1], grid)
  # XLA also counts the elementwise work (norms, rotary, softmax, SwiGLU): about 1% at these widths
  # (0.6% at the benchmark's quick size, 0.3% at its full size).
  print(f"prefill FLOPs: XLA {xla:.5g}, analytic {ours:.5g}, ratio {xla / ours:.4f}")
  assert ours <= xla <= 1.03 * ours
