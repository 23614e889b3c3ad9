"""Task models: one head on top of a backbone. Losses and metrics go in `compile()`."""

import keras

from tfllm.layers import MaskedLMHead
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
    >>> lm.compile("adamw", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    """

    def __init__(self, backbone: GPTBackbone, **kwargs):
        inputs = backbone.input
        logits = backbone.token_embedding(backbone(inputs), reverse=True)
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.backbone = backbone

    def call_with_cache(
        self, token_ids, cache, cache_update_index, padding_mask=None, position_ids=None
    ):
        """`(logits (B, T, V), cache)` for `T` new tokens; see `GPTBackbone.call_with_cache`."""
        x, cache = self.backbone.call_with_cache(
            token_ids, cache, cache_update_index, padding_mask, position_ids
        )
        return self.backbone.token_embedding(x, reverse=True), cache


@keras.saving.register_keras_serializable(package="tfllm")
class MaskedLM(Task):
    """Masked-token prediction: `BertBackbone` + `MaskedLMHead` tied to its embeddings.

    Inputs: the backbone's dict plus `mask_positions` `(B, P)`.
    Output: `logits` `(B, P, vocabulary_size)` at the masked positions.
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
        sequence = backbone(backbone_inputs)["sequence_output"]
        super().__init__(inputs=inputs, outputs=head(sequence, inputs["mask_positions"]), **kwargs)
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
    >>> loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    >>> model.compile("adamw", loss={"mlm": loss, "nsp": loss})
    """

    def __init__(self, backbone: BertBackbone, **kwargs):
        inputs = dict(backbone.input)
        inputs["mask_positions"] = keras.Input(shape=(None,), dtype="int32", name="mask_positions")
        outputs = backbone({key: inputs[key] for key in backbone.input})
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
        logits = {
            "mlm": head(outputs["sequence_output"], inputs["mask_positions"]),
            "nsp": nsp_head(outputs["pooled_output"]),
        }
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.backbone = backbone
        self.mlm_head = head
        self.nsp_head = nsp_head
