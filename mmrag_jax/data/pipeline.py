"""grain input pipelines for stage 1 (point-wise) and stage 2 (list-wise): static-shape batches.

  questions = read_webqa(data_dir, "train").questions          # or tfds_questions(...)
  ds = stage1_pipeline(questions, images, PipelineConfig(processor_path=..., batch_size=8))
  it = iter(ds); batch = next(it)            # a `batching.PipelineBatch`: batch.prompts, batch.meta

Graph (every step before `to_iter_dataset` is a random-access MapDataset, so the order of rows is a pure
function of (seed, epoch, index) and does not depend on the worker count):

  example table [N, ...] -> shard -> shuffle(seed) -> repeat(epochs, reshuffled per epoch)
    -> batch(B, collate: encode prompts + images, pad to buckets and budgets) -> to_iter_dataset
    -> mp_prefetch(worker_count)   (workers are spawned: everything here is picklable, module-level)

Resuming: the iterator's state (`it.get_state()`) round-trips through orbax with
`grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)`; the next batch after a restore is the
one that followed the save.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Sequence

import grain
import numpy as np
from absl import flags

from mmrag_jax.data.batching import PATCH_DIM, BatchShapes, Collator, MetaField, PipelineBatch
from mmrag_jax.data.images import ImageReadError, ImageStore, decode_image
from mmrag_jax.data.records import IMAGE, Candidate, Question
from mmrag_jax.data.scores import Stage1Scores
from mmrag_jax.data.stage_examples import stage1_examples, stage2_examples
from mmrag_jax.processing import load_processor
from mmrag_jax.processing.prompts import ANSWER_STYLE, PromptConfig, stage1_messages, stage2_messages
from mmrag_jax.sampling.prompt_batch import PromptTokens

__all__ = [
    "EncodeAndCollate", "PipelineConfig", "PromptEncoder", "batched_dataset", "prompt_collator", "stage1_pipeline",
    "stage2_pipeline", "thread_processor",
]

_PIXELS_PER_PATCH = 14 * 14


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Input pipeline settings shared by both stages.

  processor_path: checkpoint (or tiny processor) folder with tokenizer + preprocessor_config.json.
  min_pixels, max_pixels: per-image pixel budget of the image processor.
  batch_size: prompts per batch (per host).
  length_buckets: allowed padded prompt lengths; prompts longer than the last are dropped (logged).
  patch_buckets: allowed padded pixel rows per batch (multiples of 4); rows whose images do not fit the largest
    are dropped (logged). () = one bucket of batch_size * max images per prompt * max patches per image,
    which never drops a row but is large for real pixel budgets: set buckets for big runs. These two bucket
    sets are the only ones: the sampler, scorer and trainer take the batches at these shapes.
  seed: shuffling and example-sampling seed.
  shuffle: shuffle rows (reshuffled every epoch); off for inference.
  num_epochs: passes over the example table; None = forever.
  drop_remainder: drop a last partial batch instead of padding it with invalid rows.
  worker_count: grain worker processes (0 = in the calling process).
  worker_buffer_size: batches each worker prepares ahead.
  read_threads: threads per process encoding examples.
  shard_index, shard_count: this host's slice of the rows (multi-host data parallelism).
  prompt: prompt choices.
  layout: the model's prompt layout (`PromptTokens.of(model.config)`): its token ids must be the
    processor's, and the workers then also build each batch's vision index and image-token slots (the
    `model_inputs` the sampler, scorer and trainer consume); None: the first consumer builds them.
  """

  processor_path: str
  min_pixels: int = 56 * 56
  max_pixels: int = 448 * 448
  batch_size: int = 8
  length_buckets: tuple[int, ...] = (256, 512, 1024, 2048)
  patch_buckets: tuple[int, ...] = ()
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None
  drop_remainder: bool = False
  worker_count: int = 0
  worker_buffer_size: int = 2
  read_threads: int = 4
  shard_index: int = 0
  shard_count: int = 1
  prompt: PromptConfig = PromptConfig()
  layout: PromptTokens | None = None

  def __post_init__(self):
    if not 0 <= self.shard_index < self.shard_count:
      raise ValueError(f"shard_index {self.shard_index} not in [0, shard_count={self.shard_count})")
    if any(b % 4 for b in self.patch_buckets):
      # The vision tower merges 2x2 patches: padded budgets must hold whole merge blocks.
      raise ValueError(f"patch_buckets must be multiples of 4, got {self.patch_buckets}")

  @property
  def max_patches_per_image(self) -> int:
    """Upper bound of one image's patch rows: sides are multiples of 28 with area <= max_pixels."""
    return (self.max_pixels // (4 * _PIXELS_PER_PATCH)) * 4

  def batch_shapes(self, max_images_per_prompt: int) -> BatchShapes:
    worst = self.batch_size * max(max_images_per_prompt, 1) * self.max_patches_per_image
    buckets = tuple(self.patch_buckets) or (worst,)
    return BatchShapes(batch_size=self.batch_size, length_buckets=tuple(self.length_buckets),
                       patch_buckets=buckets, max_images=self.batch_size * max_images_per_prompt)


_THREAD_LOCAL = threading.local()


def thread_processor(path: str, min_pixels: int, max_pixels: int):
  """One processor per (thread, settings), loaded on first use in each worker process and reading thread.

  Per thread, because a fast tokenizer call sets padding options on the shared Rust object, which
  concurrent calls from grain's reading threads would race on.
  """
  cache = _THREAD_LOCAL.__dict__.setdefault("processors", {})
  key = (path, min_pixels, max_pixels)
  if key not in cache:
    cache[key] = load_processor(path, min_pixels=min_pixels, max_pixels=max_pixels)
  return cache[key]


def _candidate_image(candidate: Candidate, images: ImageStore | None):
  data = candidate.image_bytes
  if data is None:
    if images is None:
      raise ImageReadError("missing_image", f"image {candidate.image_ref!r}: no image store given")
    data = images.read_bytes(candidate.image_ref)
  return decode_image(data, where=f"image {candidate.image_ref!r}")


@dataclasses.dataclass(frozen=True)
class PromptEncoder:
  """Example-table row -> encoded prompt (unpadded ids, patches, grids) + metadata. Never raises on bad images.

  continuation: token ids appended to every prompt after the chat template's generation prompt (e.g. the
  judgment markup stage-1 scoring reads the next token after, `scorer.judgment_continuation`)."""

  questions: Sequence[Question]
  images: ImageStore | None
  config: PipelineConfig
  continuation: tuple[int, ...] = ()

  def _encode(self, candidates: Sequence[Candidate], messages: list[dict[str, Any]],
              meta: dict[str, Any]) -> dict[str, Any]:
    processor = thread_processor(self.config.processor_path, self.config.min_pixels, self.config.max_pixels)
    encoded = {"input_ids": np.zeros((0,), np.int32), "pixel_values": np.zeros((0, PATCH_DIM), np.float32),
               "image_grid_thw": np.zeros((0, 3), np.int32), "error": "", "error_reason": "", "meta": meta}
    try:
      pictures = [_candidate_image(c, self.images) for c in candidates if c.kind == IMAGE]
    except ImageReadError as e:
      encoded["error"], encoded["error_reason"] = f"{e.reason}: {e}", e.reason
      return encoded
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    out = processor([prompt], [pictures])
    encoded["input_ids"] = np.concatenate([out["input_ids"][0], np.asarray(self.continuation, np.int64)])
    if pictures:
      encoded["pixel_values"], encoded["image_grid_thw"] = out["pixel_values"], out["image_grid_thw"]
    return encoded


class _Stage1Encoder(PromptEncoder):
  """Row (question index, candidate index, label) -> one point-wise prompt."""

  def __call__(self, row: np.ndarray) -> dict[str, Any]:
    qi, ci, label = (int(v) for v in row)
    question = self.questions[qi]
    candidate = question.candidates[ci]
    meta = {"qid": question.qid, "dataset": question.dataset, "category": question.category,
            "candidate_id": candidate.id, "candidate_kind": candidate.kind, "label": label}
    messages = stage1_messages(question.question, candidate, self.config.prompt)
    return self._encode([candidate], messages, meta)


class _Stage2Encoder(PromptEncoder):
  """Row (question index, k candidate indices with -1 padding) -> one list-wise prompt."""

  def __call__(self, row: np.ndarray) -> dict[str, Any]:
    question = self.questions[int(row[0])]
    candidates = [question.candidates[int(i)] for i in row[1:] if i >= 0]
    gold = set(question.gold_ids or ())
    meta = {"qid": question.qid, "dataset": question.dataset, "category": question.category,
            "answers": question.answers,
            "candidate_ids": tuple(c.id for c in candidates),
            "candidate_is_gold": tuple(c.id in gold for c in candidates),
            "num_candidates": len(candidates), "num_gold_total": len(gold), "labeled": question.is_labeled}
    messages = stage2_messages(question.question, candidates, self.config.prompt,
                               answer_style=ANSWER_STYLE.get(question.dataset, ""))
    return self._encode(candidates, messages, meta)


@dataclasses.dataclass(frozen=True)
class EncodeAndCollate:
  """grain batch_fn: encodes each row of a batch and pads them into one static-shape batch."""

  encoder: PromptEncoder
  collator: Collator

  def __call__(self, rows: Sequence[np.ndarray]) -> PipelineBatch:
    return self.collator([self.encoder(row) for row in rows])


_STAGE1_META = {
    "qid": MetaField(object, ""), "dataset": MetaField(object, ""), "category": MetaField(object, ""),
    "candidate_id": MetaField(object, ""), "candidate_kind": MetaField(object, ""), "label": MetaField(np.int32, -1),
}


def _stage2_meta(k: int) -> dict[str, MetaField]:
  return {
      "qid": MetaField(object, ""), "dataset": MetaField(object, ""), "category": MetaField(object, ""),
      "answers": MetaField(object, ()),
      "candidate_ids": MetaField(object, "", width=k), "candidate_is_gold": MetaField(np.bool_, False, width=k),
      "num_candidates": MetaField(np.int32, 0), "num_gold_total": MetaField(np.int32, 0),
      "labeled": MetaField(np.bool_, False),
  }


def prompt_collator(config: PipelineConfig, max_images_per_prompt: int, meta: dict[str, MetaField]) -> Collator:
  processor = thread_processor(config.processor_path, config.min_pixels, config.max_pixels)
  tokens = PromptTokens(pad_token_id=processor.pad_token_id, image_token_id=processor.image_token_id,
                        spatial_merge_size=processor.merge_size)
  if config.layout is not None:
    model_tokens = dataclasses.replace(config.layout, vision=None, frame_block_size=None)
    if model_tokens != tokens:
      raise ValueError(f"the processor of {config.processor_path} lays prompts out with {tokens}, the model "
                       f"with {model_tokens}")
    tokens = config.layout
  return Collator(shapes=config.batch_shapes(max_images_per_prompt), meta_fields=meta, tokens=tokens)


def batched_dataset(table: np.ndarray, batch_fn: EncodeAndCollate, config: PipelineConfig) -> grain.IterDataset:
  """The shared graph: shard -> shuffle -> repeat -> batch(batch_fn) -> iter -> worker prefetch."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain reads absl flags; outside absl.app nothing has parsed them
  if len(table) == 0:
    raise ValueError("the example table is empty: no questions or no candidates to build prompts from")
  ds = grain.MapDataset.source(table)
  if config.shard_count > 1:
    ds = ds[config.shard_index::config.shard_count]
  if config.shuffle:
    ds = ds.shuffle(seed=config.seed)
  if config.num_epochs != 1:
    ds = ds.repeat(config.num_epochs)
  ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder, batch_fn=batch_fn)
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                               prefetch_buffer_size=max(config.read_threads, 1)))
  if config.worker_count > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count,
                                                           per_worker_buffer_size=config.worker_buffer_size))
  return it_ds


def stage1_pipeline(questions: Sequence[Question], images: ImageStore | None, config: PipelineConfig, *,
                    negatives_per_positive: float | None = 1.0, table: np.ndarray | None = None,
                    continuation: Sequence[int] = ()) -> grain.IterDataset:
  """Point-wise batches: one (question, candidate) prompt per row, at most one image per prompt.

  Metadata per row: qid, dataset, category, candidate_id, candidate_kind [B] object; label [B] int32 (1 gold,
  0 negative, -1 unknown / padding). `negatives_per_positive=None` scores every candidate (inference);
  `table` overrides the sampled rows (see `stage_examples.stage1_examples`); `continuation`: token ids
  appended to every prompt (see `PromptEncoder`).
  """
  if table is None:
    table = stage1_examples(questions, negatives_per_positive=negatives_per_positive, seed=config.seed)
  encoder = _Stage1Encoder(questions, images, config, continuation=tuple(int(t) for t in continuation))
  batch_fn = EncodeAndCollate(encoder, prompt_collator(config, 1, _STAGE1_META))
  return batched_dataset(table, batch_fn, config)


def stage2_pipeline(questions: Sequence[Question], images: ImageStore | None, config: PipelineConfig, *,
                    k: int, mode: str = "train", scores: Stage1Scores | None = None) -> grain.IterDataset:
  """List-wise batches: question + up to k numbered candidates (images inline) per row.

  mode "train": all gold + hardest negatives by `scores` (random without), shuffled; "inference": the
  top-k by `scores`, best first. Metadata per row: qid, dataset, category, answers [B] object; candidate_ids
  [B, k] object ('' padding); candidate_is_gold [B, k] bool (slot j holds candidate number j + 1);
  num_candidates, num_gold_total [B] int32 (gold sources in the whole pool); labeled [B] bool.
  """
  table = stage2_examples(questions, k=k, mode=mode, scores=scores, seed=config.seed)
  # Up to k images per prompt; `config.patch_buckets` can bound the pixel rows tighter than that worst case.
  batch_fn = EncodeAndCollate(_Stage2Encoder(questions, images, config), prompt_collator(config, k, _stage2_meta(k)))
  return batched_dataset(table, batch_fn, config)
