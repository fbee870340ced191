"""MMRAG-RFT stage 1: point-wise relevance judgments, GRPO with rule rewards.

  python -m mmrag_jax.main --config=configs/stage1.py:3b --workdir=runs/stage1 \
      --config.model.path=/ckpt/Qwen2.5-VL-3B-Instruct --config.data.data_dir=/data/webqa

Each prompt shows the question and ONE candidate (an image with its caption, or a text snippet); the
completion is `<answer>yes</answer>` or `<answer>no</answer>`. Rewards: format + agreement with the gold
label. After training, stage-1 inference scores every candidate of every question (P("yes") in one
forward pass), writes `ranking_<split>.jsonl` (the stage-2 input) and reports recall@k of the gold
sources. Modes: train (then inference on `stage1.score_splits`, by default the train and eval splits),
eval / predict (inference only, from WORKDIR/export or model.path). Presets after ':': demo, toy, 3b, 7b (default: 7b).
"""

from mmrag_jax.recipe import presets


def get_config(arg: str | None = None):
  c = presets.base_config(stage=1)
  c.rl.max_new_tokens = 16       # `<answer>yes</answer><|im_end|>` plus slack
  c.predict.max_new_tokens = 16
  c.reward = dict(format_weight=0.5, relevance_weight=1.0, think="forbidden", gate_on_format=False)
  c.prompt = dict(stage1_think=False, max_text_words=200, system_prompt=None)
  c.stage1 = dict(
      negatives_per_positive=1.0,     # sampled negatives per gold candidate in training prompts
      score_splits=(),  # splits scored after training (stage 2 reads them); () = data.train_split + eval_split
  )
  presets.apply_preset(c, arg)
  if c.preset == "demo":
    c.pipeline.length_buckets = (256,)  # demo prompts are 120-165 tokens
    c.pipeline.patch_buckets = (256,)    # 16 one-image prompts x 16 patches
    c.train.num_steps = 4
    c.warmup.steps = 60
  if c.preset == "toy":
    c.pipeline.length_buckets = (160,)  # toy prompts are 110-145 tokens
    c.pipeline.patch_buckets = (256, 1024)  # training: 16 one-image prompts x 16 patches; scoring: 64
    c.train.num_steps = 40
  return c
