"""Evaluation metrics: Keras metrics for training loops, plain-Python corpus scores.

Keras metrics (graph mode, `tf.distribute`, `sample_weight` 0 = ignored position):
`Perplexity`, `PrecisionRecallF1`, `EntityF1`. Token accuracy is Keras's own
`keras.metrics.SparseCategoricalAccuracy`. Pass them as `compile(weighted_metrics=[...])`:
Keras gives `sample_weight` only to `weighted_metrics`, never to `metrics`.

Plain Python (no TensorFlow in the computation): `entity_f1` (conlleval), and scores of
generated text: `corpus_bleu` and `corpus_chrf` (sacrebleu's defaults, 0-100), `rouge`
(Google's `rouge-score`, 0-1), `exact_match` and `classification_scores` (accuracy and
macro F1 of label-like answers).
"""

from tfllm.metrics.bleu import corpus_bleu, tokenize_13a
from tfllm.metrics.chrf import corpus_chrf
from tfllm.metrics.entities import EntityF1, entity_f1, get_entities
from tfllm.metrics.matching import classification_scores, exact_match
from tfllm.metrics.rouge import rouge
from tfllm.metrics.token_metrics import Perplexity, PrecisionRecallF1

__all__ = [
    "EntityF1",
    "Perplexity",
    "PrecisionRecallF1",
    "classification_scores",
    "corpus_bleu",
    "corpus_chrf",
    "entity_f1",
    "exact_match",
    "get_entities",
    "rouge",
    "tokenize_13a",
]
