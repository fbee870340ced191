"""Builds the `webqa` / `mmqa` TFDS datasets (array_record) from a local folder of official files.

  python -m mmrag_jax.data.build --dataset=webqa --manual_dir=/data/webqa --data_dir=/data/tfds
  python -m mmrag_jax.data.build --dataset=mmqa --manual_dir=/data/mmqa --data_dir=/data/tfds \\
      [--config=with_tables]

Read back with `tfds.data_source("webqa", data_dir=...)` or `mmrag_jax.data.tfds_questions(...)`.
"""

from absl import app, flags

from mmrag_jax.data.tfds_builders import BUILDERS, build_dataset

__all__ = ["main"]

_DATASET = flags.DEFINE_enum("dataset", None, sorted(BUILDERS), "Which benchmark to build.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder with the official files.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data folder to write into.")
_CONFIG = flags.DEFINE_string("config", None, "Builder config (mmqa: no_tables | with_tables).")
_STRICT = flags.DEFINE_bool("strict", False, "Stop at the first bad question instead of skipping it.")


def main(argv):
  del argv
  builder = build_dataset(_DATASET.value, _MANUAL_DIR.value, _DATA_DIR.value, config=_CONFIG.value,
                          strict=_STRICT.value)
  for split, info in builder.info.splits.items():
    report = builder.skip_reports.get(split)
    skipped = f", skipped {report.as_dict()}" if report is not None and report.total else ""
    print(f"{builder.name} {split}: {info.num_examples} questions{skipped}")
  print(f"written to {builder.data_dir}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["dataset", "manual_dir", "data_dir"])
  app.run(main)
