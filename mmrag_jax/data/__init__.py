"""WebQA / MultimodalQA data: readers, TFDS builds, Mini-WebQA, synthetic data, stage-1/2 grain pipelines.

  read_webqa(data_dir, split) / read_mmqa(data_dir, split)       -> (questions, images, skipped)
  stage1_examples(questions) / stage2_examples(questions, k=5, mode=...)   -> the pipelines' example rows
  tfds_builders.build_dataset("webqa", manual_dir, data_dir); tfds_builders.tfds_questions(...)
  mini_webqa.build_mini_webqa(data_dir, out_dir, MiniWebQAConfig(target_size=...))
  pipeline.stage1_pipeline(questions, images, PipelineConfig(...)); pipeline.stage2_pipeline(..., k=5)
  synthetic.generate_webqa(out_dir, ...) / synthetic.generate_mmqa(out_dir, ...)

Only the readers and records are imported here; the TFDS, grain and transformers-backed modules are
imported where used, so evaluation can read gold answers cheaply.
"""

from mmrag_jax.data.images import ImageReadError, decode_image
from mmrag_jax.data.mmqa import read_mmqa
from mmrag_jax.data.records import Candidate, DataError, Question, SkipReport
from mmrag_jax.data.scores import read_stage1_scores, write_stage1_scores
from mmrag_jax.data.stage_examples import stage1_examples, stage2_examples
from mmrag_jax.data.webqa import read_webqa

__all__ = [
    "Candidate", "DataError", "ImageReadError", "Question", "SkipReport", "decode_image", "read_mmqa",
    "read_stage1_scores", "read_webqa", "stage1_examples", "stage2_examples", "write_stage1_scores",
]
