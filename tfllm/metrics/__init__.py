"""Evaluation metrics: Keras metrics for training loops, plain-Python corpus scores.

Keras metrics (graph mode, `tf.distribute`, `sample_weight` 0 = ignored position):
`Perplexity`, `PrecisionRecallF1`, `EntityF1`. Token accuracy is Keras's own
`keras.metrics.SparseCategoricalAccuracy`. Pass them as `compile(weighted_metrics=[...])`:
Keras gives `sample_weight` only to `weighted_metrics`, never to `metrics`.

Plain Python: `corpus_bleu` (sacrebleu's defaults) and `entity_f1` (conlleval).
"""

from tfllm.metrics.bleu import corpus_bleu, tokenize_13a
from tfllm.metrics.entities import EntityF1, entity_f1, get_entities
from tfllm.metrics.token_metrics import Perplexity, PrecisionRecallF1

__all__ = [
    "EntityF1",
    "Perplexity",
    "PrecisionRecallF1",
    "corpus_bleu",
    "entity_f1",
    "get_entities",
    "tokenize_13a",
]
