"""`python -m mmrag_jax.data.synthetic --format=webqa|mmqa --out=DIR --num_questions=N [--seed=0]`.

Writes a synthetic dataset in the official file format. `--num_questions` is the train size; the
evaluation splits (WebQA val/test, MMQA dev/test) get `--num_eval_questions` each (default N // 4,
at least 2). `--plant=missing_image:1,malformed:2` adds defective train questions for robustness tests
(`--plant_split=val` / `dev`: to an evaluation split instead).
"""

from absl import app, flags

from mmrag_jax.data.synthetic import generate_mmqa, generate_webqa

__all__ = ["main"]

_FORMAT = flags.DEFINE_enum("format", None, ["webqa", "mmqa"], "Which benchmark's file format to write.")
_OUT = flags.DEFINE_string("out", None, "Output folder (created).")
_NUM = flags.DEFINE_integer("num_questions", 64, "Valid train questions.", lower_bound=1)
_NUM_EVAL = flags.DEFINE_integer("num_eval_questions", None, "Valid questions per evaluation split.")
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed; same seed, same files.")
_PLANT = flags.DEFINE_string("plant", "", "Defects to add, 'kind:count,kind:count'.")
_PLANT_SPLIT = flags.DEFINE_string("plant_split", "train", "Split that gets the defects: train, or val (WebQA) / "
                                   "dev (MMQA).")


def _parse_plant(spec: str) -> dict[str, int]:
  plant = {}
  for item in filter(None, (s.strip() for s in spec.split(","))):
    kind, _, count = item.partition(":")
    try:
      plant[kind] = int(count or 1)
    except ValueError as e:
      raise app.UsageError(f"--plant item {item!r} is not 'kind:count'") from e
  return plant


def main(argv):
  del argv
  n_eval = _NUM_EVAL.value if _NUM_EVAL.value is not None else max(2, _NUM.value // 4)
  plant = _parse_plant(_PLANT.value)
  if _FORMAT.value == "webqa":
    manifest = generate_webqa(_OUT.value, num_train=_NUM.value, num_val=n_eval, num_test=n_eval,
                              seed=_SEED.value, plant=plant, plant_split=_PLANT_SPLIT.value)
  else:
    manifest = generate_mmqa(_OUT.value, num_train=_NUM.value, num_dev=n_eval, num_test=n_eval,
                             seed=_SEED.value, plant=plant, plant_split=_PLANT_SPLIT.value)
  print(f"wrote {len(manifest.questions)} questions ({_FORMAT.value}) and {len(manifest.scenes)} images "
        f"to {_OUT.value}; planted: { {k: len(v) for k, v in manifest.planted.items()} }")


if __name__ == "__main__":
  flags.mark_flags_as_required(["format", "out"])
  app.run(main)
