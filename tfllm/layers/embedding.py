"""Token embeddings and position information: learned, sinusoidal and rotary (RoPE)."""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfllm.layers.dense import matmul_transposed


def segment_positions(segment_ids):
    """Position of each token within its run of equal `segment_ids`, `(B, T)` int32.

    A packed row of documents `1 1 1 2 2 0 0` gives `0 1 2 0 1 0 1`: each document (and
    the padding after them) is numbered as if it started the row.

    Example:
    >>> segment_positions(np.array([[1, 1, 1, 2, 2, 0, 0]])).numpy().tolist()
    [[0, 1, 2, 0, 1, 0, 1]]
    """
    segment_ids = ops.convert_to_tensor(segment_ids)
    # Built from `segment_ids` alone (no static length): also runs on symbolic inputs.
    index = ops.cumsum(ops.ones_like(segment_ids, dtype="int32"), axis=1) - 1  # (B, T)
    first = ops.ones_like(segment_ids[:, :1], dtype="bool")
    starts = ops.concatenate([first, segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    run = ops.cumsum(ops.cast(starts, "int32"), axis=1) - 1  # (B, T) run number, from 0
    # The runs' first indices in ascending order, then the largest int32 where no run
    # starts: run `r` begins at `run_starts[r]`.
    run_starts = ops.sort(ops.where(starts, index, 2**31 - 1), axis=1)  # (B, T)
    return index - ops.take_along_axis(run_starts, run, axis=1)


@keras.saving.register_keras_serializable(package="tfllm")
class TokenEmbedding(keras.layers.ReversibleEmbedding):
    """Token embedding that can also project back to vocabulary logits.

    A `keras.layers.ReversibleEmbedding` (``call(ids)`` -> `(B, T, hidden_dim)`,
    ``call(x, reverse=True)`` -> `(B, T, input_dim)` logits) that rejects out-of-range
    token ids with a `ValueError` when called eagerly; inside a graph the lookup itself
    fails on CPU.

    Example:
    >>> layer = TokenEmbedding(input_dim=100, output_dim=8)
    >>> tuple(layer(np.array([[1, 2, 3]])).shape)
    (1, 3, 8)
    """

    def call(self, inputs, reverse=False):
        if not reverse and tf.executing_eagerly():
            ids = np.asarray(inputs)
            bad = ids[(ids < 0) | (ids >= self.input_dim)]
            if bad.size:
                raise ValueError(
                    f"`token_ids` must lie in [0, {self.input_dim}) (`vocabulary_size`). "
                    f"Received: token id {int(bad.flat[0])}"
                )
        return super().call(inputs, reverse=reverse)

    def quantize(self, mode=None, type_check=True, config=None):
        """Keras's `ReversibleEmbedding.quantize` (e.g. `"int8"`: per-row int8 table).

        Keras refuses subclasses unless `type_check=False`, as their `call` may differ;
        this one only adds the eager id check (skipped once quantized).
        """
        super().quantize(mode, type_check=False, config=config)

    def _int8_call(self, inputs, reverse=False):
        """Keras's int8 call; tied logits contract the `(vocabulary, hidden)` table over
        its minor axis (`matmul_transposed`: read in order, also inside XLA loops)."""
        if not (reverse and self.tie_weights):
            return super()._int8_call(inputs, reverse=reverse)
        scale = self.embeddings_scale  # (V,)
        if self.inputs_quantizer:
            inputs, inputs_scale = self.inputs_quantizer(inputs)
            scale = ops.multiply(inputs_scale, scale)
        logits = ops.cast(matmul_transposed(inputs, self._embeddings), self.compute_dtype)
        logits = ops.divide(logits, scale)  # (B, T, V)
        if self.logit_soft_cap is not None:
            logits = ops.multiply(ops.tanh(logits / self.logit_soft_cap), self.logit_soft_cap)
        return logits


@keras.saving.register_keras_serializable(package="tfllm")
class PositionEmbedding(keras.layers.Layer):
    """Learned absolute position embedding (BERT, GPT-2).

    Args:
        sequence_length: the largest number of positions.
        initializer: initializer of the `(sequence_length, hidden_dim)` table.

    Call arguments:
        inputs: `(B, T, hidden_dim)` tensor; only its shape is used.
        start_index: position of the first input (int or scalar tensor), for decoding
            with a cache.
        position_ids: optional `(B, T)` int position of each input (e.g. of left-padded
            rows in a batch), instead of `start_index + t`.

    Returns:
        `(1, T, hidden_dim)` position embeddings (`(B, T, hidden_dim)` with
        `position_ids`), to be added to `inputs`.
    """

    def __init__(self, sequence_length: int, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(sequence_length, int) or sequence_length <= 0:
            raise ValueError(
                f"`sequence_length` must be a positive int. Received: {sequence_length!r}"
            )
        self.sequence_length = sequence_length
        self.initializer = keras.initializers.get(initializer)

    def build(self, inputs_shape):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, inputs_shape[-1]),
            initializer=self.initializer,
        )

    def call(self, inputs, start_index=0, position_ids=None):
        length = inputs.shape[1]
        if length is not None and length > self.sequence_length:
            raise ValueError(
                f"Input sequence length must be at most {self.sequence_length} "
                f"(`max_sequence_length`). Received: length {length}"
            )
        length = ops.shape(inputs)[1]
        table = ops.cast(self.embeddings, self.compute_dtype)
        if position_ids is not None:
            return ops.take(table, position_ids, axis=0)  # (B, T, d)
        return ops.slice(table, (start_index, 0), (length, ops.shape(table)[1]))[None]

    def compute_output_shape(self, inputs_shape, position_ids_shape=None):
        batch = 1 if position_ids_shape is None else position_ids_shape[0]
        return (batch, inputs_shape[1], inputs_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            sequence_length=self.sequence_length,
            initializer=keras.initializers.serialize(self.initializer),
        )
        return config


@keras.saving.register_keras_serializable(package="tfllm")
class SinusoidalPositionEncoding(keras.layers.Layer):
    """Fixed sinusoidal positions of "Attention Is All You Need" (no weights).

    `PE[p, 2i] = sin(p / w^(2i/d))`, `PE[p, 2i+1] = cos(p / w^(2i/d))` with
    `w = max_wavelength`. Same call signature and output shape as `PositionEmbedding`.
    """

    def __init__(self, max_wavelength: float = 10000.0, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength

    def call(self, inputs, start_index=0, position_ids=None):
        length, dim = ops.shape(inputs)[1], inputs.shape[-1]
        positions = ops.arange(length) + start_index
        if position_ids is None:
            position_ids = positions[None]  # (1, T)
        positions = ops.cast(position_ids, "float32")
        pair = ops.arange(dim) // 2 * 2  # (d,) 0, 0, 2, 2, ...
        inv_freq = ops.power(float(self.max_wavelength), -ops.cast(pair, "float32") / dim)
        angles = positions[..., None] * inv_freq  # (1 or B, T, d)
        is_even = ops.arange(dim) % 2 == 0
        encoding = ops.where(is_even, ops.sin(angles), ops.cos(angles))
        return ops.cast(encoding, self.compute_dtype)

    def compute_output_shape(self, inputs_shape, position_ids_shape=None):
        batch = 1 if position_ids_shape is None else position_ids_shape[0]
        return (batch, inputs_shape[1], inputs_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(max_wavelength=self.max_wavelength)
        return config


@keras.saving.register_keras_serializable(package="tfllm")
class RotaryEmbedding(keras.layers.Layer):
    """Rotary position embedding (RoPE), rotate-half convention of GPT-NeoX / LLaMA.

    Args:
        max_wavelength: base of the rotation frequencies.
        scaling_factor: linear position scaling (positions are divided by it).

    Call arguments:
        inputs: `(B, T, num_heads, head_dim)` queries or keys; `head_dim` even.
        start_index: position of the first input (int or scalar tensor).
        position_ids: optional `(B, T)` int position of each input, instead of
            `start_index + t`.

    Returns:
        The rotated inputs, same shape and dtype.
    """

    def __init__(self, max_wavelength: float = 10000.0, scaling_factor: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength
        self.scaling_factor = scaling_factor

    def call(self, inputs, start_index=0, position_ids=None):
        head_dim = inputs.shape[-1]
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension. Received: {head_dim}")
        if position_ids is None:
            position_ids = (ops.arange(ops.shape(inputs)[1]) + start_index)[None]  # (1, T)
        positions = ops.cast(position_ids, "float32") / self.scaling_factor
        exponents = ops.cast(ops.arange(0, head_dim, 2), "float32") / head_dim
        inv_freq = ops.power(float(self.max_wavelength), -exponents)  # (hs/2,)
        freqs = positions[..., None] * inv_freq  # (1 or B, T, hs/2)
        angles = ops.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # (1 or B, T, 1, hs)
        cos = ops.cast(ops.cos(angles), inputs.dtype)
        sin = ops.cast(ops.sin(angles), inputs.dtype)
        x1, x2 = ops.split(inputs, 2, axis=-1)
        rotated = ops.concatenate([-x2, x1], axis=-1)
        return inputs * cos + rotated * sin

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(max_wavelength=self.max_wavelength, scaling_factor=self.scaling_factor)
        return config
