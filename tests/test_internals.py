"""The private TensorFlow and Keras names of `tfllm.internals` still exist and behave."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfllm import internals


@pytest.mark.parametrize(
    "owner,name",
    [(cls, name) for cls, names in internals.KERAS_METHODS.items() for name in names],
    ids=lambda value: getattr(value, "__name__", value),
)
def test_the_private_keras_methods_tfllm_overrides_or_calls_exist(owner, name):
    assert callable(getattr(owner, name, None)), f"{owner.__name__}.{name} is gone"


def test_the_private_keras_attributes_tfllm_reads_exist():
    class Outer(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.inner = keras.layers.Dense(2)

    outer = Outer()
    layer = outer.inner
    layer.build((None, 3))
    for owner, names in internals.KERAS_ATTRIBUTES.items():
        instance = layer if owner is keras.layers.Dense else outer
        for name in names:
            assert hasattr(instance, name), f"{owner.__name__}.{name} is gone"
    assert outer._layers == [layer]
    np.testing.assert_array_equal(layer._kernel.numpy(), layer.kernel.numpy())


def test_in_xla_context_tells_compiled_graphs_apart():
    assert internals.in_xla_context() is False
    assert not tf.function(lambda: tf.constant(internals.in_xla_context()))().numpy()
    compiled = tf.function(lambda: tf.constant(internals.in_xla_context()), jit_compile=True)
    assert compiled().numpy()


def test_optimization_barrier_returns_its_inputs_under_xla():
    x, y = tf.constant([1.0, 2.0]), tf.constant([[3]])
    out = tf.function(lambda: internals.optimization_barrier(x, y), jit_compile=True)()
    np.testing.assert_array_equal(out[0].numpy(), x.numpy())
    np.testing.assert_array_equal(out[1].numpy(), y.numpy())
