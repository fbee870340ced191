"""The stand-in base model: a small Qwen2.5-VL pretrained from random init on generic reading skills over
the synthetic world (describe a picture, restate a text, answer a question about one given document).

  python -m mmrag_jax.pretrain --workdir=runs/base [--seed=0] [--steps=600]
  summary = pretrain("runs/base", PretrainConfig(steps=600))     # the same from Python

It plays the part of Qwen2.5-VL-Instruct in the toy recipe (`configs/stage{1,2}.py:toy`, `model.path =
WORKDIR/model`, `data.data_dir = WORKDIR/data`); it never sees a stage-1 or stage-2 prompt or target.
"""

from mmrag_jax.pretrain.train import PretrainConfig, pretrain

__all__ = ["PretrainConfig", "pretrain"]
