"""Transformer blocks: post-norm encoder (BERT) and pre-norm decoder (GPT, LLaMA-style)."""

import keras
import tensorflow as tf
from keras import ops

from tfllm.layers.activations import ELEMENTWISE_ACTIVATIONS, training_gelu
from tfllm.layers.attention import MultiHeadAttention
from tfllm.layers.dense import Dense
from tfllm.layers.dropout import Dropout
from tfllm.layers.normalization import LayerNormalization

ACTIVATIONS = (*ELEMENTWISE_ACTIVATIONS, "swiglu")
NORMALIZATIONS = ("layer_norm", "rms_norm")


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}. Received: {value!r}")


@keras.saving.register_keras_serializable(package="tfllm")
class FeedForward(keras.layers.Layer):
    """Position-wise MLP: `Dense(intermediate_dim) -> activation -> Dense(hidden_dim)`.

    With `activation="swiglu"` the first projection is gated:
    `silu(x W_gate) * (x W_up)`; both halves come from one fused `(hidden, 2 * ff)` kernel
    (gate first, then up).

    Args:
        intermediate_dim: width of the hidden layer.
        activation: one of `ACTIVATIONS` ("gelu" is exact, "gelu_approximate" the tanh
            form of GPT-2).
        use_bias: whether the projections have biases.
        kernel_initializer: initializer of both kernels.

    Call: `(B, T, hidden_dim)` -> `(B, T, hidden_dim)`; with `training=True` GELU runs as
    compiled kernels (`training_gelu`).
    """

    def __init__(
        self,
        intermediate_dim: int,
        activation: str = "gelu",
        use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_choice("activation", activation, ACTIVATIONS)
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, inputs_shape):
        gated = self.activation == "swiglu"
        dense = dict(
            use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
        )
        self.intermediate_dense = Dense(
            self.intermediate_dim * (2 if gated else 1), name="intermediate", **dense
        )
        self.intermediate_dense.build(inputs_shape)
        self.output_dense = Dense(inputs_shape[-1], name="output", **dense)
        self.output_dense.build((*inputs_shape[:-1], self.intermediate_dim))

    def call(self, inputs, training=None):
        x = self.intermediate_dense(inputs)  # (B, T, ff) or (B, T, 2 * ff)
        if self.activation == "swiglu":
            gate, up = ops.split(x, 2, axis=-1)
            x = ops.silu(gate) * up
        elif training and self.activation.startswith("gelu"):
            x = training_gelu(x, approximate=self.activation == "gelu_approximate")
        else:
            x = ELEMENTWISE_ACTIVATIONS[self.activation](x)
        return self.output_dense(x)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            intermediate_dim=self.intermediate_dim,
            activation=self.activation,
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config


def normalization_layer(kind, epsilon, dtype, name):
    if kind == "rms_norm":
        return keras.layers.RMSNormalization(epsilon=epsilon, dtype=dtype, name=name)
    return LayerNormalization(epsilon=epsilon, dtype=dtype, name=name)


@keras.saving.register_keras_serializable(package="tfllm")
class TransformerEncoderBlock(keras.layers.Layer):
    """Post-norm encoder block of BERT: `x = LN(x + MHA(x)); x = LN(x + FFN(x))`.

    Args:
        num_heads: attention heads.
        intermediate_dim: feed-forward width.
        dropout: dropout on attention probabilities and on both residual branches.
        activation: feed-forward activation (see `FeedForward`).
        layer_norm_epsilon: epsilon of both layer norms.
        kernel_initializer: initializer of all kernels.

    Call arguments:
        inputs: `(B, T, hidden_dim)`.
        padding_mask: optional `(B, T)`, 0 at padding.
        attention_mask: optional `(B, T, T)` boolean mask, combined with `padding_mask`.
        query_positions: optional `(B, P)` int: compute only these positions' outputs
            (attention still reads all `T`), `(B, P, hidden_dim)`. A last block needs no
            more when only some positions are read (masked LM, `[CLS]` pooling).

    Returns:
        `(B, T, hidden_dim)`, or `(B, P, hidden_dim)` with `query_positions`.
    """

    def __init__(
        self,
        num_heads: int,
        intermediate_dim: int,
        dropout: float = 0.0,
        activation: str = "gelu",
        layer_norm_epsilon: float = 1e-12,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        policy = self.dtype_policy
        self.attention = MultiHeadAttention(
            num_heads,
            dropout=dropout,
            kernel_initializer=self.kernel_initializer,
            dtype=policy,
            name="attention",
        )
        self.attention_norm = normalization_layer(
            "layer_norm", layer_norm_epsilon, policy, "attention_norm"
        )
        self.feedforward = FeedForward(
            intermediate_dim,
            activation,
            kernel_initializer=self.kernel_initializer,
            dtype=policy,
            name="feedforward",
        )
        self.feedforward_norm = normalization_layer(
            "layer_norm", layer_norm_epsilon, policy, "feedforward_norm"
        )
        self.residual_dropout = Dropout(dropout, dtype=policy)

    def build(self, inputs_shape):
        for layer in (self.attention, self.attention_norm, self.feedforward, self.feedforward_norm):
            layer.build(inputs_shape)

    def call(
        self, inputs, padding_mask=None, attention_mask=None, query_positions=None, training=None
    ):
        attended = self.attention(
            inputs,
            attention_mask=attention_mask,
            padding_mask=padding_mask,
            query_positions=query_positions,
            training=training,
        )
        if query_positions is not None:
            inputs = tf.gather(inputs, ops.cast(query_positions, "int32"), axis=1, batch_dims=1)
        x = self.attention_norm(inputs + self.residual_dropout(attended, training=training))
        transformed = self.feedforward(x)
        return self.feedforward_norm(x + self.residual_dropout(transformed, training=training))

    def compute_output_shape(self, inputs_shape, query_positions_shape=None):
        return self.attention.compute_output_shape(inputs_shape, query_positions_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            dropout=self.dropout,
            activation=self.activation,
            layer_norm_epsilon=self.layer_norm_epsilon,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config


@keras.saving.register_keras_serializable(package="tfllm")
class TransformerDecoderBlock(keras.layers.Layer):
    """Pre-norm causal decoder block: `x += MHA(norm(x)); x += FFN(norm(x))`.

    GPT-2 with the defaults; LLaMA-style with `normalization="rms_norm"`,
    `activation="swiglu"`, `use_bias=False`, `rope_max_wavelength=10000`.

    Args:
        num_heads: query heads.
        intermediate_dim: feed-forward width.
        num_key_value_heads: key/value heads for grouped-query attention (`None`: all).
        dropout: dropout on attention probabilities and on both residual branches.
        activation: feed-forward activation (see `FeedForward`).
        normalization: "layer_norm" or "rms_norm".
        layer_norm_epsilon: epsilon of both norms.
        use_bias: whether projections have biases.
        rope_max_wavelength: RoPE base, `None` for no rotary embedding.
        kernel_initializer: initializer of all kernels.

    Call arguments:
        inputs: `(B, T, hidden_dim)`.
        padding_mask: optional `(B, S)`, 0 at padding.
        segment_ids: optional `(B, S)` document ids of packed sequences.
        cache, cache_update_index: KV cache `(key_cache, value_cache)`, each
            `(B, K, S, head_dim)`, and write position, as in `MultiHeadAttention`.
        position_ids: optional `(B, T)` RoPE positions, as in `MultiHeadAttention`.

    Returns:
        `(B, T, hidden_dim)`, or `(outputs, updated_cache)` when `cache` is given.
    """

    def __init__(
        self,
        num_heads: int,
        intermediate_dim: int,
        num_key_value_heads: int | None = None,
        dropout: float = 0.0,
        activation: str = "gelu_approximate",
        normalization: str = "layer_norm",
        layer_norm_epsilon: float = 1e-5,
        use_bias: bool = True,
        rope_max_wavelength: float | None = None,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_choice("normalization", normalization, NORMALIZATIONS)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.num_key_value_heads = num_key_value_heads
        self.dropout = dropout
        self.activation = activation
        self.normalization = normalization
        self.layer_norm_epsilon = layer_norm_epsilon
        self.use_bias = use_bias
        self.rope_max_wavelength = rope_max_wavelength
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        policy = self.dtype_policy
        self.attention_norm = normalization_layer(
            normalization, layer_norm_epsilon, policy, "attention_norm"
        )
        self.attention = MultiHeadAttention(
            num_heads,
            num_key_value_heads=num_key_value_heads,
            dropout=dropout,
            use_bias=use_bias,
            rope_max_wavelength=rope_max_wavelength,
            kernel_initializer=self.kernel_initializer,
            dtype=policy,
            name="attention",
        )
        self.feedforward_norm = normalization_layer(
            normalization, layer_norm_epsilon, policy, "feedforward_norm"
        )
        self.feedforward = FeedForward(
            intermediate_dim,
            activation,
            use_bias=use_bias,
            kernel_initializer=self.kernel_initializer,
            dtype=policy,
            name="feedforward",
        )
        self.residual_dropout = Dropout(dropout, dtype=policy)

    def build(self, inputs_shape):
        for layer in (self.attention_norm, self.attention, self.feedforward_norm, self.feedforward):
            layer.build(inputs_shape)

    def call(
        self,
        inputs,
        padding_mask=None,
        segment_ids=None,
        cache=None,
        cache_update_index=None,
        position_ids=None,
        training=None,
    ):
        attended = self.attention(
            self.attention_norm(inputs),
            padding_mask=padding_mask,
            use_causal_mask=True,
            segment_ids=segment_ids,
            cache=cache,
            cache_update_index=cache_update_index,
            position_ids=position_ids,
            training=training,
        )
        if cache is not None:
            attended, cache = attended
        x = inputs + self.residual_dropout(attended, training=training)
        transformed = self.feedforward(self.feedforward_norm(x))
        x = x + self.residual_dropout(transformed, training=training)
        return x if cache is None else (x, cache)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            num_key_value_heads=self.num_key_value_heads,
            dropout=self.dropout,
            activation=self.activation,
            normalization=self.normalization,
            layer_norm_epsilon=self.layer_norm_epsilon,
            use_bias=self.use_bias,
            rope_max_wavelength=self.rope_max_wavelength,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config
