"""Stage-2 rewards (list-wise evidence ranking and answer), each component in [0, 1].

  format   1 iff the completion is `<think>...</think> <evidence>[i], [j]</evidence> <answer>...</answer>`
           with no malformed kind (see `formats/tags.py`).
  set_f1   F1 of the cited candidates vs the gold ones (the WebQA retrieval metric, per question).
  ndcg     binary-gain NDCG of the citation order (gold first is best).
  ranking  set_f1_fraction * set_f1 + (1 - set_f1_fraction) * ndcg.
  answer   WebQA: official keyword accuracy (F1 for color / shape / number / YesNo, recall otherwise);
           MultimodalQA: (1 - mmqa_em_fraction) * list F1 + mmqa_em_fraction * list EM.
  answer_em  MultimodalQA list EM, logged on its own (0 on WebQA rows).
  total    format_weight * format + ranking_weight * ranking + answer_weight * answer.

When a block cannot be scored (see `formats/parse.py`) its components are 0; with gate_on_format, ranking and
answer are also 0 whenever format is 0.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mmrag_jax.parallel import platform_jit
from mmrag_jax.rl.rewards import kernels
from mmrag_jax.rl.rewards.answers import Stage2Reference
from mmrag_jax.rl.rewards.batch import Stage2Batch, pack_stage2
from mmrag_jax.rl.rewards.config import Stage2RewardConfig
from mmrag_jax.formats.parse import parse_stage2
from mmrag_jax.rl.rewards.result import RewardResult, malformed_counts

__all__ = ["stage2_reward_kernel", "stage2_rewards"]


def _row_answer_scores(row: Stage2Batch, em_fraction: jax.Array, round_mmqa_f1: bool
                       ) -> tuple[jax.Array, jax.Array]:
  """(answer, list_em) of ONE row (vmapped over the batch): its dataset's answer metric, ungated."""
  num_pred_spans, num_gold_spans = row.pred_span_ids.shape[0], row.gold_span_ids.shape[0]
  overlap, pred_sizes, gold_sizes, numbers_agree = kernels.bag_overlaps(
      row.pred_token_ids, row.pred_token_span, num_pred_spans,
      row.gold_token_ids, row.gold_token_span, num_gold_spans, row.gold_token_is_number)
  # WebQA rows hold one span per side: the prediction and the keyword target.
  webqa = kernels.webqa_keyword_accuracy(overlap[0, 0], pred_sizes[0], gold_sizes[0], row.uses_f1)
  list_f1 = kernels.mmqa_list_f1(overlap, pred_sizes, gold_sizes, numbers_agree,
                                 jnp.sum(row.pred_span_ids != kernels.PAD),
                                 jnp.sum(row.gold_span_ids != kernels.PAD), round_mmqa_f1)
  list_em = kernels.mmqa_list_em(row.pred_span_ids, row.gold_span_ids) * row.is_mmqa
  mmqa = (1.0 - em_fraction) * list_f1 + em_fraction * list_em
  return jnp.where(row.is_mmqa, mmqa, webqa), list_em


@functools.partial(platform_jit, static_argnames=("gate_on_format", "round_mmqa_f1"))
def _stage2_kernel(batch: Stage2Batch, weights: dict[str, jax.Array], gate_on_format: bool,
                   round_mmqa_f1: bool) -> dict[str, jax.Array]:
  format_ok = jax.vmap(kernels.format_reward)(batch.malformed)
  set_f1 = jnp.where(batch.evidence_scored, jax.vmap(kernels.set_f1)(batch.cited, batch.relevance), 0.0)
  ndcg = jnp.where(batch.evidence_scored, jax.vmap(kernels.ndcg)(batch.cited, batch.relevance), 0.0)
  ranking = weights["set_f1_fraction"] * set_f1 + (1.0 - weights["set_f1_fraction"]) * ndcg
  answer, answer_em = jax.vmap(functools.partial(
      _row_answer_scores, em_fraction=weights["mmqa_em_fraction"], round_mmqa_f1=round_mmqa_f1))(batch)
  answer = jnp.where(batch.answer_scored, answer, 0.0)
  answer_em = jnp.where(batch.answer_scored, answer_em, 0.0)
  if gate_on_format:
    ranking, answer = ranking * format_ok, answer * format_ok
  total = (weights["format_weight"] * format_ok + weights["ranking_weight"] * ranking
           + weights["answer_weight"] * answer)
  return {"total": total, "format": format_ok, "ranking": ranking, "set_f1": set_f1, "ndcg": ndcg,
          "answer": answer, "answer_em": answer_em}


def stage2_reward_kernel(batch: Stage2Batch, config: Stage2RewardConfig) -> dict[str, jax.Array]:
  """Components and 'total', each [B] float32, of a packed stage-2 batch (jitted; weights traced)."""
  return _stage2_kernel(batch, config.weights(), gate_on_format=config.gate_on_format,
                        round_mmqa_f1=config.round_mmqa_f1)


def stage2_rewards(completions: Sequence[str], references: Sequence[Stage2Reference],
                   config: Stage2RewardConfig = Stage2RewardConfig()) -> RewardResult:
  """Rewards of B stage-2 completions; references[b] is the gold data of completion b's prompt.

  Example: with 3 candidates, gold [2] and WebQA answer 'red' (color), the completion
  '<think>...</think><evidence>[2]</evidence><answer>It is red.</answer>' scores format 1, ranking 1
  and answer 2 / (2 + 1e-5).
  """
  if len(completions) != len(references):
    raise ValueError(f"got {len(completions)} completions but {len(references)} references")
  if not completions:
    raise ValueError("stage2_rewards needs at least one completion")
  parses = [parse_stage2(text, reference.num_candidates, config.think)
            for text, reference in zip(completions, references)]
  batch = pack_stage2(parses, references, config.mmqa_span_separator)
  outputs = stage2_reward_kernel(batch, config)
  total = outputs.pop("total")
  return RewardResult(total, outputs, malformed_counts(batch.malformed, [p.non_ascii for p in parses]))
