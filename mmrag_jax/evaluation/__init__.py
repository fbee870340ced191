"""Official WebQA and MultimodalQA metrics, prediction files and the evaluation CLI.

Per-question metrics (pure Python, also the reference for the RL rewards):
  webqa_metrics: normalize_text, webqa_keyword_bags, webqa_keyword_accuracy, retrieval_f1, COLOR_SET,
    SHAPE_SET
  mmqa_metrics: normalize_answer, answer_token_bags, list_em, list_f1
Split-level evaluation: webqa_eval.evaluate_webqa, mmqa_eval.evaluate_mmqa over every annotated question
of the split (gold.load_webqa_gold / load_mmqa_gold), with coverage warnings (coverage); QA-FL:
bartscore.BartScorer (needs torch); stage-1 ranking: ranking.recall_at_k, ranking.unscored_summary.
Command line: `python -m mmrag_jax.evaluation --help`.
"""

from mmrag_jax.evaluation.mmqa_eval import MMQAGold, evaluate_mmqa
from mmrag_jax.evaluation.mmqa_metrics import answer_token_bags, list_em, list_f1, normalize_answer
from mmrag_jax.evaluation.predictions import (Prediction, read_predictions, write_mmqa_predictions,
                                              write_predictions_jsonl, write_webqa_submission)
from mmrag_jax.evaluation.webqa_eval import WebQAGold, evaluate_webqa
from mmrag_jax.evaluation.webqa_metrics import (COLOR_SET, SHAPE_SET, normalize_text, retrieval_f1,
                                                webqa_keyword_accuracy, webqa_keyword_bags)

__all__ = [
    "COLOR_SET", "SHAPE_SET", "MMQAGold", "Prediction", "WebQAGold", "answer_token_bags", "evaluate_mmqa",
    "evaluate_webqa", "list_em", "list_f1", "normalize_answer", "normalize_text", "read_predictions",
    "retrieval_f1", "webqa_keyword_accuracy", "webqa_keyword_bags", "write_mmqa_predictions",
    "write_predictions_jsonl", "write_webqa_submission",
]
