"""TFDS builders `webqa` and `mmqa` (array_record, no TensorFlow) over a local copy of the official files.

  build_dataset("webqa", manual_dir="/data/webqa", data_dir="/data/tfds")
  questions = tfds_questions("webqa", data_dir="/data/tfds", split="val")   # Sequence[Question]

The manual directory holds the official files (see `webqa.read_webqa` / `mmqa.read_mmqa`). Every record
stores its candidates' images as encoded bytes; each image is decoded once while building and a question
with an unreadable image is skipped and counted. Record order from `tfds.data_source` is hash-shuffled.
"""

from __future__ import annotations

import abc
import os
from typing import Any, Callable, Iterator

import tensorflow_datasets as tfds
from etils import epath

from mmrag_jax.data.images import ImageReadError, ImageStore, decode_image
from mmrag_jax.data.mmqa import MMQA_SPLITS, question_file, read_mmqa
from mmrag_jax.data.records import IMAGE, Question, SkipReport
from mmrag_jax.data.tfds_features import TFDSQuestions, question_features, question_to_example
from mmrag_jax.data.webqa import TEST_FILE, TRAIN_VAL_FILE, WEBQA_SPLITS, read_webqa

__all__ = ["BUILDERS", "build_dataset", "tfds_questions"]

_CITATIONS = {
    "webqa": "Chang et al. WebQA: Multihop and Multimodal QA. CVPR 2022.",
    "mmqa": "Talmor et al. MultiModalQA: Complex Question Answering over Text, Tables and Images. ICLR 2021.",
}


class _QuestionsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic: read a split with the reader, embed image bytes, skip questions with bad images."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Normalized questions with candidate pools and embedded images."}
  SPLITS: tuple[str, ...] = ()
  HOMEPAGE = ""

  # TFDS otherwise resolves the top-level package as a resource folder, which fails for namespace packages.
  code_path = epath.Path(__file__)

  def __init__(self, *, strict: bool = False, **kwargs: Any):
    self.strict = strict
    self.skip_reports: dict[str, SkipReport] = {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=question_features(),
                                 homepage=self.HOMEPAGE, citation=_CITATIONS[self.name])

  @abc.abstractmethod
  def _split_available(self, manual_dir: str, split: str) -> bool:
    """Whether the manual directory holds the question file of `split`."""

  @abc.abstractmethod
  def _read(self, manual_dir: str, split: str) -> tuple[list[Question], ImageStore | None, SkipReport]:
    """Reads one split with the benchmark's reader (cheap image existence checks only)."""

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    manual_dir = os.fspath(dl_manager.manual_dir)
    splits = {s: self._generate_examples(manual_dir, s) for s in self.SPLITS
              if self._split_available(manual_dir, s)}
    if not splits:
      raise FileNotFoundError(f"{manual_dir} holds none of the {self.name} question files")
    return splits

  def _generate_examples(self, manual_dir: str, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    questions, images, report = self._read(manual_dir, split)
    for question in questions:
      try:
        image_bytes = _load_images(question, images)
      except ImageReadError as e:
        report.skip(e.reason, f"{self.name}/{split} question {question.qid}", str(e), key=question.qid)
        continue
      yield question.qid, question_to_example(question, image_bytes)
    self.skip_reports[split] = report
    report.log()


def _load_images(question: Question, images: ImageStore | None) -> dict[str, bytes]:
  """Encoded bytes of every image candidate, each verified to decode."""
  out = {}
  for c in question.candidates:
    if c.kind != IMAGE:
      continue
    if c.image_bytes is not None:
      data = c.image_bytes
    elif images is None:
      raise ImageReadError("missing_image", f"image {c.image_ref!r}: no image store")
    else:
      data = images.read_bytes(c.image_ref)
    decode_image(data, where=f"image {c.image_ref!r}")
    out[c.id] = data
  return out


class _Webqa(_QuestionsBuilder, skip_registration=True):
  """WebQA (Chang et al., CVPR 2022): image/text multi-hop QA with per-question candidate pools."""

  name = "webqa"
  SPLITS = WEBQA_SPLITS
  HOMEPAGE = "https://webqna.github.io/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put WebQA_train_val.json, WebQA_test.json, imgs.tsv and imgs.lineidx (from the WebQA release) in "
      "the manual directory.")

  def _split_available(self, manual_dir: str, split: str) -> bool:
    return os.path.isfile(os.path.join(manual_dir, TEST_FILE if split == "test" else TRAIN_VAL_FILE))

  def _read(self, manual_dir, split):
    data = read_webqa(manual_dir, split, image_check="exists", strict=self.strict, verbose=False)
    return data.questions, data.images, data.skipped


class _MmqaConfig(tfds.core.BuilderConfig):
  """`include_tables`: keep table questions (the table becomes one text candidate)."""

  def __init__(self, *, include_tables: bool, **kwargs: Any):
    super().__init__(**kwargs)
    self.include_tables = include_tables


class _Mmqa(_QuestionsBuilder, skip_registration=True):
  """MultimodalQA (Talmor et al., ICLR 2021); default config: the no-table subset."""

  name = "mmqa"
  SPLITS = MMQA_SPLITS
  HOMEPAGE = "https://allenai.github.io/multimodalqa/"
  BUILDER_CONFIGS = [
      _MmqaConfig(name="no_tables", description="Questions without tables (retrieval setting).",
                  include_tables=False),
      _MmqaConfig(name="with_tables", description="All questions; tables as linearized text candidates.",
                  include_tables=True),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put MMQA_{train,dev,test}.jsonl.gz, MMQA_texts.jsonl.gz, MMQA_images.jsonl.gz (and "
      "MMQA_tables.jsonl.gz) and the unzipped final_dataset_images/ folder in the manual directory.")

  def _split_available(self, manual_dir: str, split: str) -> bool:
    return os.path.isfile(question_file(manual_dir, split))

  def _read(self, manual_dir, split):
    data = read_mmqa(manual_dir, split, include_tables=self.builder_config.include_tables,
                     image_check="exists", strict=self.strict, verbose=False)
    return data.questions, data.images, data.skipped


BUILDERS: dict[str, Callable[..., _QuestionsBuilder]] = {"webqa": _Webqa, "mmqa": _Mmqa}


def _make_builder(dataset: str, data_dir: str, config: str | None = None, **kwargs: Any) -> _QuestionsBuilder:
  if dataset not in BUILDERS:
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(BUILDERS)}")
  if config is not None:
    kwargs["config"] = config
  return BUILDERS[dataset](data_dir=data_dir, file_format="array_record", **kwargs)


def build_dataset(dataset: str, manual_dir: str, data_dir: str, *, config: str | None = None,
                  strict: bool = False) -> _QuestionsBuilder:
  """Builds (or reuses) the array_record dataset under `data_dir/<dataset>/<config>/<version>/`."""
  builder = _make_builder(dataset, data_dir, config, strict=strict)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def tfds_questions(dataset: str, data_dir: str, split: str, *, config: str | None = None) -> TFDSQuestions:
  """A built split as random-access `Question`s (images inline as bytes), via `as_data_source`."""
  builder = _make_builder(dataset, data_dir, config)
  return TFDSQuestions(builder.as_data_source(split))
