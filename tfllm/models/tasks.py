"""BERT task models: one head on top of a `BertBackbone`, an optional preprocessor.

Pretraining: `MaskedLM`, `BertPretrainer`. Fine-tuning: `TextClassifier`,
`TokenClassifier`. (`CausalLM` is in `tfllm.models.causal_lm`.) See `tfllm.models.task.Task`
for what every task shares (raw inputs in `fit` / `evaluate` / `predict`, default
`compile()`, presets, config).
"""

import logging

import keras
from keras import ops

from tfllm.layers import Dense, MaskedLMHead
from tfllm.models.bert import BertBackbone
from tfllm.models.task import (
    Task,
    check_backbone,
    check_classes,
    check_dropout,
    classification_head,
)
from tfllm.preprocessing import (
    BertPreprocessor,
    MaskedLMPreprocessor,
    TokenClassificationPreprocessor,
)

logger = logging.getLogger(__name__)


def _adopt_head(task, saved, name: str, preset) -> None:
    """Copies the weights of `saved`'s head `name` into `task`'s, or logs a new head."""
    head = getattr(saved, name, None)
    if head is None:
        logger.warning(
            "%s: the preset %s has no %s weights; it starts from a new, randomly initialised head.",
            type(task).__name__,
            preset,
            name,
        )
        return
    getattr(task, name).set_weights(head.get_weights())


@keras.saving.register_keras_serializable(package="tfllm")
class MaskedLM(Task):
    """Masked-token prediction: `BertBackbone` + `MaskedLMHead` tied to its embeddings.

    Inputs: the backbone's dict plus `mask_positions` `(B, P)`.
    Output: `logits` `(B, P, vocabulary_size)` at the masked positions. The last encoder
    block runs only there (`BertBackbone.sequence_output_at`): the same logits for about
    70% less of that block's work at 15% masking.

    Args:
        backbone: a `BertBackbone`.
        preprocessor: a `MaskedLMPreprocessor` (raw texts in `fit` / `evaluate`, masked
            anew at every pass), or None.

    Example:
    >>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(
    ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "was", "good"])
    >>> model = MaskedLM(
    ...     BertBackbone.from_preset("bert_tiny", vocabulary_size=9),
    ...     preprocessor=tfllm.preprocessing.MaskedLMPreprocessor(tokenizer, 16),
    ... )
    >>> history = model.fit(["the film was good", "good film"], epochs=2, verbose=0)
    >>> len(history.history["loss"])
    2
    """

    backbone_cls = BertBackbone
    preprocessor_cls = MaskedLMPreprocessor
    unused_layer_names = ("pooled_dense",)

    def __init__(self, backbone: BertBackbone, preprocessor=None, **kwargs):
        check_backbone("MaskedLM", backbone, BertBackbone)
        inputs = dict(backbone.input)
        inputs["mask_positions"] = keras.Input(shape=(None,), dtype="int32", name="mask_positions")
        backbone_inputs = {key: inputs[key] for key in backbone.input}
        head = MaskedLMHead(
            backbone.token_embedding,
            activation=backbone.activation,
            layer_norm_epsilon=backbone.layer_norm_epsilon,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=backbone.dtype_policy,
            name="mlm_head",
        )
        # The last block runs at the masked positions only (same logits, less work).
        masked = backbone.sequence_output_at(backbone_inputs, inputs["mask_positions"])
        super().__init__(
            inputs=inputs,
            outputs=head(masked),
            backbone=backbone,
            preprocessor=preprocessor,
            **kwargs,
        )
        self.mlm_head = head

    def adopt_heads(self, saved, preset) -> None:
        _adopt_head(self, saved, "mlm_head", preset)


@keras.saving.register_keras_serializable(package="tfllm")
class BertPretrainer(Task):
    """BERT pretraining: masked LM (head tied to the embeddings) + next-sentence prediction.

    Inputs: the backbone's dict plus `mask_positions` `(B, P)`.
    Outputs: dict of `mlm` logits `(B, P, vocabulary_size)` and `nsp` logits `(B, 2)`
    (class 1 = the second segment is a random sentence), matching the labels
    `{"mlm": ids, "nsp": is_random_next}` of `MaskedLMPreprocessor` on `nsp_pairs`.

    Args:
        backbone: a `BertBackbone`.
        preprocessor: a `MaskedLMPreprocessor`, or None. With one, `fit` takes sentence
            pairs `x=(texts_a, texts_b)` with `y` = is-random-next labels, or a dataset of
            `((text_a, text_b), label)` batches such as `nsp_pairs(documents).batch(32)`.

    Example:
    >>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(
    ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"])
    >>> model = BertPretrainer(
    ...     BertBackbone.from_preset("bert_tiny", vocabulary_size=8),
    ...     preprocessor=tfllm.preprocessing.MaskedLMPreprocessor(tokenizer, 16),
    ... )
    >>> pairs = (["a b c", "c b"], ["b a", "a a a"])  # (first sentences, second sentences)
    >>> history = model.fit(pairs, [0, 1], verbose=0)  # y: is the second one random?
    >>> sorted(history.history)
    ['loss', 'mlm_accuracy', 'mlm_loss', 'nsp_accuracy', 'nsp_loss']
    """

    backbone_cls = BertBackbone
    preprocessor_cls = MaskedLMPreprocessor

    def __init__(self, backbone: BertBackbone, preprocessor=None, **kwargs):
        check_backbone("BertPretrainer", backbone, BertBackbone)
        inputs = dict(backbone.input)
        inputs["mask_positions"] = keras.Input(shape=(None,), dtype="int32", name="mask_positions")
        # The last block runs at `[CLS]` (for the pooler) and the masked positions only.
        positions = inputs["mask_positions"]
        positions = ops.concatenate([ops.zeros_like(positions[:, :1]), positions], axis=1)
        x = backbone.sequence_output_at({key: inputs[key] for key in backbone.input}, positions)
        head = MaskedLMHead(
            backbone.token_embedding,
            activation=backbone.activation,
            layer_norm_epsilon=backbone.layer_norm_epsilon,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=backbone.dtype_policy,
            name="mlm_head",
        )
        nsp_head = Dense(
            2,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=backbone.dtype_policy,
            name="nsp_head",
        )
        logits = {"mlm": head(x[:, 1:]), "nsp": nsp_head(backbone.pooled_dense(x[:, 0]))}
        super().__init__(
            inputs=inputs, outputs=logits, backbone=backbone, preprocessor=preprocessor, **kwargs
        )
        self.mlm_head = head
        self.nsp_head = nsp_head

    def adopt_heads(self, saved, preset) -> None:
        _adopt_head(self, saved, "mlm_head", preset)
        _adopt_head(self, saved, "nsp_head", preset)

    def default_loss(self):
        loss = super().default_loss()
        return {"mlm": loss, "nsp": loss}

    def default_metrics(self) -> dict:
        accuracy = keras.metrics.SparseCategoricalAccuracy
        return {"weighted_metrics": {"mlm": [accuracy("accuracy")], "nsp": [accuracy("accuracy")]}}


@keras.saving.register_keras_serializable(package="tfllm")
class TextClassifier(Task):
    """Sentence (or sentence-pair) classification: `BertBackbone` + pooling + `Dense`.

    Pairs need nothing special here: `BertPreprocessor` packs `(text_a, text_b)` into one
    `[CLS] a [SEP] b [SEP]` row with segment ids 0 / 1.

    Args:
        backbone: a `BertBackbone` (pretrained or not).
        num_classes: number of classes (>= 2).
        pooling: `"cls"`: the backbone's `pooled_output` (tanh dense on `[CLS]`, as BERT);
            `"mean"`: the mean of `sequence_output` over real tokens (`padding_mask` 1), as
            sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained. With
            `"mean"` the backbone's pooler is unused and not trained.
        dropout: dropout rate before the output layer.
        preprocessor: a `BertPreprocessor`, or None. With one, `fit` / `evaluate` /
            `predict` take texts (or pairs `(texts_a, texts_b)`) and integer labels.

    Inputs: the backbone's dict (`token_ids`, `segment_ids`, `padding_mask`).
    Output: `logits` `(B, num_classes)`.

    Example:
    >>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(
    ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "film"])
    >>> model = TextClassifier(
    ...     BertBackbone.from_preset("bert_tiny", vocabulary_size=7),
    ...     num_classes=2,
    ...     preprocessor=tfllm.preprocessing.BertPreprocessor(tokenizer, sequence_length=8),
    ... )
    >>> history = model.fit(["good film", "bad film"], [1, 0], epochs=2, verbose=0)
    >>> model.predict(["a good film"], verbose=0).shape
    (1, 2)
    """

    config_keys = ("num_classes", "pooling", "dropout")
    backbone_cls = BertBackbone
    preprocessor_cls = BertPreprocessor

    def __init__(
        self,
        backbone: BertBackbone,
        num_classes: int,
        pooling: str = "cls",
        dropout: float = 0.1,
        preprocessor=None,
        **kwargs,
    ):
        check_backbone("TextClassifier", backbone, BertBackbone)
        check_classes("num_classes", num_classes)
        check_dropout(dropout)
        if pooling not in ("cls", "mean"):
            raise ValueError(f"`pooling` must be 'cls' or 'mean'. Received: {pooling!r}")
        inputs = dict(backbone.input)
        if pooling == "cls":  # the last block runs at `[CLS]` only
            first = ops.zeros_like(inputs["token_ids"][:, :1])
            pooled = backbone.pooled_dense(backbone.sequence_output_at(inputs, first)[:, 0])
        else:
            sequence = backbone(inputs)["sequence_output"]  # (B, T, d)
            mask = ops.cast(inputs["padding_mask"], sequence.dtype)[:, :, None]
            count = ops.maximum(ops.sum(mask, axis=1), 1.0)  # (B, 1)
            pooled = ops.sum(sequence * mask, axis=1) / count
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
        self.unused_layer_names = ("pooled_dense",) if pooling == "mean" else ()

    def default_metrics(self) -> dict:
        return {"metrics": [keras.metrics.SparseCategoricalAccuracy("accuracy")]}


@keras.saving.register_keras_serializable(package="tfllm")
class TokenClassifier(Task):
    """Token classification (NER with BIO tags): `BertBackbone` + `Dense` on every token.

    Pair it with `TokenClassificationPreprocessor`, which labels the first word piece of
    each word and gives other positions a `sample_weight` of 0. The backbone's pooler is
    unused and not trained.

    Args:
        backbone: a `BertBackbone`.
        num_labels: number of tags (>= 2), e.g. `len(["O", "B-loc", "I-loc"])`.
        dropout: dropout rate before the output layer.
        preprocessor: a `TokenClassificationPreprocessor`, or None. With one, `fit` /
            `evaluate` take lists of words and one tag (name or id) per word; `predict`
            takes lists of words and returns logits per word piece.

    Inputs: the backbone's dict. Output: `logits` `(B, T, num_labels)`.

    Example:
    >>> tags = ["O", "B-loc", "I-loc"]
    >>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(
    ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "to", "new", "york"])
    >>> model = TokenClassifier(
    ...     BertBackbone.from_preset("bert_tiny", vocabulary_size=7),
    ...     num_labels=3,
    ...     preprocessor=tfllm.preprocessing.TokenClassificationPreprocessor(tokenizer, 8, tags),
    ... )
    >>> model.compile(weighted_metrics=[tfllm.metrics.EntityF1(tags)])  # loss: "auto"
    >>> history = model.fit([["to", "new", "york"]], [["O", "B-loc", "I-loc"]], verbose=0)
    >>> model.predict([["new", "york"]], verbose=0).shape  # logits per word piece
    (1, 8, 3)
    """

    config_keys = ("num_labels", "dropout")
    backbone_cls = BertBackbone
    preprocessor_cls = TokenClassificationPreprocessor
    unused_layer_names = ("pooled_dense",)
    preset_task_arguments = frozenset({"label_names"})

    @classmethod
    def preset_preprocessor(cls, tokenizer, sequence_length: int, task_kwargs: dict):
        """`from_preset(..., label_names=[...])` names the tags (default `"0"`, `"1"`, ...)."""
        names = task_kwargs.get("label_names")
        if names is None:
            names = [str(i) for i in range(task_kwargs.get("num_labels", 0))]
        task_kwargs.setdefault("num_labels", len(names))
        return TokenClassificationPreprocessor(tokenizer, sequence_length, names)

    def __init__(
        self,
        backbone: BertBackbone,
        num_labels: int,
        dropout: float = 0.1,
        preprocessor=None,
        **kwargs,
    ):
        check_backbone("TokenClassifier", backbone, BertBackbone)
        check_classes("num_labels", num_labels)
        check_dropout(dropout)
        names = getattr(preprocessor, "label_names", None)
        if names is not None and len(names) != num_labels:
            raise ValueError(
                f"`preprocessor.label_names` has {len(names)} names but "
                f"`num_labels` is {num_labels}."
            )
        inputs = dict(backbone.input)
        sequence = backbone(inputs)["sequence_output"]  # (B, T, d)
        output_dropout, output_dense = classification_head(backbone, num_labels, dropout)
        super().__init__(
            inputs=inputs,
            outputs=output_dense(output_dropout(sequence)),
            backbone=backbone,
            preprocessor=preprocessor,
            **kwargs,
        )
        self.num_labels = num_labels
        self.dropout = dropout
        self.output_dropout = output_dropout
        self.output_dense = output_dense
