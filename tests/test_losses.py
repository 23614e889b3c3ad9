"""tfllm.losses against Keras's SparseCategoricalCrossentropy: values and gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfllm.losses import SparseCategoricalCrossentropy, sparse_cross_entropy

RNG = np.random.default_rng(0)


def _logits_and_labels(shape, vocabulary=11, scale=4.0):
    logits = (RNG.normal(size=(*shape, vocabulary)) * scale).astype("float32")
    return logits, RNG.integers(0, vocabulary, shape).astype("int32")


def _value_and_gradient(loss_fn, labels, logits, **kwargs):
    logits = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = loss_fn(labels, logits, **kwargs)
    return loss.numpy(), tape.gradient(loss, logits).numpy()


@pytest.mark.parametrize("shape", [(5,), (3, 4)], ids=["rows", "tokens"])
@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_values_and_gradients_equal_keras(shape, jit_compile):
    logits, labels = _logits_and_labels(shape)
    logits[0, ..., 3] = 80.0  # a dominant logit: exp(x - max) must not overflow
    weights = RNG.uniform(size=shape).astype("float32")
    ours = tf.function(SparseCategoricalCrossentropy(), jit_compile=jit_compile)
    theirs = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for kwargs in ({}, {"sample_weight": weights}):
        got = _value_and_gradient(ours, labels, logits, **kwargs)
        want = _value_and_gradient(theirs, labels, logits, **kwargs)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
        np.testing.assert_allclose(got[1], want[1], atol=1e-7)


def test_per_token_losses_against_numpy():
    logits, labels = _logits_and_labels((2, 3))
    shifted = logits - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    want = -np.take_along_axis(log_softmax, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(sparse_cross_entropy(labels, logits), want, rtol=1e-5)
    # bfloat16 logits are computed in float32; labels may carry a trailing axis of 1.
    loss = SparseCategoricalCrossentropy(reduction=None)
    got = loss(labels[..., None], tf.cast(logits, tf.bfloat16))
    assert got.dtype == tf.float32 and got.shape == (2, 3)


def test_reductions_and_serialization():
    logits, labels = _logits_and_labels((4,))
    for reduction in ("sum", "sum_over_batch_size", None):
        want = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)
        got = SparseCategoricalCrossentropy(reduction=reduction)
        np.testing.assert_allclose(got(labels, logits), want(labels, logits), rtol=1e-6)
    loss = SparseCategoricalCrossentropy(reduction="sum", name="ce")
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, SparseCategoricalCrossentropy)
    assert restored.get_config() == loss.get_config()


def test_out_of_range_labels_are_rejected():
    logits, _ = _logits_and_labels((2,))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        sparse_cross_entropy(np.array([0, 11]), logits)
