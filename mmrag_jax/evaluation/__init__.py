"""Official WebQA and MultimodalQA metrics, prediction files and the evaluation CLI.

    golds, skipped = load_webqa_gold(data_dir, "val")                 # every annotated question of the split
    metrics = evaluate_webqa(golds, read_predictions("predictions.jsonl"))   # retrieval_f1, qa_acc, ...

(`load_mmqa_gold` / `evaluate_mmqa` for MultimodalQA.) Per-question metrics, pure Python and the reference
for the RL rewards: `retrieval_f1`, `webqa_keyword_accuracy` (webqa_metrics: also normalize_text,
webqa_keyword_bags), `list_em`, `list_f1` (mmqa_metrics: also normalize_answer, answer_token_bags).
Predictions are `Prediction`s, written by `write_predictions_jsonl` (predictions: also the WebQA
submission and MMQA prediction formats). Coverage warnings: coverage; QA-FL: bartscore.BartScorer (needs
torch); stage-1 ranking: ranking.recall_at_k, ranking.unscored_summary.
Command line: `python -m mmrag_jax.evaluation --help`.
"""

from mmrag_jax.evaluation.gold import load_mmqa_gold, load_webqa_gold
from mmrag_jax.evaluation.mmqa_eval import evaluate_mmqa
from mmrag_jax.evaluation.mmqa_metrics import list_em, list_f1
from mmrag_jax.evaluation.predictions import Prediction, read_predictions, write_predictions_jsonl
from mmrag_jax.evaluation.webqa_eval import evaluate_webqa
from mmrag_jax.evaluation.webqa_metrics import retrieval_f1, webqa_keyword_accuracy

__all__ = [
    "Prediction", "evaluate_mmqa", "evaluate_webqa", "list_em", "list_f1", "load_mmqa_gold", "load_webqa_gold",
    "read_predictions", "retrieval_f1", "webqa_keyword_accuracy", "write_predictions_jsonl",
]
