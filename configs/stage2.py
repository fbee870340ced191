"""MMRAG-RFT stage 2: list-wise evidence ranking and answering with visible reasoning (GRPO).

  python -m mmrag_jax.main --config=configs/stage2.py:3b --workdir=runs/stage2 \
      --config.stage2.stage1_workdir=runs/stage1 --config.data.data_dir=/data/webqa

Each prompt shows the question and the top-k candidates of the stage-1 ranking, numbered [1]..[k], images
inline; the completion is `<think>…</think><evidence>[3], [1]</evidence><answer>…</answer>`. Rewards:
format + ranking of the cited evidence against the gold sources (set F1 and NDCG) + answer quality (WebQA
keyword accuracy / MultimodalQA F1). Training starts from the stage-1 policy (STAGE1_WORKDIR/export unless
`stage2.init_from` names another checkpoint) and takes the hardest negatives from its ranking. After
training, the full pipeline runs on `data.eval_split` (stage-1 filter -> top-k -> stage-2 generation) and
writes predictions.jsonl, the official submission file, metrics.json and report.html.

Modes: train, eval (pipeline + metrics from WORKDIR/export), predict (the same; metrics when the split is
labeled). Presets after ':': demo (runs stage 1 first inside WORKDIR/stage1: the whole method on a tiny
random model and synthetic data in minutes), toy (from the pretrained stand-in base model of
`python -m mmrag_jax.pretrain`), 3b, 7b (default: 7b).
"""

import importlib.util
import os

from mmrag_jax.recipe import presets


def _stage1_config(arg: str | None):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stage1.py")
  spec = importlib.util.spec_from_file_location("mmrag_stage1_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg: str | None = None):
  c = presets.base_config(stage=2)
  c.rl.max_new_tokens = 512
  c.reward = dict(format_weight=0.5, ranking_weight=1.0, answer_weight=1.0, set_f1_fraction=0.5,
                  mmqa_em_fraction=0.0, think="required", gate_on_format=False, round_mmqa_f1=True,
                  mmqa_span_separator=";")  # the prompt asks for semicolon-separated MultimodalQA answers
  c.prompt = dict(stage1_think=False, stage2_think=True, max_text_words=200, system_prompt=None)
  c.stage2 = dict(
      k=5,                    # candidates per prompt: the top-k of the stage-1 ranking
      stage1_workdir="",      # a finished stage-1 run: its export/ and ranking_<split>.jsonl files
      init_from="",           # policy to start from; '' = STAGE1_WORKDIR/export
      run_stage1=False,       # run stage 1 (config `stage1`) in STAGE1_WORKDIR first when its outputs are missing
  )
  c.stage1 = _stage1_config(arg)  # the stage-1 run (used by run_stage1 and to score new splits)
  presets.apply_preset(c, arg)
  if c.preset == "demo":
    c.stage2.k = 3
    c.pipeline.length_buckets = (512,)  # demo prompts with 3 candidates are 310-390 tokens
    c.pipeline.patch_buckets = (256, 512)  # training batches: 4 prompts x 3 images x 16 patches; prediction: 8
    c.predict.batch_size = 8
    c.stage2.run_stage1 = True
    c.rl.max_new_tokens = 64   # targets are 52-63 tokens with the tiny tokenizer
    c.predict.max_new_tokens = 64
    c.train.num_steps = 4
    c.warmup.steps = 150  # a random model needs ~150 steps to write the whole format reliably
  if c.preset == "toy":
    c.stage2.k = 3
    c.pipeline.length_buckets = (320,)  # toy prompts with 3 candidates are 250-300 tokens
    c.pipeline.patch_buckets = (768,)  # training and prediction: 16 prompts x 3 images x 16 patches
    c.rl.learning_rate = 5e-4  # stage 2 samples 64-token completions: half stage 1's rate
    c.rl.max_new_tokens = 64  # the base model's answers in the format are 30-55 tokens
    c.predict.max_new_tokens = 64
    c.train.num_steps = 40
  return c
