"""`GPTClassifier`: sequence classification on a `GPTBackbone` (the last real token's state)."""

import keras
from keras import ops

from tfllm.models.gpt import GPTBackbone
from tfllm.models.task import (
    Task,
    check_backbone,
    check_classes,
    check_dropout,
    classification_head,
)
from tfllm.preprocessing import GPTClassifierPreprocessor

POOLINGS = ("last", "mean")


def pool(sequence, padding_mask, pooling: str):
    """One vector per row of `sequence` `(B, T, d)`: `"last"`, the vector at the last 1 of
    `padding_mask` `(B, T)` (right padding); `"mean"`, the mean over its 1s. -> `(B, d)`.

    Example:
    >>> import numpy as np
    >>> sequence = np.arange(12, dtype="float32").reshape(1, 4, 3)
    >>> keras.ops.convert_to_numpy(pool(sequence, np.array([[1, 1, 0, 0]]), "last"))
    array([[3., 4., 5.]], dtype=float32)
    >>> keras.ops.convert_to_numpy(pool(sequence, np.array([[1, 1, 0, 0]]), "mean"))
    array([[1.5, 2.5, 3.5]], dtype=float32)
    """
    mask = ops.cast(padding_mask, "int32")  # (B, T)
    if pooling == "last":
        positions = ops.cumsum(ops.ones_like(mask), axis=1) - 1  # (B, T): 0, 1, ...
        last = ops.max(positions * mask, axis=1)  # (B,)
        return ops.take_along_axis(sequence, last[:, None, None], axis=1)[:, 0]
    weights = ops.cast(mask, sequence.dtype)[:, :, None]  # (B, T, 1)
    count = ops.maximum(ops.sum(weights, axis=1), 1.0)  # (B, 1)
    return ops.sum(sequence * weights, axis=1) / count


@keras.saving.register_keras_serializable(package="tfllm")
class GPTClassifier(Task):
    """Text classification: `GPTBackbone` + pooling + dropout + `Dense`.

    With causal attention only the last real token has seen the whole text, so it is the
    one read by default, as Hugging Face's `GPT2ForSequenceClassification` does: the
    position of the last `padding_mask` 1 of each row (right padding, as
    `GPTClassifierPreprocessor` writes, which ends every text with EOS). LoRA
    (`backbone.enable_lora(rank)`) leaves the head trainable.

    Args:
        backbone: a `GPTBackbone` (pretrained or not). A `packed_sequences` one reads each
            row as one document (`segment_ids` = `padding_mask`).
        num_classes: number of classes (>= 2).
        pooling: `"last"`: `sequence_output` at the last real token; `"mean"`: its mean
            over the real tokens.
        dropout: dropout rate before the output layer.
        preprocessor: a `GPTClassifierPreprocessor`, or None. With one, `fit` /
            `evaluate` / `predict` take texts and integer labels.

    Inputs: dict of `token_ids` and `padding_mask` `(B, T)` int.
    Output: `logits` `(B, num_classes)`.

    Example:
    >>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(
    ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "film"])
    >>> model = GPTClassifier(
    ...     GPTBackbone.from_preset("gpt_tiny", vocabulary_size=7),
    ...     num_classes=2,
    ...     preprocessor=tfllm.preprocessing.GPTClassifierPreprocessor(tokenizer, 8),
    ... )
    >>> history = model.fit(["good film", "bad film"], [1, 0], epochs=2, verbose=0)
    >>> model.predict(["a good film"], verbose=0).shape
    (1, 2)
    """

    config_keys = ("num_classes", "pooling", "dropout")
    backbone_cls = GPTBackbone
    preprocessor_cls = GPTClassifierPreprocessor

    def __init__(
        self,
        backbone: GPTBackbone,
        num_classes: int,
        pooling: str = "last",
        dropout: float = 0.1,
        preprocessor=None,
        **kwargs,
    ):
        check_backbone("GPTClassifier", backbone, GPTBackbone)
        check_classes("num_classes", num_classes)
        check_dropout(dropout)
        if pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be 'last' or 'mean'. Received: {pooling!r}")
        inputs = {
            key: keras.Input(shape=(None,), dtype="int32", name=key)
            for key in ("token_ids", "padding_mask")
        }
        backbone_inputs = dict(inputs)
        if backbone.packed_sequences:
            backbone_inputs["segment_ids"] = inputs["padding_mask"]
        sequence = backbone(backbone_inputs)  # (B, T, d)
        pooled = pool(sequence, inputs["padding_mask"], pooling)
        output_dropout, output_dense = classification_head(backbone, num_classes, dropout)
        super().__init__(
            inputs=inputs,
            outputs=output_dense(output_dropout(pooled)),
            backbone=backbone,
            preprocessor=preprocessor,
            **kwargs,
        )
        self.num_classes = num_classes
        self.pooling = pooling
        self.dropout = dropout
        self.output_dropout = output_dropout
        self.output_dense = output_dense

    def default_metrics(self) -> dict:
        return {"metrics": [keras.metrics.SparseCategoricalAccuracy("accuracy")]}
