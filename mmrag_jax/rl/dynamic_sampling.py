"""DAPO dynamic sampling (arXiv 2503.14476): train only on groups whose rewards differ.

A group whose G rewards are all equal has advantage 0 everywhere, yet its tokens still count in a
token-mean denominator and dilute the gradient. With the switch on, a loop step samples its M pipeline
batches as usual, keeps the informative groups

    keep_b = valid_b  and  max_g r_{b,g} != min_g r_{b,g}

and samples up to `max_refill_batches` further pipeline batches until M * B groups are kept. The update
batch is then exactly M micro-batches of B kept groups, in sampling order:

    sampled   batch 0: [a . b . . c . .]  batch 1: [. d . . e . f .]  batch 2 (refill): [g h . i ...]
    update    micro-batch 0: [a b c d]  micro-batch 1: [e f g h]       (B = 4; i on: discarded, as in DAPO)

If the bound is hit first, the missing groups are padding prompts (valid False: no loss, no advantage
statistics). Kept groups beyond M * B are discarded rather than carried to the next step, so a step's
state stays (params, optimizer, RNG, data position) and a resume is exact.

The micro-batches are re-assembled on the host: `select_prompts` builds a pipeline-style batch of the
chosen prompts, and `regroup_rollout` rebuilds its TrainBatch with the completions already sampled
(nothing is sampled twice).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mmrag_jax.model.config import Qwen25VLConfig
from mmrag_jax.rl.batch import TrainBatch, build_train_batch
from mmrag_jax.rl.rollout import Rollout, processor_batch
from mmrag_jax.sampling import prepare_bucketed

_log = logging.getLogger(__name__)

# (pipeline batch index, prompt row) of a selected prompt; None: a padding prompt.
Pick = tuple[int, int] | None
# index -> (pipeline batch, its rollout): draws the index-th batch of the step and samples it.
DrawFn = Callable[[int], tuple[Mapping[str, Any], Rollout]]

# Keys `select_prompts` builds for the whole new batch; every other key is copied row by row.
_BATCH_KEYS = frozenset({"input_ids", "attention_mask", "mm_token_type_ids", "position_ids", "valid",
                         "pixel_values", "image_grid_thw", "image_counts", "num_patches", "num_images"})


def informative_groups(rewards: np.ndarray, valid: np.ndarray, group_size: int) -> np.ndarray:
  """[N / G] bool: valid groups whose rewards [N] (group-major) are not all equal."""
  grouped = np.asarray(rewards).reshape(-1, group_size)
  valid = np.asarray(valid, bool).reshape(-1, group_size)[:, 0]
  return valid & (grouped.max(axis=1) != grouped.min(axis=1))


def _prompt_images(batch: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """([B + 1] image offsets, [num_images + 1] patch offsets) of a pipeline batch: row b owns images
  image_start[b]:image_start[b + 1], image i owns patch rows patch_start[i]:patch_start[i + 1]."""
  if "image_counts" not in batch:
    raise ValueError("a pipeline batch with images needs `image_counts` [B] (see mmrag_jax.data.batching)")
  grid = np.asarray(batch["image_grid_thw"])[:int(batch.get("num_images", len(batch["image_grid_thw"])))]
  image_start = np.concatenate([[0], np.cumsum(np.asarray(batch["image_counts"], np.int64))])
  patch_start = np.concatenate([[0], np.cumsum(np.prod(grid, axis=1, dtype=np.int64))])
  return image_start, patch_start


def select_prompts(batches: Sequence[Mapping[str, Any]], picks: Sequence[Pick], *,
                   pad_token_id: int) -> dict[str, np.ndarray]:
  """One pipeline-style batch (see `mmrag_jax.data.batching`) of the picked prompts, in pick order.

  picks: per output row, (b, row) of `batches[b]`, or None for a padding prompt (one real pad token, no
  image, valid False; its metadata is a copy of the first pick's, never read).
  Token arrays [n, L] are right-aligned to L = the widest batch's length (left padding grows; positions
  are 0 on pads, as the collator writes them); `pixel_values` [sum p, 1176] and `image_grid_thw`
  [sum m, 3] hold exactly the picked prompts' images back to back (no budget padding), with
  `image_counts`, `num_patches`, `num_images` to match. Every other per-row key (metadata,
  `rope_deltas`, `drop_reason`) is copied row by row.

      batch 0 ids  p p x x      batch 1 ids  p p p p y y        picks [(1, 0), (0, 0)]
                                                          ->    p p p p y y
                                                                p p p p x x
  """
  if not picks:
    raise ValueError("select_prompts needs at least one pick")
  width = max(np.shape(b["input_ids"])[1] for b in batches)
  source = next((p for p in picks if p is not None), (0, 0))
  rows = [p if p is not None else source for p in picks]
  padding = np.array([p is None for p in picks])
  n = len(picks)

  def right_aligned(key: str, fill: int, axis: int) -> np.ndarray:
    parts = []
    for b, row in rows:
      value = np.asarray(batches[b][key] if key in batches[b] else np.ones_like(batches[b]["input_ids"]))
      value = np.take(value, [row], axis=axis)
      pad = [(0, 0)] * value.ndim
      pad[-1] = (width - value.shape[-1], 0)
      parts.append(np.pad(value, pad, constant_values=fill))
    return np.concatenate(parts, axis=axis)

  first = batches[0]
  out = {"input_ids": right_aligned("input_ids", pad_token_id, 0),
         "attention_mask": right_aligned("attention_mask", 0, 0)}
  out["input_ids"][padding] = pad_token_id
  out["attention_mask"][padding] = 0
  out["attention_mask"][padding, -1] = 1
  if "mm_token_type_ids" in first:
    out["mm_token_type_ids"] = right_aligned("mm_token_type_ids", 0, 0)
    out["mm_token_type_ids"][padding] = 0
  if "position_ids" in first:
    out["position_ids"] = right_aligned("position_ids", 0, 1)
    out["position_ids"][:, padding] = 0
  valid = np.array([bool(np.asarray(batches[b].get("valid", np.ones(len(batches[b]["input_ids"]), bool)))[row])
                    for b, row in rows])
  out["valid"] = valid & ~padding

  if "image_grid_thw" in first:
    offsets = [_prompt_images(b) for b in batches]
    grids, pixels, counts = [], [], np.zeros((n,), np.int32)
    for i, (b, row) in enumerate(rows):
      if padding[i]:
        continue
      image_start, patch_start = offsets[b]
      first_image, end_image = image_start[row], image_start[row + 1]
      grids.append(np.asarray(batches[b]["image_grid_thw"])[first_image:end_image])
      pixels.append(np.asarray(batches[b]["pixel_values"])[patch_start[first_image]:patch_start[end_image]])
      counts[i] = end_image - first_image
    grid_dtype, pixel_values = np.asarray(first["image_grid_thw"]).dtype, np.asarray(first["pixel_values"])
    out["image_grid_thw"] = np.concatenate(grids or [np.zeros((0, 3), grid_dtype)]).astype(grid_dtype)
    out["pixel_values"] = np.concatenate(
        pixels or [np.zeros((0, pixel_values.shape[1]), pixel_values.dtype)]).astype(pixel_values.dtype)
    out["image_counts"] = counts
    out["num_patches"] = np.int32(len(out["pixel_values"]))
    out["num_images"] = np.int32(len(out["image_grid_thw"]))

  for key, value in first.items():
    if key in _BATCH_KEYS:
      continue
    if np.ndim(value) == 0:  # a per-batch scalar: nothing per row to select
      out[key] = np.asarray(value)
      continue
    out[key] = np.concatenate([np.asarray(batches[b][key])[row:row + 1] for b, row in rows], axis=0)
  return out


def _gather_rows(values: Sequence[Any], groups: Sequence[tuple[int, int]], group_size: int) -> Any:
  """Rows of prompt `row` (its G completion rows) of values[b] for each (b, row), concatenated.

  values: per source, an array with leading axis N, a list of N items, a dict of those, or None."""
  head = values[0]
  if head is None:
    return None
  if isinstance(head, Mapping):
    return {key: _gather_rows([v[key] for v in values], groups, group_size) for key in head}
  parts = [values[b][row * group_size:(row + 1) * group_size] for b, row in groups]
  if isinstance(head, list):
    return [item for part in parts for item in part]
  return np.concatenate([np.asarray(p) for p in parts], axis=0)


def _fitting_patch_buckets(num_patches: int, patch_buckets: tuple[int, ...]) -> tuple[int, ...]:
  # Kept prompts of several batches can hold more patches than any one batch: past the largest bucket,
  # pad to a multiple of it (few extra shapes to compile) instead of failing.
  largest = max(patch_buckets)
  if num_patches <= largest:
    return patch_buckets
  return (*patch_buckets, -(-num_patches // largest) * largest)


def regroup_rollout(batches: Sequence[Mapping[str, Any]], rollouts: Sequence[Rollout], picks: Sequence[Pick], *,
                    group_size: int, model_config: Qwen25VLConfig, length_buckets: tuple[int, ...],
                    patch_buckets: tuple[int, ...]) -> tuple[dict[str, np.ndarray], Rollout]:
  """(pipeline-style batch, Rollout) of the picked prompts with the completions already sampled for them.

  rollouts[b] is the rollout of batches[b]. The TrainBatch is rebuilt from `select_prompts` exactly as
  `collect_rollout` builds one (`processor_batch` -> `prepare_bucketed` -> `build_train_batch`); every
  per-row field of the TrainBatch and the Rollout ([N, ...] arrays, lists, dicts of them) is carried
  over by rows, so fields added there travel too. Padding picks get masked rows (valid False).
  """
  prompts = select_prompts(batches, picks, pad_token_id=model_config.pad_token_id)
  source = next((p for p in picks if p is not None), (0, 0))
  groups = [p if p is not None else source for p in picks]
  prompt_valid = prompts["valid"]
  row_valid = np.repeat(prompt_valid, group_size)

  carried = {f.name: _gather_rows([getattr(r, f.name) for r in rollouts], groups, group_size)
             for f in dataclasses.fields(Rollout) if f.name != "batch"}
  carried["valid"] = row_valid
  rows = {f.name: _gather_rows([getattr(r.batch, f.name) for r in rollouts], groups, group_size)
          for f in dataclasses.fields(TrainBatch) if f.name not in ("inputs", "image_slots")}

  inputs = processor_batch(prompts)
  buckets = _fitting_patch_buckets(len(inputs.get("pixel_values", ())), patch_buckets)
  prompt_inputs = prepare_bucketed(inputs, model_config, length_buckets, buckets)
  built = build_train_batch(prompt_inputs, rows["completion_ids"], carried["lengths"], rows["sampler_logprobs"],
                            group_size=group_size, pad_token_id=model_config.pad_token_id,
                            prompt_valid=prompt_valid)
  replaced = {}
  for name, value in rows.items():
    if value is None:
      continue
    # Kept rows carry the sampled values; padding rows take the masked ones the builder gives them (zeros
    # for a field it leaves out).
    own = getattr(built, name)
    own = np.zeros_like(value) if own is None else np.asarray(own)
    keep = row_valid.reshape(-1, *([1] * (np.ndim(value) - 1)))
    replaced[name] = np.where(keep, value, own).astype(own.dtype)
  batch = dataclasses.replace(built, **replaced)
  return prompts, Rollout(batch=batch, **carried)


@dataclasses.dataclass(frozen=True)
class DynamicSample:
  """One step's dynamic sampling.

  sampled: the rollouts of every pipeline batch drawn (M + extra); kept: the M update micro-batches,
  B groups each; prompts: their pipeline-style batches; metrics: 'dynamic_sampling/...' and
  'reward_kept/<component>' (means over the kept, valid completions).
  """

  sampled: list[Rollout]
  kept: list[Rollout]
  prompts: list[dict[str, np.ndarray]]
  metrics: dict[str, float]


def dynamic_sample(draw: DrawFn, *, micro_batches: int, max_refill_batches: int, group_size: int,
                   model_config: Qwen25VLConfig, length_buckets: tuple[int, ...],
                   patch_buckets: tuple[int, ...]) -> DynamicSample:
  """Draws M pipeline batches, then refills (at most `max_refill_batches` more) until M * B informative
  groups are kept; assembles them into M micro-batches (see the module docstring).

  Metrics: groups_dropped (valid groups with equal rewards), extra_batches (batches beyond M),
  rollouts_per_kept_group (valid groups sampled / informative groups trained; NaN when none is),
  shortfall_groups (padding groups filling the update batch), groups_discarded (informative groups
  sampled beyond M * B).
  """
  batches, rollouts, picks = [], [], []
  sampled_groups = dropped = needed = 0
  while len(batches) < micro_batches or (
      len(picks) < needed and len(batches) < micro_batches + max_refill_batches):
    batch, rollout = draw(len(batches))
    keep = informative_groups(rollout.rewards["total"], rollout.valid, group_size)
    valid_groups = int(np.asarray(rollout.valid, bool).reshape(-1, group_size)[:, 0].sum())
    picks += [(len(batches), int(row)) for row in np.flatnonzero(keep)]
    sampled_groups += valid_groups
    dropped += valid_groups - int(keep.sum())
    batches.append(batch)
    rollouts.append(rollout)
    needed = micro_batches * len(batch["input_ids"])  # M * B

  prompts_per_batch = len(batches[0]["input_ids"])
  shortfall = max(needed - len(picks), 0)
  if shortfall:
    _log.warning("dynamic sampling: %d of %d groups are padding after %d refill batches (the rewards are "
                 "constant for most prompts; raise max_refill_batches?)", shortfall, needed, max_refill_batches)
  chosen: list[Pick] = picks[:needed] + [None] * shortfall
  kept, prompts = [], []
  for start in range(0, needed, prompts_per_batch):
    batch_prompts, rollout = regroup_rollout(
        batches, rollouts, chosen[start:start + prompts_per_batch], group_size=group_size,
        model_config=model_config, length_buckets=length_buckets, patch_buckets=patch_buckets)
    prompts.append(batch_prompts)
    kept.append(rollout)

  trained = needed - shortfall
  metrics = {
      "dynamic_sampling/groups_dropped": float(dropped),
      "dynamic_sampling/extra_batches": float(len(batches) - micro_batches),
      "dynamic_sampling/rollouts_per_kept_group": sampled_groups / trained if trained else float("nan"),
      "dynamic_sampling/shortfall_groups": float(shortfall),
      "dynamic_sampling/groups_discarded": float(max(len(picks) - needed, 0)),
  }
  valid = np.concatenate([r.valid for r in kept])
  for name in kept[0].rewards:
    values = np.concatenate([r.rewards[name] for r in kept])
    metrics[f"reward_kept/{name}"] = float(values[valid].sum() / max(int(valid.sum()), 1))
  return DynamicSample(sampled=rollouts, kept=kept, prompts=prompts, metrics=metrics)
