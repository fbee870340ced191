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

The micro-batches are re-assembled on the host: `select_prompts` builds a `PipelineBatch` of the chosen
prompts (`prompt_batch.gather_prompts`: their rows as the pipeline built them, nothing recomputed), and
`regroup_rollout` rebuilds its TrainBatch with the completions already sampled (nothing is sampled twice).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mmrag_jax.data.batching import PipelineBatch
from mmrag_jax.model.config import Qwen25VLConfig
from mmrag_jax.rl.batch import TrainBatch, build_train_batch
from mmrag_jax.rl.rollout import Rollout
from mmrag_jax.sampling.prompt_batch import Pick, gather_prompts

__all__ = ["DrawFn", "DynamicSample", "dynamic_sample", "informative_groups", "regroup_rollout", "select_prompts"]

_log = logging.getLogger(__name__)

# index -> (pipeline batch, its rollout): draws the index-th batch of the step and samples it.
DrawFn = Callable[[int], tuple[PipelineBatch, Rollout]]


def informative_groups(rewards: np.ndarray, valid: np.ndarray, group_size: int) -> np.ndarray:
  """[N / G] bool: valid groups whose rewards [N] (group-major) are not all equal."""
  grouped = np.asarray(rewards).reshape(-1, group_size)
  valid = np.asarray(valid, bool).reshape(-1, group_size)[:, 0]
  return valid & (grouped.max(axis=1) != grouped.min(axis=1))


def select_prompts(batches: Sequence[PipelineBatch], picks: Sequence[Pick], *, pad_token_id: int) -> PipelineBatch:
  """One `PipelineBatch` of the picked prompts, in pick order.

  picks: per output row, (b, row) of `batches[b]` (a prompt pick, see `prompt_batch.Pick`), or None for a
  padding prompt (one real pad token, no image, valid False; its metadata is a copy of the first pick's,
  never read). The prompts are `gather_prompts` of the batches' prompts; every metadata field is copied row
  by row.
  """
  if not picks:
    raise ValueError("select_prompts needs at least one pick")
  prompts = gather_prompts([b.prompts for b in batches], picks, pad_token_id=pad_token_id)
  source = next((p for p in picks if p is not None), (0, 0))
  rows = [p if p is not None else source for p in picks]
  meta = {key: np.concatenate([np.asarray(batches[b].meta[key])[row:row + 1] for b, row in rows], axis=0)
          for key in batches[0].meta}
  return PipelineBatch(prompts=prompts, meta=meta)


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


def regroup_rollout(batches: Sequence[PipelineBatch], rollouts: Sequence[Rollout], picks: Sequence[Pick], *,
                    group_size: int, model_config: Qwen25VLConfig) -> tuple[PipelineBatch, Rollout]:
  """(PipelineBatch, Rollout) of the picked prompts with the completions already sampled for them.

  rollouts[b] is the rollout of batches[b]. The TrainBatch is rebuilt from `select_prompts` exactly as
  `collect_rollout` builds one (`build_train_batch` of the prompts); every
  per-row field of the TrainBatch and the Rollout ([N, ...] arrays, lists, dicts of them) is carried
  over by rows, so fields added there travel too. Padding picks get masked rows (valid False).
  """
  prompts = select_prompts(batches, picks, pad_token_id=model_config.pad_token_id)
  source = next((p for p in picks if p is not None), (0, 0))
  groups = [p if p is not None else source for p in picks]
  prompt_valid = prompts.prompts.valid
  row_valid = np.repeat(prompt_valid, group_size)

  carried = {f.name: _gather_rows([getattr(r, f.name) for r in rollouts], groups, group_size)
             for f in dataclasses.fields(Rollout) if f.name != "batch"}
  carried["valid"] = row_valid
  rows = {f.name: _gather_rows([getattr(r.batch, f.name) for r in rollouts], groups, group_size)
          for f in dataclasses.fields(TrainBatch) if f.name not in ("inputs", "image_slots", "group_size")}

  built = build_train_batch(prompts.prompts, rows["completion_ids"], carried["lengths"], rows["sampler_logprobs"],
                            group_size=group_size, config=model_config)
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
  B groups each; prompts: their pipeline batches; metrics: 'dynamic_sampling/...' and
  'reward_kept/<component>' (means over the kept, valid completions).
  """

  sampled: list[Rollout]
  kept: list[Rollout]
  prompts: list[PipelineBatch]
  metrics: dict[str, float]


def dynamic_sample(draw: DrawFn, *, micro_batches: int, max_refill_batches: int, group_size: int,
                   model_config: Qwen25VLConfig) -> DynamicSample:
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
    needed = micro_batches * batch.prompts.num_prompts  # M * B

  prompts_per_batch = batches[0].prompts.num_prompts
  shortfall = max(needed - len(picks), 0)
  if shortfall:
    _log.warning("dynamic sampling: %d of %d groups are padding after %d refill batches (the rewards are "
                 "constant for most prompts; raise max_refill_batches?)", shortfall, needed, max_refill_batches)
  chosen: list[Pick] = picks[:needed] + [None] * shortfall
  kept, prompts = [], []
  for start in range(0, needed, prompts_per_batch):
    batch_prompts, rollout = regroup_rollout(
        batches, rollouts, chosen[start:start + prompts_per_batch], group_size=group_size,
        model_config=model_config)
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
