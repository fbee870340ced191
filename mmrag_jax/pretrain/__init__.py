"""The stand-in base model: a small Qwen2.5-VL pretrained from random init on generic reading skills over
the synthetic world (describe a picture, restate a text, answer a question about one given document).

  python -m mmrag_jax.pretrain --workdir=runs/base [--seed=0] [--steps=600]

It plays the part of Qwen2.5-VL-Instruct in the toy recipe (`configs/stage{1,2}.py:toy`, `model.path =
WORKDIR/model`, `data.data_dir = WORKDIR/data`); it never sees a stage-1 or stage-2 prompt or target.
"""

from mmrag_jax.pretrain.tasks import PretrainExample, document_examples
from mmrag_jax.pretrain.train import DATA_DIR, MODEL_DIR, PretrainConfig, model_config, pretrain, pretrain_examples

__all__ = ["DATA_DIR", "MODEL_DIR", "PretrainConfig", "PretrainExample", "document_examples", "model_config",
           "pretrain", "pretrain_examples"]
