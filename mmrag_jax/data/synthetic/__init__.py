"""Synthetic WebQA / MultimodalQA datasets in the official file formats, deterministic given a seed.

  generate_webqa(out_dir, num_train=…, num_val=…, num_test=…, seed=0, plant={"missing_image": 1})
  generate_mmqa(out_dir, num_train=…, num_dev=…, num_test=…, seed=0, plant={"malformed": 1})

Pictures are procedurally drawn shapes (`Scene`, `draw_scene`, `COLORS`, `SHAPES`; see `scenes`), text facts
describe invented landmarks (see `world`); the returned `SyntheticManifest` is the ground truth (also saved
as synthetic_manifest.json). The defects that can be planted are WEBQA_PLANTABLE / MMQA_PLANTABLE; those
the readers skip are READER_DEFECTS, those the Mini-WebQA rules remove MINI_WEBQA_DEFECTS.
Command line: `python -m mmrag_jax.data.synthetic --format=webqa --out=DIR --num_questions=N`.
"""

from mmrag_jax.data.synthetic.manifest import MINI_WEBQA_DEFECTS, READER_DEFECTS, SyntheticManifest
from mmrag_jax.data.synthetic.mmqa_files import MMQA_PLANTABLE, generate_mmqa
from mmrag_jax.data.synthetic.scenes import COLORS, SHAPES, Scene, draw_scene
from mmrag_jax.data.synthetic.webqa_files import WEBQA_PLANTABLE, generate_webqa

__all__ = [
    "COLORS", "MINI_WEBQA_DEFECTS", "MMQA_PLANTABLE", "READER_DEFECTS", "SHAPES", "Scene", "SyntheticManifest",
    "WEBQA_PLANTABLE", "draw_scene", "generate_mmqa", "generate_webqa",
]
