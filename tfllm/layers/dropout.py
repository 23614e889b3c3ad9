"""Dropout drawing 16 random bits per element."""

import keras
import tensorflow as tf

_LEVELS = 1 << 16


@tf.custom_gradient
def _scale_by(x, mask):
    """`x * mask`; the gradient is `dy * mask` (no select, no gradient for the mask)."""
    return x * mask, lambda dy: (dy * mask, None)


def _dropout16(inputs, rate: float, seed):
    """`inputs` with each element zeroed where 16 random bits fall below `rate * 2^16`.

    Kept elements are scaled by `2^16 / (2^16 - threshold)`, so the expectation is exact;
    the rate applied is `threshold / 2^16` (0.1 -> 0.100006).
    """
    threshold = min(round(rate * _LEVELS), _LEVELS - 1)
    size = tf.size(inputs)
    bits = tf.random.stateless_uniform(
        [(size + 1) // 2], seed, minval=None, maxval=None, dtype=tf.uint32
    )
    halves = tf.reshape(tf.bitcast(bits, tf.uint16), [-1])[:size]  # 2 draws per 32 bits
    keep = tf.reshape(halves >= tf.constant(threshold, tf.uint16), tf.shape(inputs))
    mask = tf.cast(keep, inputs.dtype) * tf.cast(_LEVELS / (_LEVELS - threshold), inputs.dtype)
    return _scale_by(inputs, mask)


@keras.saving.register_keras_serializable(package="tfllm")
class Dropout(keras.layers.Dropout):
    """`keras.layers.Dropout` (same arguments) that draws 16 random bits per element.

    TensorFlow's stateless Philox generator costs about as much as the rest of dropout;
    one 32-bit draw here serves two elements, and the gradient is one multiply by the
    saved mask. Fwd + bwd on 2 CPU cores, `(16, 4, 128, 128)`: 4.2 against 7.2 ms for
    `keras.layers.Dropout`. The rate is rounded to a multiple of `2^-16` (see
    `_dropout16`). With `noise_shape`, Keras's implementation runs.
    """

    def call(self, inputs, training=False):
        if not training or not 0 < self.rate < 1 or self.noise_shape is not None:
            return super().call(inputs, training=training)
        seed = self.seed_generator.next()
        if seed.dtype != tf.int32:
            seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
        return _dropout16(inputs, self.rate, seed)
