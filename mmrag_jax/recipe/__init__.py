"""The MMRAG-RFT recipe behind `python -m mmrag_jax.main`: configs in, trained policies and predictions out.

  run.run(config, workdir)     one (stage, mode) of the recipe; writes summary.json
  stage1                       stage-1 training, candidate scoring, ranking files, recall@k
  stage2                       stage-2 training, the full pipeline on a split
  training                     format warm-up -> GRPO -> Hugging Face export (both stages)
  outputs                      predictions.jsonl, submission, metrics.json, report.html, curves, summary
  presets                      the fields both stages share, and the presets
  settings                     validate(config): the config as typed settings objects, built once, with the
                               checks across fields (batch geometry, buckets, splits, paths)
  context                      the run's workdir and mesh (RunDir), checkpoints, processors, splits
  demo                         synthetic data and a tiny random checkpoint for the demo preset

This package sits above model / sampling / rl / data / evaluation and is imported by nothing below it.
"""

__all__: list[str] = []  # the modules above are the surface; `python -m mmrag_jax.main` runs them
