"""The base model of the toy recipe:

  python -m mmrag_jax.pretrain --workdir=DIR [--seed=N] [--steps=N] [--loss=sequence] [--extra_worlds=N]

Writes the synthetic WebQA to DIR/data and the pretrained model to DIR/model (a Hugging Face directory);
a rerun with the same settings finds them cached.
"""

import dataclasses
import os

from absl import app, flags

__all__ = ["main"]

_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (created).")
_SEED = flags.DEFINE_integer("seed", 0, "World and initialization seed.")
_LOSS = flags.DEFINE_enum("loss", "completion", ["completion", "sequence"],
                          "Next-token loss on the targets only, or on every text token of prompt and target.")
_EXTRA_WORLDS = flags.DEFINE_integer("extra_worlds", 0, "More worlds whose documents are pretrained on too.",
                                     lower_bound=0)
_STEPS = flags.DEFINE_integer("steps", None, "Supervised steps (default: PretrainConfig.steps).", lower_bound=1)


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from mmrag_jax.pretrain import PretrainConfig, pretrain

  config = PretrainConfig(seed=_SEED.value, loss=_LOSS.value, extra_worlds=_EXTRA_WORLDS.value)
  if _STEPS.value:
    config = dataclasses.replace(config, steps=_STEPS.value)
  result = pretrain(_WORKDIR.value, config)
  print(f"base model: {result['model_dir']}  (world: {result['data_dir']}; {result['num_examples']} examples, "
        f"token NLL {result['nll_start']:.3f} -> {result['nll_end']:.3f}, {result['seconds']:.0f} s)")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
