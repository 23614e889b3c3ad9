"""Token-level Keras metrics: perplexity and class precision / recall / F1.

Both accumulate sufficient statistics (sums) in variables, so the result over many batches
is the corpus-level value, not a mean of per-batch values, and both work inside
`fit`/`evaluate`, `tf.function` and `tf.distribute` (variables are summed across replicas).
A `sample_weight` of 0 leaves a position out (padding, ignored labels).
"""

import keras
from keras import ops

from tfllm.losses import sparse_cross_entropy
from tfllm.metrics._common import SCORES, check_choice, labels_and_predictions, token_weights

AVERAGES = ("micro", "macro", "weighted", None)


@keras.saving.register_keras_serializable(package="tfllm")
class Perplexity(keras.metrics.Metric):
    """`exp(sum(w * cross_entropy) / sum(w))` over every token since the last reset.

    The total negative log-likelihood and the total weight are accumulated, so this is the
    corpus perplexity, not a mean of per-batch perplexities. Before any token with a
    positive weight has been seen the result is 0 (as in `keras_hub.metrics.Perplexity`).

    Args:
        from_logits: whether `y_pred` holds logits (`True`) or probabilities.
        name: metric name.

    Call (update_state) arguments:
        y_true: `(B, T)` int token ids.
        y_pred: `(B, T, vocabulary_size)` logits or probabilities.
        sample_weight: optional `(B, T)` or `(B,)` weights; 0 leaves a position out, so
            its label may be anything (e.g. -100).

    Example:
    >>> metric = Perplexity()
    >>> metric.update_state([[0, 1]], [[[0.0, 0.0], [0.0, 0.0]]])
    >>> round(float(metric.result()), 4)
    2.0
    """

    def __init__(self, from_logits=True, name="perplexity", **kwargs):
        super().__init__(name=name, **kwargs)
        self.from_logits = from_logits
        self.nll_sum = self.add_variable(shape=(), initializer="zeros", name="nll_sum")
        self.weight_sum = self.add_variable(shape=(), initializer="zeros", name="weight_sum")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.cast(y_pred, "float32")  # (B, T, V); float16 logits lose too much
        y_true = ops.reshape(ops.convert_to_tensor(y_true), ops.shape(y_pred)[:-1])
        weight = token_weights(sample_weight, ops.shape(y_true), "float32")  # (B, T)
        # Left-out labels may be out of range (e.g. -100), which the loss op rejects.
        y_true = ops.where(weight != 0, ops.cast(y_true, "int32"), 0)
        if self.from_logits:
            nll = sparse_cross_entropy(y_true, y_pred)
        else:
            nll = ops.sparse_categorical_crossentropy(y_true, y_pred)
        nll = ops.where(weight != 0, nll * weight, 0.0)  # 0 * inf would be nan
        self.nll_sum.assign_add(ops.cast(ops.sum(nll), self.dtype))
        self.weight_sum.assign_add(ops.cast(ops.sum(weight), self.dtype))

    def result(self):
        mean_nll = ops.divide_no_nan(self.nll_sum, self.weight_sum)
        return ops.where(self.weight_sum > 0, ops.exp(mean_nll), 0.0)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="tfllm")
class PrecisionRecallF1(keras.metrics.Metric):
    """Multi-class precision, recall and F1 from per-class (weighted) confusion counts.

    Matches `sklearn.metrics.precision_recall_fscore_support(..., zero_division=0)`:
    `"micro"` pools the counts, `"macro"` is the unweighted mean over the classes present
    (with positive weight) in the labels or the predictions, `"weighted"` weights each
    class by its true count, `None` gives one value per class.
    `keras.metrics.F1Score` is not reused: it wants one-hot `(batch, classes)` inputs, so
    no `(B, T)` token labels with `(B, T)` weights, and its macro mean runs over all
    `num_classes`, absent ones included, with an epsilon in every ratio.

    Args:
        num_classes: number of classes; ids outside `[0, num_classes)` count for nothing on
            the label side, so give such positions a weight of 0.
        average: `"micro"`, `"macro"`, `"weighted"` or `None` (per class).
        score: what `result()` returns: `"f1"`, `"precision"` or `"recall"`; `scores()`
            gives all three.
        name: metric name; defaults to `score`.

    Call (update_state) arguments:
        y_true: int class ids, any shape, e.g. `(B,)` or `(B, T)`.
        y_pred: int class ids of the same shape, or float scores / logits / probabilities
            with an extra last axis of `num_classes` (argmax is taken).
        sample_weight: optional weights broadcastable to `y_true`'s shape.

    Example:
    >>> metric = PrecisionRecallF1(num_classes=3, average="macro")
    >>> metric.update_state([0, 1, 2, 2], [0, 2, 2, 2])
    >>> round(float(metric.result()), 4)
    0.6
    """

    def __init__(self, num_classes, average="micro", score="f1", name=None, **kwargs):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"`num_classes` must be a positive int. Received: {num_classes!r}")
        check_choice("average", average, AVERAGES)
        check_choice("score", score, SCORES)
        super().__init__(name=name or score, **kwargs)
        self.num_classes = num_classes
        self.average = average
        self.score = score
        shape = (num_classes,)
        self.true_positives = self.add_variable(shape, "zeros", name="true_positives")
        self.predicted = self.add_variable(shape, "zeros", name="predicted")
        self.true = self.add_variable(shape, "zeros", name="true")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred = labels_and_predictions(y_true, y_pred)
        weight = token_weights(sample_weight, ops.shape(y_true), self.dtype)[..., None]
        true_one_hot = ops.one_hot(y_true, self.num_classes, dtype=self.dtype)  # (..., C)
        pred_one_hot = ops.one_hot(y_pred, self.num_classes, dtype=self.dtype)

        def class_sums(x):  # (..., C) -> (C,)
            return ops.sum(ops.reshape(x * weight, (-1, self.num_classes)), axis=0)

        self.true_positives.assign_add(class_sums(true_one_hot * pred_one_hot))
        self.predicted.assign_add(class_sums(pred_one_hot))
        self.true.assign_add(class_sums(true_one_hot))

    def scores(self) -> dict:
        """`{"precision", "recall", "f1"}` from the counts so far, averaged per `average`."""
        tp, predicted, true = self.true_positives, self.predicted, self.true
        if self.average == "micro":
            tp, predicted, true = ops.sum(tp), ops.sum(predicted), ops.sum(true)
        per_class = {
            "precision": ops.divide_no_nan(tp, predicted),
            "recall": ops.divide_no_nan(tp, true),
            "f1": ops.divide_no_nan(2.0 * tp, predicted + true),
        }
        if self.average in ("micro", None):
            return per_class
        if self.average == "macro":
            class_weight = ops.cast((predicted + true) > 0, self.dtype)
        else:  # weighted
            class_weight = true
        return {
            key: ops.divide_no_nan(ops.sum(value * class_weight), ops.sum(class_weight))
            for key, value in per_class.items()
        }

    def result(self):
        return self.scores()[self.score]

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, average=self.average, score=self.score)
        return config
