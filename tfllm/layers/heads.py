"""Output heads that sit on top of a backbone."""

import keras
from keras import ops

from tfllm.layers.activations import ELEMENTWISE_ACTIVATIONS
from tfllm.layers.dense import Dense
from tfllm.layers.normalization import LayerNormalization


@keras.saving.register_keras_serializable(package="tfllm")
class MaskedLMHead(keras.layers.Layer):
    """BERT masked-LM head: gather masked positions, `Dense -> act -> LN`, tied logits.

    Args:
        token_embedding: the backbone's `TokenEmbedding`; its table is reused (tied) for
            the output projection, plus an output bias of size `vocabulary_size`.
        activation: activation of the transform, a key of `ELEMENTWISE_ACTIVATIONS`.
        layer_norm_epsilon: epsilon of the transform's layer norm.
        kernel_initializer: initializer of the transform kernel.

    Call arguments:
        inputs: `(B, T, hidden_dim)` sequence output.
        mask_positions: `(B, P)` int positions to predict; `None` when `inputs` are
            already those positions' rows, `(B, P, hidden_dim)`.

    Returns:
        `(B, P, vocabulary_size)` logits.
    """

    def __init__(
        self,
        token_embedding,
        activation: str = "gelu",
        layer_norm_epsilon: float = 1e-12,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.token_embedding = token_embedding
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        if activation not in ELEMENTWISE_ACTIVATIONS:
            raise ValueError(
                f"`activation` must be one of {tuple(ELEMENTWISE_ACTIVATIONS)}. "
                f"Received: {activation!r}"
            )

    def build(self, inputs_shape, mask_positions_shape=None):
        hidden_dim = inputs_shape[-1]
        self.transform = Dense(
            hidden_dim,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="transform",
        )
        self.transform.build((None, None, hidden_dim))
        self.layer_norm = LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name="layer_norm"
        )
        self.layer_norm.build((None, None, hidden_dim))
        self.output_bias = self.add_weight(
            name="output_bias", shape=(self.token_embedding.input_dim,), initializer="zeros"
        )

    def call(self, inputs, mask_positions=None):
        x = inputs
        if mask_positions is not None:
            x = ops.take_along_axis(x, ops.cast(mask_positions, "int32")[:, :, None], axis=1)
        x = self.layer_norm(
            ELEMENTWISE_ACTIVATIONS[self.activation](self.transform(x))
        )  # (B, P, d)
        logits = self.token_embedding(x, reverse=True)  # (B, P, V)
        return logits + ops.cast(self.output_bias, logits.dtype)

    def compute_output_shape(self, inputs_shape, mask_positions_shape=None):
        rows = inputs_shape[:-1] if mask_positions_shape is None else mask_positions_shape
        return (*rows, self.token_embedding.input_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            token_embedding=keras.layers.serialize(self.token_embedding),
            activation=self.activation,
            layer_norm_epsilon=self.layer_norm_epsilon,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config, token_embedding=keras.layers.deserialize(config["token_embedding"]))
        return cls(**config)
