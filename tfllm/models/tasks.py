"""Task models: one head on top of a backbone. Losses and metrics go in `compile()`.

Pretraining: `CausalLM`, `MaskedLM`, `BertPretrainer`. Fine-tuning: `TextClassifier`,
`TokenClassifier`.
"""

import keras
from keras import ops

from tfllm.layers import Dropout, MaskedLMHead
from tfllm.models.bert import BertBackbone
from tfllm.models.gpt import GPTBackbone


class Task(keras.Model):
    """A functional model holding `self.backbone`; config is the backbone plus arguments."""

    config_keys: tuple[str, ...] = ()

    def get_config(self) -> dict:
        config = {key: getattr(self, key) for key in self.config_keys}
        config.update(
            name=self.name, trainable=self.trainable, backbone=keras.layers.serialize(self.backbone)
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config, backbone=keras.layers.deserialize(config["backbone"]))
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfllm")
class CausalLM(Task):
    """Next-token prediction: `GPTBackbone` + output projection (tied by default).

    Inputs: the backbone's dict (`token_ids`, `padding_mask`, ...).
    Output: `logits` `(B, T, vocabulary_size)`; position `t` predicts token `t + 1`.

    Example:
    >>> lm = CausalLM(GPTBackbone.from_preset("gpt_tiny"))
    >>> lm.compile("adamw", tfllm.losses.SparseCategoricalCrossentropy())
    """

    def __init__(self, backbone: GPTBackbone, **kwargs):
        inputs = backbone.input
        logits = backbone.token_embedding(backbone(inputs), reverse=True)
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.backbone = backbone

    def call_with_cache(
        self,
        token_ids,
        cache,
        cache_update_index,
        padding_mask=None,
        position_ids=None,
        logit_positions=None,
    ):
        """`(logits (B, T, V), cache)` for `T` new tokens; see `GPTBackbone.call_with_cache`.

        `logit_positions`: optional `(B,)` index into `T` per row; then only those logits
        are computed, `(B, V)` (a prompt's prefill needs just its last position's).
        """
        x, cache = self.backbone.call_with_cache(
            token_ids, cache, cache_update_index, padding_mask, position_ids
        )
        if logit_positions is not None:
            x = ops.take_along_axis(x, ops.reshape(logit_positions, (-1, 1, 1)), axis=1)[:, 0]
        return self.backbone.token_embedding(x, reverse=True), cache


@keras.saving.register_keras_serializable(package="tfllm")
class MaskedLM(Task):
    """Masked-token prediction: `BertBackbone` + `MaskedLMHead` tied to its embeddings.

    Inputs: the backbone's dict plus `mask_positions` `(B, P)`.
    Output: `logits` `(B, P, vocabulary_size)` at the masked positions. The last encoder
    block runs only there (`BertBackbone.sequence_output_at`): the same logits for about
    70% less of that block's work at 15% masking.
    """

    def __init__(self, backbone: BertBackbone, **kwargs):
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
        super().__init__(inputs=inputs, outputs=head(masked), **kwargs)
        self.backbone = backbone
        self.mlm_head = head


@keras.saving.register_keras_serializable(package="tfllm")
class BertPretrainer(Task):
    """BERT pretraining: masked LM (head tied to the embeddings) + next-sentence prediction.

    Inputs: the backbone's dict plus `mask_positions` `(B, P)`.
    Outputs: dict of `mlm` logits `(B, P, vocabulary_size)` and `nsp` logits `(B, 2)`
    (class 1 = the second segment is a random sentence), matching the labels
    `{"mlm": ids, "nsp": is_random_next}` of `MaskedLMPreprocessor` on `nsp_pairs`.

    Example:
    >>> model = BertPretrainer(BertBackbone.from_preset("bert_tiny"))
    >>> loss = tfllm.losses.SparseCategoricalCrossentropy()
    >>> model.compile("adamw", loss={"mlm": loss, "nsp": loss})
    """

    def __init__(self, backbone: BertBackbone, **kwargs):
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
        nsp_head = keras.layers.Dense(
            2,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=backbone.dtype_policy,
            name="nsp_head",
        )
        logits = {"mlm": head(x[:, 1:]), "nsp": nsp_head(backbone.pooled_dense(x[:, 0]))}
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.backbone = backbone
        self.mlm_head = head
        self.nsp_head = nsp_head


def _check_classes(argument: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(f"`{argument}` must be an int >= 2. Received: {value!r}")


def _check_dropout(dropout) -> None:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"`dropout` must be a float in [0, 1). Received: {dropout!r}")


def _check_bert(backbone) -> None:
    if not isinstance(backbone, BertBackbone):
        raise TypeError(
            f"`backbone` must be a tfllm BertBackbone. Received: {type(backbone).__name__}"
        )


def _classification_head(backbone, units: int, dropout: float):
    kwargs = dict(dtype=backbone.dtype_policy)
    output_dropout = Dropout(dropout, name="output_dropout", **kwargs)
    output_dense = keras.layers.Dense(
        units,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        name="logits",
        **kwargs,
    )
    return output_dropout, output_dense


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
            `"mean"` the backbone's unused pooler is made non-trainable.
        dropout: dropout rate before the output layer.

    Inputs: the backbone's dict (`token_ids`, `segment_ids`, `padding_mask`).
    Output: `logits` `(B, num_classes)`.

    Example:
    >>> model = TextClassifier(BertBackbone.from_preset("bert_tiny"), num_classes=2)
    >>> loss = tfllm.losses.SparseCategoricalCrossentropy()
    >>> model.compile("adamw", loss, metrics=["accuracy"])
    """

    config_keys = ("num_classes", "pooling", "dropout")

    def __init__(
        self,
        backbone: BertBackbone,
        num_classes: int,
        pooling: str = "cls",
        dropout: float = 0.1,
        **kwargs,
    ):
        _check_bert(backbone)
        _check_classes("num_classes", num_classes)
        _check_dropout(dropout)
        if pooling not in ("cls", "mean"):
            raise ValueError(f"`pooling` must be 'cls' or 'mean'. Received: {pooling!r}")
        inputs = dict(backbone.input)
        if pooling == "cls":  # the last block runs at `[CLS]` only
            first = ops.zeros_like(inputs["token_ids"][:, :1])
            pooled = backbone.pooled_dense(backbone.sequence_output_at(inputs, first)[:, 0])
        else:
            backbone.pooled_dense.trainable = False  # no gradient reaches it
            sequence = backbone(inputs)["sequence_output"]  # (B, T, d)
            mask = ops.cast(inputs["padding_mask"], sequence.dtype)[:, :, None]
            count = ops.maximum(ops.sum(mask, axis=1), 1.0)  # (B, 1)
            pooled = ops.sum(sequence * mask, axis=1) / count
        output_dropout, output_dense = _classification_head(backbone, num_classes, dropout)
        super().__init__(inputs=inputs, outputs=output_dense(output_dropout(pooled)), **kwargs)
        self.backbone = backbone
        self.num_classes = num_classes
        self.pooling = pooling
        self.dropout = dropout
        self.output_dropout = output_dropout
        self.output_dense = output_dense


@keras.saving.register_keras_serializable(package="tfllm")
class TokenClassifier(Task):
    """Token classification (NER with BIO tags): `BertBackbone` + `Dense` on every token.

    Pair it with `TokenClassificationPreprocessor`, which labels the first word piece of
    each word and gives other positions a `sample_weight` of 0. The backbone's pooler is
    unused and made non-trainable.

    Args:
        backbone: a `BertBackbone`.
        num_labels: number of tags (>= 2), e.g. `len(["O", "B-loc", "I-loc"])`.
        dropout: dropout rate before the output layer.

    Inputs: the backbone's dict. Output: `logits` `(B, T, num_labels)`.

    Example:
    >>> model = TokenClassifier(BertBackbone.from_preset("bert_tiny"), num_labels=3)
    >>> loss = tfllm.losses.SparseCategoricalCrossentropy()
    >>> model.compile("adamw", loss, weighted_metrics=[EntityF1(["O", "B-loc", "I-loc"])])
    """

    config_keys = ("num_labels", "dropout")

    def __init__(self, backbone: BertBackbone, num_labels: int, dropout: float = 0.1, **kwargs):
        _check_bert(backbone)
        _check_classes("num_labels", num_labels)
        _check_dropout(dropout)
        inputs = dict(backbone.input)
        backbone.pooled_dense.trainable = False  # no gradient reaches it
        sequence = backbone(inputs)["sequence_output"]  # (B, T, d)
        output_dropout, output_dense = _classification_head(backbone, num_labels, dropout)
        super().__init__(inputs=inputs, outputs=output_dense(output_dropout(sequence)), **kwargs)
        self.backbone = backbone
        self.num_labels = num_labels
        self.dropout = dropout
        self.output_dropout = output_dropout
        self.output_dense = output_dense
