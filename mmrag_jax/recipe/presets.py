"""The fields both stage configs share, and the presets `demo`, `toy`, `3b`, `7b`.

`configs/stage1.py` and `configs/stage2.py` start from `base_config(stage)`, set their own stage fields and
end with `apply_preset(config, arg)`. Every field is overridable on the command line
(`--config.rl.group_size=16`); `mmrag_jax.recipe.settings.validate` names any bad field before work starts.

Batch geometry (one micro-batch):
  train.batch_size completions = (train.batch_size / rl.group_size) prompts x rl.group_size samples,
  rows sharded over the mesh's ('data', 'fsdp') axes: both divisions must be exact.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections
from ml_collections import config_dict

__all__ = ["apply_preset", "base_config", "score_splits", "stage1_run_config"]

_PRESETS = ("demo", "toy", "3b", "7b")
_DEFAULT_PRESET = "7b"  # the real recipe: needs --config.model.path and --config.data.data_dir


def base_config(stage: int) -> ml_collections.ConfigDict:
  """Fields shared by both stages, with the real-recipe values (see the preset functions)."""
  c = ml_collections.ConfigDict()
  c.stage = stage
  c.mode = "train"                # train | eval | predict
  c.preset = _DEFAULT_PRESET
  c.seed = 0
  c.compilation_cache = True      # the CLI keeps compiled programs in WORKDIR/jax_cache for reruns

  c.model = ml_collections.ConfigDict()
  c.model.path = ""               # Hugging Face Qwen2.5-VL checkpoint directory (stage 1 training)
  c.model.dtype = "bfloat16"      # compute dtype
  c.model.param_dtype = "float32"  # master weights
  c.model.remat = False           # recompute activations in the backward pass (long stage-2 prompts)
  c.model.attention_query_chunk = 0  # text attention in chunks of this many queries (0: one chunk)
  c.model.freeze_vision_tower = "none"  # none | tower (blocks frozen, merger trains) | tower_and_merger
  c.model.build_tiny = False      # demo: write a tiny random model + tokenizer into WORKDIR/tiny_model

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "webqa"        # webqa | mmqa
  c.data.data_dir = ""            # the benchmark's annotation files (and WebQA's imgs.tsv / imgs.lineidx)
  c.data.image_dir = ""           # MultimodalQA images (default DATA_DIR/final_dataset_images)
  c.data.train_split = "train"
  c.data.eval_split = "val"       # webqa: val | test; mmqa: dev | test
  c.data.max_train_questions = 0  # 0 = all
  c.data.max_eval_questions = 0
  c.data.synthetic = False        # demo: generate a synthetic WebQA into WORKDIR/data first
  c.data.synthetic_sizes = (48, 16, 8)  # train, val, test questions of the synthetic set

  c.pipeline = ml_collections.ConfigDict()
  c.pipeline.min_pixels = 56 * 56
  c.pipeline.max_pixels = 448 * 448
  c.pipeline.length_buckets = (512, 1024, 2048, 4096)
  # Pixel rows batches are padded to (multiples of 4); the largest must hold any batch's images (the config
  # check says so); () = one bucket at that worst case.
  c.pipeline.patch_buckets = (4096, 16384, 65536)
  c.pipeline.worker_count = 0
  c.pipeline.read_threads = 4

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (1, -1, 1)       # (data, fsdp, tensor); -1 = all remaining devices

  c.rl = ml_collections.ConfigDict()  # GRPOConfig fields (mmrag_jax/rl/config.py)
  c.rl.group_size = 8
  c.rl.num_iterations = 1
  c.rl.advantage_scaling = "group"
  c.rl.eps_low = 0.2
  c.rl.eps_high = 0.28
  c.rl.beta = 0.0
  c.rl.kl_estimator = "k3"
  c.rl.aggregation = "token-mean"
  c.rl.max_new_tokens = 512
  c.rl.learning_rate = 1e-6
  c.rl.warmup_steps = 10
  c.rl.max_grad_norm = 1.0
  c.rl.weight_decay = 0.0
  c.rl.logprob_chunk_size = 256
  c.rl.temperature = config_dict.placeholder(float)  # the trained policy's; None = sampler.temperature
  c.rl.ratio_level = "token"      # token (GRPO) | sequence (GSPO)
  c.rl.importance_correction = "none"  # none | tis | token-mask | sequence-mask (sampler vs trainer)
  c.rl.importance_cap = 2.0       # C of the importance correction
  c.rl.dynamic_sampling = False   # DAPO: drop constant-reward groups, refill from more prompts
  c.rl.max_refill_batches = 4     # extra pipeline batches per loop step at most

  c.sampler = ml_collections.ConfigDict()
  c.sampler.method = "top_p"      # greedy | categorical | top_k | top_p
  c.sampler.temperature = 1.0
  c.sampler.top_p = 1.0
  c.sampler.top_k = 50
  c.sampler.decode_weights = "gathered"  # gathered (a compute-dtype copy laid out for decoding) | training

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64         # completions per micro-batch (prompts = batch_size / rl.group_size)
  c.train.micro_batches = 1
  c.train.num_steps = 500
  c.train.checkpoint_every = 50
  c.train.max_to_keep = 3
  c.train.eval_every = 0
  c.train.progress_bar = True
  c.train.export = True           # write the trained policy as a Hugging Face directory WORKDIR/export

  # Supervised format warm-up before GRPO (off for real checkpoints). Its batches have the GRPO batch's
  # geometry (train.batch_size rows, each prompt's target repeated rl.group_size times).
  c.warmup = ml_collections.ConfigDict()
  c.warmup.steps = 0
  c.warmup.learning_rate = 1e-5

  c.scorer = ml_collections.ConfigDict()  # stage-1 inference
  c.scorer.batch_size = 64
  c.scorer.recall_ks = (1, 2, 3, 5, 10)

  c.predict = ml_collections.ConfigDict()  # stage-2 inference
  c.predict.batch_size = 8        # prompts per generation batch
  c.predict.max_new_tokens = 512
  c.predict.report = True
  c.predict.bart = ""             # local BART checkpoint for WebQA QA-FL (needs the `fluency` extra)
  return c


def _demo(c: ml_collections.ConfigDict) -> None:
  c.model.build_tiny = True
  c.model.dtype = "float32"
  c.data.synthetic = True
  c.data.synthetic_sizes = (24, 12, 4)
  c.pipeline.min_pixels = 28 * 28
  c.pipeline.max_pixels = 56 * 56
  c.pipeline.read_threads = 2
  c.mesh.shape = (1, 1, 1)
  c.rl.group_size = 4
  c.rl.learning_rate = 2e-4
  c.rl.warmup_steps = 0
  c.train.batch_size = 16
  c.train.num_steps = 3
  c.train.checkpoint_every = 0
  c.warmup.learning_rate = 5e-3
  c.scorer.batch_size = 16
  c.predict.batch_size = 16


def _toy(c: ml_collections.ConfigDict) -> None:
  """The real recipe at toy scale, from the base model of `python -m mmrag_jax.pretrain --workdir=BASE`:
  --config.model.path=BASE/model --config.data.data_dir=BASE/data (its synthetic world). No format warm-up."""
  c.model.dtype = "float32"
  c.pipeline.min_pixels = 28 * 28  # the pretraining's image budget: 56 x 56 pictures are 4 merged tokens
  c.pipeline.max_pixels = 56 * 56
  c.pipeline.read_threads = 2
  c.mesh.shape = (1, 1, 1)
  c.rl.group_size = 4
  c.rl.learning_rate = 1e-3
  c.rl.warmup_steps = 0
  c.train.batch_size = 64
  c.train.checkpoint_every = 0
  c.train.progress_bar = False
  c.scorer.batch_size = 64
  c.scorer.recall_ks = (1, 2, 3, 5)
  c.predict.batch_size = 16


# What the real-checkpoint presets set beyond FSDP over every device and remat, per model size. The sizes are
# the largest that fit (`python -m mmrag_jax.plan`; tpu/README.md).
_REAL_CHECKPOINT = {
    # 3.75B params + AdamW in float32 is ~60 GB; stage-2 activations without remat are ~70 GB per 4 rows.
    "3b": {
        "model.attention_query_chunk": 512,  # one layer's scores: 4608^2 x heads floats per row otherwise
        "train.batch_size": 64,
        # Rows split over every chip of a v5litepod-16: 16 prediction prompts, whose 5 images of 448 x 448 px
        # (stage 2) are up to 81,920 pixel rows.
        "predict.batch_size": 16,
        "pipeline.patch_buckets": (4096, 16384, 65536, 81920),
    },
    # 8.3B params + AdamW in float32 is ~133 GB. 64 completions per step as 2 micro-batches of 32, queries in
    # chunks of 256, the LM head in chunks of 128 positions: the stage-2 update then fits a v5p-8.
    "7b": {
        "model.attention_query_chunk": 256,
        "rl.logprob_chunk_size": 128,
        "train.batch_size": 32,
        "train.micro_batches": 2,
    },
}


def _real_checkpoint(size: str) -> Callable[[ml_collections.ConfigDict], None]:
  """The preset of a Qwen2.5-VL checkpoint of `size` (a key of _REAL_CHECKPOINT)."""
  def apply(c: ml_collections.ConfigDict) -> None:
    c.mesh.shape = (1, -1, 1)  # FSDP over every device: the parameters and AdamW state do not fit one chip
    c.model.remat = True
    for field, value in _REAL_CHECKPOINT[size].items():
      section, name = field.split(".")
      c[section][name] = value

  return apply


_APPLY = {"demo": _demo, "toy": _toy, **{size: _real_checkpoint(size) for size in _REAL_CHECKPOINT}}


def apply_preset(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies preset `arg` (None or '' = the default recipe); unknown names are an error that lists them."""
  name = arg or _DEFAULT_PRESET
  if name not in _APPLY:
    raise ValueError(f"unknown preset {name!r} after ':' in --config; choose one of {_PRESETS} "
                     f"(no preset = {_DEFAULT_PRESET})")
  c.preset = name
  _APPLY[name](c)
  return c


def score_splits(c: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The splits a stage-1 training run scores afterwards: stage1.score_splits, () = the train and eval splits."""
  return tuple(dict.fromkeys(c.stage1.score_splits or (c.data.train_split, c.data.eval_split)))


def stage1_run_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The nested stage-1 run of stage-2 config `c` (stage2.run_stage1): `c.stage1` with this run's data
  (unless stage1.data.data_dir is set) and base model, in train mode, scoring the splits stage 2 needs."""
  s1 = ml_collections.ConfigDict(c.stage1.to_dict())
  if not s1.data.data_dir:
    s1.data.update(c.data.to_dict())
    s1.data.synthetic = False
  if not s1.model.path:
    s1.model.path = c.model.path
  s1.mode = "train"
  s1.stage1.score_splits = tuple(dict.fromkeys((*score_splits(s1), c.data.train_split, c.data.eval_split)))
  return s1
