"""The ahead-of-time planner on the tiny demo model over a 2x2 v5e slice: its numbers are XLA's, its FLOPs
are the model's, and what does not fit is named with a non-zero exit."""

from __future__ import annotations

import dataclasses
import json
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("libtpu", reason="the planner needs libtpu: pip install -e '.[tpu]'")

from mmrag_jax.model.synthetic_batch import random_processor_batch  # noqa: E402
from mmrag_jax.plan import CHIPS, SLICES, TopologyError, build_setup, load_slice, make_plan  # noqa: E402
from mmrag_jax.plan.__main__ import main  # noqa: E402
from mmrag_jax.plan.analysis import collective_bytes  # noqa: E402
from mmrag_jax.plan import analysis, planner  # noqa: E402
from mmrag_jax.plan.programs import (  # noqa: E402
    PROGRAM_FAMILIES, UpdateGeometry, abstract_train_batch, model_config, sampler_programs, update_programs)
from mmrag_jax.plan.topology import GIB, INSTALL_HINT, topology_name  # noqa: E402
from mmrag_jax.rl import update  # noqa: E402
from mmrag_jax.rl.batch import build_train_batch  # noqa: E402
from mmrag_jax.sampling import prompt_batch  # noqa: E402
from mmrag_jax.sweep.grid import load_config  # noqa: E402

TOPOLOGY = "v5e:2x2"
# Demo model, FSDP over the 4 chips, a short prompt / completion / image bucket so compiles take seconds.
SMALL = {"mesh.shape": (1, -1, 1), "pipeline.length_buckets": (64,), "pipeline.patch_buckets": (64,),
         "rl.max_new_tokens": 16, "predict.max_new_tokens": 16}
SMALL_ARGS = [f"--config.{k}={v!r}".replace(" ", "") for k, v in SMALL.items()]


def _config(**extra):
  config = load_config("configs/stage2.py:demo")
  for field, value in {**SMALL, **extra}.items():
    section, name = field.split(".")
    config[section][name] = value
  return config


@pytest.fixture(scope="module")
def tpu():
  return load_slice(TOPOLOGY)


@pytest.fixture(scope="module")
def plan():
  return make_plan(_config(), TOPOLOGY, flops_balance=True)


def test_slice_names_map_to_libtpu_topologies_counting_cores_or_chips():
  assert topology_name("v5p-8") == "v5p:2x2x1"            # 8 TensorCores = 4 chips
  assert topology_name("v5litepod-16") == "v5e:4x4"       # 16 chips
  assert topology_name("v5e-16") == "v5e:4x4"
  assert topology_name("v6e-8") == "v6e:2x4"
  assert topology_name("v4-8") == "v4:2x2x1"
  assert topology_name("v5e:2x2") == "v5e:2x2"            # libtpu names pass through


def test_v5p_is_one_device_per_chip_and_v4_one_per_core():
  v5p = load_slice("v5p-8")
  assert (len(v5p.devices), v5p.num_chips, v5p.per_device("hbm_bytes")) == (4, 4, 95 * GIB)
  v4 = load_slice("v4-8")
  assert (len(v4.devices), v4.num_chips, v4.per_device("hbm_bytes")) == (8, 4, 16 * GIB)


def test_chip_table_names_a_source_for_every_generation():
  assert set(CHIPS) == {"v4", "v5e", "v5p", "v6e"}
  assert CHIPS["v5p"].peak_bf16_flops == 459e12
  assert all("cloud.google.com/tpu/docs" in chip.source for chip in CHIPS.values())


def test_unknown_slice_name_lists_the_known_ones(capsys):
  with pytest.raises(TopologyError, match="v5p-8.*v5litepod-16"):
    topology_name("v9-8")
  assert main(["--config=configs/stage2.py:demo", "--topology=v9-8"]) == 2
  err = capsys.readouterr().err
  assert "unknown TPU slice 'v9-8'" in err and all(name in err for name in SLICES)


def test_missing_libtpu_prints_the_install_hint(monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "libtpu", None)  # `import libtpu` now raises ImportError
  assert main(["--config=configs/stage2.py:demo", f"--topology={TOPOLOGY}"]) == 2
  assert capsys.readouterr().err.strip() == f"error: {INSTALL_HINT}"
  assert "pip install -e '.[tpu]'" in INSTALL_HINT


def test_abstract_batch_has_the_structure_shapes_and_dtypes_of_a_built_batch(tpu):
  config = _config()
  setup = build_setup(config, tpu.devices)
  model = setup.model
  # 2 prompts of 16 tokens, each with one 4x4-patch image; G = 2 completions of 5 tokens each.
  prompts = prompt_batch(random_processor_batch([[(1, 4, 4), 10], [(1, 4, 4), 10]], model), model,
                         patch_buckets=(32,))
  rows, width = 4, 5
  host = build_train_batch(prompts, np.zeros((rows, width), np.int32), np.full(rows, width),
                           np.zeros((rows, width), np.float32), group_size=2, config=model,
                           sampling_logprobs=np.zeros((rows, width), np.float32))
  geometry = UpdateGeometry(rows=rows, group_size=2, prompt_length=prompts.length,
                            completion_length=width, num_patches=32, micro_batches=1)
  abstract = abstract_train_batch(model, geometry, setup.mesh)
  assert jax.tree.structure(abstract) == jax.tree.structure(host)
  assert ([(x.shape, np.dtype(x.dtype)) for x in jax.tree.leaves(abstract)]
          == [(np.shape(x), np.asarray(x).dtype) for x in jax.tree.leaves(host)])


def test_byte_counts_are_those_of_the_program_compiled_directly(plan, tpu):
  setup = build_setup(_config(), tpu.devices)
  direct = {}
  for family in PROGRAM_FAMILIES.values():
    for program in family(setup):
      direct[program.name] = program.fn.lower(*program.args).compile().memory_analysis()
  assert set(direct) == {r["name"] for r in plan["programs"]}
  for record in plan["programs"]:
    memory = direct[record["name"]]
    assert (record["argument_bytes"], record["output_bytes"], record["temp_bytes"], record["alias_bytes"],
            record["code_bytes"]) == (memory.argument_size_in_bytes, memory.output_size_in_bytes,
                                      memory.temp_size_in_bytes, memory.alias_size_in_bytes,
                                      memory.generated_code_size_in_bytes)
    outside = sum(record["resident_outside_bytes"].values())
    assert record["peak_bytes"] == (outside + memory.argument_size_in_bytes + memory.output_size_in_bytes
                                    - memory.alias_size_in_bytes + memory.temp_size_in_bytes
                                    + memory.generated_code_size_in_bytes)


def test_resident_state_is_params_adamw_moments_and_accumulators_sharded_over_the_slice(plan):
  resident = plan["resident_bytes"]
  params_bytes = plan["num_params"] * 4  # float32 master weights
  # FSDP over 4 devices: every device holds a quarter of the sharded arrays (small ones replicate).
  assert params_bytes / 4 <= resident["params"] <= params_bytes
  assert resident["accumulators"] == resident["params"]
  assert 2 * resident["params"] <= resident["optimizer"] <= 2 * resident["params"] + 1024  # mu, nu (+ counts)


def _analytic_accumulate_flops(config, geometry, shared: bool) -> tuple[float, int]:
  """Matmul FLOPs of one micro-batch's forward + backward pass of the tiny text model (no images), and the
  decoder positions it runs.

  Shared: each of the N / G prompts runs once (Lp positions), then each of the N rows its T completion
  positions; otherwise every row runs whole (Lp + T positions). Per position and layer, weight matmuls cost
  2W forward and 4W backward (input and weight gradients); the two attention matmuls (QK^T, PV) cost
  4 S H Dh forward and twice that backward, over S = Lp keys for a shared prompt position, Lp + T for a
  completion position and for every position of a whole row. The head runs on the T completion positions of
  each row and is recomputed in the backward pass (jax.checkpoint per chunk): 2 D V forward + 2 D V
  recompute + 4 D V backward per position.
  """
  t = config.text
  q, kv = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
  weights = t.hidden_size * (q + 2 * kv) + q * t.hidden_size + 3 * t.hidden_size * t.intermediate_size
  prompt, completion = geometry.prompt_length, geometry.completion_length
  completion_positions = geometry.rows * completion
  if shared:
    prompt_positions = geometry.rows // geometry.group_size * prompt
    key_positions = prompt * prompt_positions + (prompt + completion) * completion_positions
  else:
    prompt_positions = geometry.rows * prompt
    key_positions = (prompt + completion) * (prompt_positions + completion_positions)
  layers = t.num_hidden_layers
  dense = 6 * weights * (prompt_positions + completion_positions) * layers
  attention = 3 * 4 * q * key_positions * layers
  head = 8 * t.hidden_size * t.vocab_size * completion_positions
  return float(dense + attention + head), prompt_positions + completion_positions


# 16 rows: G = 4 gives 4 prompts, one per chip (each runs once); G = 8 gives 2, which do not split over the
# 4 chips, so every row runs whole.
@pytest.mark.parametrize("group_size,shared", [(4, True), (8, False)])
def test_accumulate_flops_match_the_analytic_matmul_count(tpu, group_size, shared):
  # Unrolled layers: XLA's cost analysis counts a scan's body once (see the next test).
  config = _config(**{"rl.group_size": group_size})
  setup = build_setup(config, tpu.devices, model=model_config(config).replace(unroll_layers=True))
  setup.geometry = dataclasses.replace(setup.geometry, num_patches=0)  # text only: no vision tower terms
  accumulate = update_programs(setup)[0]
  flops = accumulate.fn.lower(*accumulate.args).compile().cost_analysis()["flops"]
  analytic, positions = _analytic_accumulate_flops(setup.model, setup.geometry, shared)
  analytic /= len(tpu.devices)  # rows split 4 ways
  # XLA also counts elementwise work (norms, rotary, SwiGLU, softmax, the loss): measured below 10% here,
  # where the matmuls are ~6 x 37k weight FLOPs per token per layer against a few thousand elementwise ones.
  print(f'accumulate FLOPs per device: XLA {flops:.4g}, analytic {analytic:.4g}, ratio {flops / analytic:.4f}')
  assert analytic <= flops <= 1.10 * analytic, (flops, analytic)
  # The plan's model FLOPs count the positions the program runs.
  assert setup.geometry.tokens == positions


def test_per_device_flops_are_the_whole_programs_split_evenly(plan):
  # Text rows, pixel rows and attention blocks are all split over the 4 chips. What stays replicated (the
  # optimizer's scalar work, a few index computations) moves the ratio by a few percent either way (the
  # one-device program has its own small extras). The decode weights are a copy: no FLOPs, no ratio.
  imbalance = {r["name"]: r["flops_imbalance"] for r in plan["programs"]}
  print("FLOPs imbalance per program:", imbalance)
  assert imbalance.pop("decode_weights") is None and imbalance.pop("predict_weights") is None
  assert all(0.95 <= v <= 1.05 for v in imbalance.values()), imbalance
  assert plan["summary"]["max_flops_imbalance"] == max(imbalance.values())


@pytest.mark.parametrize("name", ["accumulate", "prefill", "decode"])
def test_layer_corrected_costs_are_the_unrolled_programs(plan, tpu, name):
  """The run's programs scan the decoder layers, and XLA counts a loop body once; the plan adds the other
  layers from two small unrolled probes. Against the same program compiled with every layer unrolled:
  equal FLOPs (to 2%); bytes to 20%, as a loop and its unrolled copy fuse differently (XLA counts slicing
  each layer's weights out of the stack: on the demo model +16% on the decode step, -5% on prefill)."""
  unrolled = build_setup(_config(), tpu.devices, model=model_config(_config()).replace(unroll_layers=True))
  program = next(p for p in update_programs(unrolled) + sampler_programs(unrolled) if p.name == name)
  want = analysis.compile_program(program.fn, program.args)[0]
  got = next(r for r in plan["programs"] if r["name"] == name)
  print(f"{name}: FLOPs planned {got['flops']:.5g} unrolled {want.flops:.5g}; bytes planned "
        f"{got['bytes_accessed']:.5g} unrolled {want.bytes_accessed:.5g}")
  assert got["flops"] == pytest.approx(want.flops, rel=0.02)
  assert got["bytes_accessed"] == pytest.approx(want.bytes_accessed, rel=0.2)


def test_summary_holds_the_result_fields(plan):
  summary = plan["summary"]
  assert summary["fits"] and 0 < summary["min_headroom_fraction"] <= 1
  assert summary["total_compile_s"] > 0 and 0 < summary["predicted_update_mfu"] < 1
  # 6 N tokens of the demo model against what XLA counts for its accumulate + apply (attention scores,
  # norms, the loss and AdamW on top): a share, below 1.
  assert 0.5 < summary["update_model_flops_fraction"] < 1
  # beta = 0: no reference pass; stage 2: no scorer.
  assert [r["name"] for r in plan["programs"]] == ["accumulate", "apply", "prefill", "decode_weights", "decode",
                                                    "predict_prefill", "predict_weights", "predict_decode"]
  assert summary["predicted_rollout_s"] > 0 and summary["decode_vs_roofline"] >= 1.0
  # No windowed-einsum loop at this size: every FLOPs figure is a full count.
  assert summary["flops_lower_bound_programs"] == []
  assert all(r["windowed_einsum_loops"] == 0 for r in plan["programs"])
  accumulate = next(r for r in plan["programs"] if r["name"] == "accumulate")
  assert accumulate["collective_bytes"]["all-gather"] > 0  # FSDP gathers the weights
  assert accumulate["roofline"]["time_s"] == max(accumulate["roofline"][k] for k in ("compute_s", "hbm_s", "ici_s"))


def test_collectives_are_read_from_result_shapes_with_async_pairs_counted_once():
  hlo = """
  %ag = bf16[8,128]{1,0} all-gather(bf16[2,128]{1,0} %p), dimensions={0}
  %ars = f32[16]{0} all-reduce-start(f32[16]{0} %g), to_apply=%add
  %ard = f32[16]{0} all-reduce-done(f32[16]{0} %ars)
  %cps = (f32[4]{0}, f32[4]{0}, u32[], u32[]) collective-permute-start(f32[4]{0} %x)
  %cpd = f32[4]{0} collective-permute-done((f32[4]{0}, f32[4]{0}, u32[], u32[]) %cps)
  """
  got = collective_bytes(hlo)
  assert (got["all-gather"], got["all-reduce"], got["collective-permute"]) == (8 * 128 * 2, 16 * 4, 16)


def test_windowed_einsum_loops_are_told_apart_from_other_loops():
  # Shortened lines of a 3B accumulate compiled for a v5litepod-16: two windowed-einsum loops (all-gather and
  # reduce-scatter sides) and the log-prob head's lax.map loop.
  hlo = """
  %while.224 = (bf16[4,4608,2048]{2,1,0}, u32[]) while(%tuple.2070), condition=%wide.windowed_dot_general_cond_ag.1.clone.1, body=%wide.windowed_dot_general_body_ag.1.clone.1.sunk, metadata={op_name="jit(accumulate)/jvp()/closed_call/dot_general"}
  %while.225 = (bf16[4,4608,256]{2,1,0}, u32[]) while(%tuple.2076), condition=%wide.windowed_dot_general_cond_rs.4.clone.clone, body=%windowed_dot_general_body_rs.4.clone.clone.sunk
  %while.254 = (bf16[4,256,2048]{2,1,0}, s32[]) while(%tuple.2079), condition=%wide.region_26.28_spmd.clone, body=%wide.region_23.27_spmd.clone.sunk, metadata={op_name="jit(accumulate)/transpose(jvp())/while"}
  """
  assert analysis.windowed_einsum_loops(hlo) == 2


def _figures(flops: float, loops: int = 0) -> analysis.CompiledProgram:
  return analysis.CompiledProgram(argument_bytes=0, output_bytes=0, temp_bytes=0, alias_bytes=0, code_bytes=0,
                                  flops=flops, bytes_accessed=0.0, collectives=dict.fromkeys(analysis.COLLECTIVES, 0),
                                  compile_s=0.0, lower_s=0.0, windowed_einsum_loops=loops)


def test_a_program_with_windowed_einsum_loops_takes_its_flops_from_the_probes():
  # Base probe 50 FLOPs; one more text layer +20, one more window block +10. The scanned program counts one
  # text layer and one window block, 5 and 3 left out; the model has 6 text layers (4 beyond the base's 2) and
  # 4 window blocks (3 beyond the base's 1).
  base, extra = _figures(50.0), {"text": (5, _figures(70.0)), "window": (3, _figures(60.0))}
  beyond = {"text": 4, "window": 3}
  plain = planner.layer_corrected(_figures(100.0), base, extra, beyond)
  assert (plain.flops, plain.flops_from_probes) == (100.0 + 5 * 20 + 3 * 10, False)
  windowed = planner.layer_corrected(_figures(80.0, loops=3), base, extra, beyond)
  assert (windowed.flops, windowed.flops_from_probes, windowed.windowed_einsum_loops) == (50.0 + 4 * 20 + 3 * 10,
                                                                                         True, 3)
  # Without a probe for a kind the model has more of than the base, the program's own (lower-bound) count stays.
  partial = planner.layer_corrected(_figures(80.0, loops=3), base, {"text": extra["text"]}, beyond)
  assert (partial.flops, partial.flops_from_probes) == (80.0 + 5 * 20, False)


def test_the_full_count_options_compile_the_same_program_where_no_loop_is_windowed(tpu):
  setup = build_setup(_config(), tpu.devices)
  program = next(p for p in update_programs(setup) if p.name == "accumulate")
  default = analysis.compile_program(program.fn, program.args)[0]
  counted = analysis.compile_program(program.fn, program.args, analysis.FULL_COUNT_OPTIONS)[0]
  assert default.windowed_einsum_loops == counted.windowed_einsum_loops == 0
  assert counted.flops == default.flops and counted.temp_bytes == default.temp_bytes


def test_a_kl_term_adds_the_reference_pass_and_its_resident_copy(tpu):
  plan = make_plan(_config(**{"rl.beta": 0.04}), TOPOLOGY, flops_balance=False, families=["update"])
  assert [r["name"] for r in plan["programs"]] == ["accumulate", "apply", "reference_logprobs"]
  assert plan["resident_bytes"]["reference"] == plan["resident_bytes"]["accumulators"]


def test_a_program_over_the_chips_hbm_is_named_and_exits_non_zero(tmp_path, capsys):
  output = tmp_path / "plan.json"
  code = main(["--config=configs/stage2.py:demo", f"--topology={TOPOLOGY}", *SMALL_ARGS,
               "--hbm_gib=0.001", "--flops_balance=false", "--programs=update", f"--output={output}"])
  out = capsys.readouterr().out
  assert code == 1
  assert "accumulate [N16xL64+16xP64] does not fit" in out and "model.remat=True" in out
  result = json.loads(out.strip().splitlines()[-1].removeprefix("RESULT "))
  assert result["fits"] is False and result["min_headroom_fraction"] < 0
  assert json.loads(output.read_text())["summary"] == result


def test_without_layer_probes_the_plan_has_the_same_memory_figures_and_no_cost_prediction(plan, capsys):
  code = main(["--config=configs/stage2.py:demo", f"--topology={TOPOLOGY}", *SMALL_ARGS, "--flops_balance=false",
               "--layer_probes=false", "--programs=update"])
  out = capsys.readouterr().out
  assert code == 0 and "--layer_probes=false" in out
  result = json.loads(out.strip().splitlines()[-1].removeprefix("RESULT "))
  assert result["fits"] is True
  assert result["predicted_update_s"] is None and result["predicted_update_mfu"] is None
  full = {r["name"]: r for r in plan["programs"]}
  assert result["min_headroom_fraction"] == min(full[n]["headroom_fraction"] for n in ("accumulate", "apply"))
  assert main(["--config=configs/stage2.py:demo", f"--topology={TOPOLOGY}", "--layer_probes=maybe"]) == 2
  assert "--layer_probes='maybe': expected true or false" in capsys.readouterr().err


def test_a_program_the_compiler_refuses_for_hbm_does_not_fit_with_the_bytes_it_asked_for(tpu):
  from mmrag_jax.plan.analysis import out_of_hbm
  from mmrag_jax.plan.report import program_record, verdict

  error = RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                       "temporaries (409.67G) exceeds available HBM (95.74G).")
  program = out_of_hbm(error, (), lower_s=1.0, compile_s=2.0)
  assert program.temp_bytes == int(409.67 * GIB)
  record = program_record("accumulate", "N64xL4608", 1, program, {"optimizer": GIB}, tpu, 16 * GIB)
  assert not record["fits"] and record["roofline"]["bound"] == "unknown"
  assert "accumulate [N64xL4608] does not fit" in verdict([record])[0]
  assert "compiler refused" in verdict([record])[0]


def test_the_advice_names_the_mesh_shapes_that_run_each_prompt_once():
  from mmrag_jax.plan.report import prompt_sharing_advice

  # 4 prompts of G = 8 on 8 devices: (1, 4, 2) and (1, 2, 4) split them; (1, 1, 8) would split 28 heads 8 ways.
  (line,) = prompt_sharing_advice(32, 8, 8, 8, num_heads=28, num_kv_heads=4)
  assert "its 4 prompts per micro-batch do not split over 8 batch shards" in line
  assert "--config.mesh.shape='(1,4,2)' or --config.mesh.shape='(1,2,4)' or a multiple of 8 x G = 64 rows" in line
  assert "(1,1,8)" not in line and "(1,8,1)" not in line
  # 2 kv heads: tensor parallelism over 4 would not split them; 1 prompt splits over no batch shards > 1.
  assert "(1,2,4)" not in prompt_sharing_advice(32, 8, 8, 8, num_heads=16, num_kv_heads=2)[0]
  assert "mesh.shape" not in prompt_sharing_advice(8, 8, 8, 8, num_heads=28, num_kv_heads=4)[0]
  # Prompts that split, or no groups: nothing to advise.
  assert prompt_sharing_advice(32, 8, 4, 4, num_heads=28, num_kv_heads=4) == []
  assert prompt_sharing_advice(32, 1, 8, 8, num_heads=28, num_kv_heads=4) == []


def test_the_decode_loop_is_timed_per_token_step(plan):
  decode = next(r for r in plan["programs"] if r["name"] == "decode")
  # XLA's cost analysis counts the while-loop body once: the loop's time is one step x max_new_tokens.
  assert decode["loop_steps"] == SMALL["rl.max_new_tokens"]
  assert decode["roofline"]["time_s"] == pytest.approx(decode["roofline"]["step_s"] * decode["loop_steps"])


def test_a_stage2_plan_includes_greedy_prediction_after_training(plan):
  """predict.batch_size prompts, one sample each, predict.max_new_tokens greedy steps; only the parameters
  stay live beside them (and the decode copy beside the loop); the training rollout's time leaves them out."""
  config, records = _config(), {r["name"]: r for r in plan["programs"]}
  prompts, length, steps = config.predict.batch_size, SMALL["pipeline.length_buckets"][0], SMALL["predict.max_new_tokens"]
  assert records["predict_prefill"]["bucket"].startswith(f"B{prompts}xL{length}xP")
  decode = records["predict_decode"]
  assert decode["bucket"] == f"N{prompts}xS{length + steps}xT{steps}" and decode["loop_steps"] == steps
  assert set(records["predict_prefill"]["resident_outside_bytes"]) == set()
  assert set(decode["resident_outside_bytes"]) == {"params"} and decode["fits"]
  rollout = sum(r["per_update"] * r["roofline"]["time_s"] for r in plan["programs"] if r["family"] == "sampler")
  assert plan["summary"]["predicted_rollout_s"] == pytest.approx(rollout)


def test_a_stage1_plan_includes_the_scorer_forward():
  config = load_config("configs/stage1.py:demo")
  config.mesh.shape, config.rl.max_new_tokens = (1, -1, 1), 16
  plan = make_plan(config, TOPOLOGY, flops_balance=False, families=["scorer"])
  scorer = next(r for r in plan["programs"] if r["name"] == "scorer")
  assert scorer["bucket"] == f"B{config.scorer.batch_size}xL256xP256" and scorer["fits"]
  assert set(scorer["resident_outside_bytes"]) == set()  # inference: only the parameters are live


def test_a_mesh_that_does_not_cover_the_slice_is_a_one_line_error(capsys):
  assert main(["--config=configs/stage2.py:demo", f"--topology={TOPOLOGY}"]) == 2  # demo mesh is (1, 1, 1)
  err = capsys.readouterr().err
  assert err.startswith("error: config.mesh.shape on v5e:2x2 (4 devices)") and "(1,-1,1)" in err
