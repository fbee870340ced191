"""Reward arithmetic for ONE completion, as pure jnp functions; the stage modules vmap and jit them.

Array conventions (all integer arrays int32, padding -1):
  cited        [E]   cited candidates in citation order, 0-based; OUT_OF_RANGE for a number that names
                     no shown candidate; entries are distinct.
  relevance    [K]   True for gold candidates (K >= number shown; the padding is False).
  *_token_ids  [N]   answer tokens as per-batch vocabulary ids; within one span every id is distinct
                     (a repeated WebQA keyword gets its own id per occurrence), so a multiset overlap is
                     a count of equal ids.
  *_token_span [N]   the answer span each token belongs to.
  *_span_ids   [S]   per-batch ids of the normalized span strings, for list EM.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "OUT_OF_RANGE", "PAD", "bag_overlaps", "format_reward", "max_weight_matching", "mmqa_list_em", "mmqa_list_f1",
    "ndcg", "relevance_reward", "set_f1", "webqa_keyword_accuracy",
]

PAD = -1
OUT_OF_RANGE = -2
# The official WebQA keyword F1 keeps this epsilon: a perfect match scores 2 / (2 + 1e-5).
_WEBQA_F1_EPSILON = 1e-5


def format_reward(malformed: jax.Array) -> jax.Array:
  """1.0 if no malformed kind is flagged in `malformed` [NUM_MALFORMED] (bool), else 0.0."""
  return (~jnp.any(malformed)).astype(jnp.float32)


def relevance_reward(label: jax.Array, gold_label: jax.Array) -> jax.Array:
  """1.0 iff the parsed yes/no `label` (1 / 0, -1 = none) equals `gold_label` (1 / 0)."""
  return ((label >= 0) & (label == gold_label)).astype(jnp.float32)


def _cited_gains(cited: jax.Array, relevance: jax.Array) -> jax.Array:
  """[E] 1.0 where the citation names a gold candidate."""
  in_range = cited >= 0
  return jnp.where(in_range, relevance[jnp.where(in_range, cited, 0)], False).astype(jnp.float32)


def _no_gold_score(cited: jax.Array) -> jax.Array:
  # With no gold candidate shown, citing nothing is the only correct list.
  return jnp.all(cited == PAD).astype(jnp.float32)


def set_f1(cited: jax.Array, relevance: jax.Array) -> jax.Array:
  """F1 of the cited set vs the gold set (the WebQA retrieval F1): 2 |hits| / (|cited| + |gold|).

  cited [E], relevance [K]. An empty citation list scores 0; with no gold at all, see `_no_gold_score`.
  """
  hits = jnp.sum(_cited_gains(cited, relevance))
  num_cited = jnp.sum(cited != PAD)
  num_gold = jnp.sum(relevance)
  f1 = jnp.where(hits > 0, 2.0 * hits / jnp.maximum(num_cited + num_gold, 1), 0.0)
  return jnp.where(num_gold > 0, f1, _no_gold_score(cited))


def ndcg(cited: jax.Array, relevance: jax.Array) -> jax.Array:
  """Binary-gain NDCG of the citation order: sum_i gain_i / log2(i + 2), over its ideal value.

  cited [E] with E >= K, relevance [K]. Gold candidates cited first, in any order, score 1.
  """
  discounts = 1.0 / jnp.log2(jnp.arange(cited.shape[0], dtype=jnp.float32) + 2.0)
  dcg = jnp.sum(_cited_gains(cited, relevance) * discounts)
  num_gold = jnp.sum(relevance)
  ideal_dcg = jnp.sum(jnp.where(jnp.arange(cited.shape[0]) < num_gold, discounts, 0.0))
  return jnp.where(num_gold > 0, dcg / jnp.maximum(ideal_dcg, 1e-6), _no_gold_score(cited))


def bag_overlaps(pred_token_ids: jax.Array, pred_token_span: jax.Array, num_pred_spans: int,
                 gold_token_ids: jax.Array, gold_token_span: jax.Array, num_gold_spans: int,
                 gold_token_is_number: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Overlap counts between every gold and predicted answer span.

  pred_* [N], gold_* [M]. Returns overlap [Sg, Sp] (shared tokens), pred_sizes [Sp], gold_sizes [Sg]
  (tokens per span) and numbers_agree [Sg, Sp] (True unless the gold span holds numbers of which the
  predicted span names none: MultimodalQA's number rule).
  """
  equal = (pred_token_ids[:, None] == gold_token_ids[None, :]) & (pred_token_ids[:, None] != PAD)
  pred_onehot = pred_token_span[:, None] == jnp.arange(num_pred_spans)  # [N, Sp]
  gold_onehot = gold_token_span[:, None] == jnp.arange(num_gold_spans)  # [M, Sg]
  # Reductions over broadcast booleans rather than matmuls: same counts, a fraction of the compile time.
  gold_hit_by_span = jnp.any(equal[:, :, None] & pred_onehot[:, None, :], axis=0)  # [M, Sp]
  overlap = jnp.sum(gold_onehot[:, :, None] & gold_hit_by_span[:, None, :], axis=0)  # [Sg, Sp]
  gold_numbers = gold_onehot & gold_token_is_number[:, None]  # [M, Sg]
  numbers_hit = jnp.any(gold_numbers[:, :, None] & gold_hit_by_span[:, None, :], axis=0)
  numbers_agree = ~jnp.any(gold_numbers, axis=0)[:, None] | numbers_hit
  return (overlap.astype(jnp.float32), jnp.sum(pred_onehot, axis=0, dtype=jnp.float32),
          jnp.sum(gold_onehot, axis=0, dtype=jnp.float32), numbers_agree)


def webqa_keyword_accuracy(overlap: jax.Array, pred_size: jax.Array, gold_size: jax.Array,
                           uses_f1: jax.Array) -> jax.Array:
  """Official WebQA QA-Acc of one answer from its (already filtered) bag sizes and overlap (scalars).

  P = overlap / |pred|, R = overlap / |target|, F1 = 2PR / (P + R + 1e-5); 0 without overlap.
  Returns F1 when `uses_f1` (color, shape, number, YesNo), else R.
  """
  precision = overlap / jnp.maximum(pred_size, 1.0)
  recall = overlap / jnp.maximum(gold_size, 1.0)
  f1 = 2.0 * precision * recall / (precision + recall + _WEBQA_F1_EPSILON)
  return jnp.where(overlap > 0, jnp.where(uses_f1, f1, recall), 0.0)


def max_weight_matching(scores: jax.Array) -> jax.Array:
  """Largest sum of `scores` [Sg, Sp] (all >= 0) over one-to-one pairings of rows and columns.

  Equals the value of scipy's linear_sum_assignment on -scores. Dynamic programming over the subsets
  of the shorter side's entries (the rows, after transposing if needed): dp[m] is the best sum that
  pairs exactly the rows in bitmask m with the columns seen so far; each column is either left
  unpaired or paired with one row outside m. O(max(Sg, Sp) * min(Sg, Sp) * 2**min(Sg, Sp)).
  """
  if scores.shape[0] > scores.shape[1]:
    scores = scores.T
  num_rows = scores.shape[0]
  masks = np.arange(2**num_rows)[:, None]
  bits = 1 << np.arange(num_rows)[None, :]
  row_in_mask = (masks & bits) != 0  # [2**rows, rows]
  mask_without_row = masks ^ bits  # [2**rows, rows]
  initial = jnp.where(np.arange(2**num_rows) == 0, 0.0, -jnp.inf)

  def add_column(dp: jax.Array, column: jax.Array) -> tuple[jax.Array, None]:
    paired = jnp.where(row_in_mask, dp[mask_without_row] + column[None, :], -jnp.inf)
    return jnp.maximum(dp, jnp.max(paired, axis=1)), None

  dp, _ = jax.lax.scan(add_column, initial, scores.T)
  return jnp.max(dp)


def mmqa_list_f1(overlap: jax.Array, pred_sizes: jax.Array, gold_sizes: jax.Array,
                 numbers_agree: jax.Array, num_pred_spans: jax.Array, num_gold_spans: jax.Array,
                 round_to_cents: bool) -> jax.Array:
  """Official MultimodalQA list F1 from span overlaps ([Sg, Sp]) and span sizes ([Sp], [Sg]).

  Bag F1 per (gold, pred) pair (an empty bag has precision / recall 1), zeroed where the number rule
  fails; the optimal one-to-one alignment's sum over max(#gold, #pred) slots; optionally rounded to 2
  decimals half-to-even, as numpy rounds.
  """
  precision = jnp.where(pred_sizes[None, :] > 0, overlap / jnp.maximum(pred_sizes[None, :], 1.0), 1.0)
  recall = jnp.where(gold_sizes[:, None] > 0, overlap / jnp.maximum(gold_sizes[:, None], 1.0), 1.0)
  both = precision + recall
  bag_f1 = jnp.where(both > 0, 2.0 * precision * recall / jnp.where(both > 0, both, 1.0), 0.0)
  valid = (jnp.arange(overlap.shape[0])[:, None] < num_gold_spans) \
      & (jnp.arange(overlap.shape[1])[None, :] < num_pred_spans)
  scores = jnp.where(valid & numbers_agree, bag_f1, 0.0)
  f1 = max_weight_matching(scores) / jnp.maximum(jnp.maximum(num_gold_spans, num_pred_spans), 1)
  return jnp.round(f1 * 100.0) / 100.0 if round_to_cents else f1


def mmqa_list_em(pred_span_ids: jax.Array, gold_span_ids: jax.Array) -> jax.Array:
  """Official MultimodalQA list EM: 1.0 iff the normalized span sets are equal and equally long.

  pred_span_ids [Sp], gold_span_ids [Sg], padded with PAD.
  """
  pred_valid, gold_valid = pred_span_ids != PAD, gold_span_ids != PAD
  same = pred_span_ids[:, None] == gold_span_ids[None, :]
  pred_in_gold = jnp.all(~pred_valid | jnp.any(same & gold_valid[None, :], axis=1))
  gold_in_pred = jnp.all(~gold_valid | jnp.any(same & pred_valid[:, None], axis=0))
  same_count = jnp.sum(pred_valid) == jnp.sum(gold_valid)
  return (pred_in_gold & gold_in_pred & same_count).astype(jnp.float32)
