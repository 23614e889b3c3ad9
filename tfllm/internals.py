"""The private TensorFlow and Keras names tfllm relies on, gathered in one place.

Each is used only where no public API does the job. `tests/test_internals.py` checks
that every one still exists, so a TensorFlow or Keras release that renames one fails
there, loudly, instead of silently bypassing an override.

Example:
>>> import tensorflow as tf
>>> in_xla_context()
False
>>> bool(tf.function(lambda: tf.constant(in_xla_context()), jit_compile=True)())
True
"""

import keras
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla as _xla
from tensorflow.python.ops import control_flow_util as _control_flow_util

# Private Keras methods that tfllm subclasses override or call (`tfllm.layers.Dense`,
# `TokenEmbedding`, the optimizers of `tfllm.training`, `Backbone.merge_lora`).
KERAS_METHODS = {
    keras.layers.Dense: ("_int8_build", "_int8_call", "_get_kernel_with_merged_lora"),
    keras.layers.ReversibleEmbedding: ("_int8_call",),
    keras.layers.Layer: ("_flatten_layers", "_untrack_variable"),
    keras.optimizers.AdamW: ("_clip_gradients", "_all_reduce_sum_gradients", "_apply_weight_decay"),
    keras.optimizers.Lamb: ("_clip_gradients", "_all_reduce_sum_gradients", "_apply_weight_decay"),
}
# Private attributes of built Keras objects that tfllm reads: a layer's direct sublayers,
# a `Dense`'s kernel variable (its `kernel` property adds LoRA).
KERAS_ATTRIBUTES = {keras.layers.Layer: ("_layers",), keras.layers.Dense: ("_kernel",)}


def in_xla_context() -> bool:
    """Whether the graph being built is compiled by XLA (inside `jit_compile=True`)."""
    return _control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def optimization_barrier(*tensors):
    """XLA's optimization barrier: `tensors` unchanged, but XLA may not move computations
    across it (e.g. hoist a cast of a loop-invariant weight out of a decoding loop)."""
    return _xla.optimization_barrier(*tensors)
