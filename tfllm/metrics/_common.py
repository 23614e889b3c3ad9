"""Argument checks and input handling shared by the Keras metrics."""

import keras
from keras import ops

SCORES = ("f1", "precision", "recall")


def check_choice(argument: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"`{argument}` must be one of {tuple(choices)}. Received: {value!r}")


def token_weights(sample_weight, shape, dtype):
    """`None`, `(B,)` or `(B, T)` weights -> weights of `shape` (e.g. `(B, T)`) and `dtype`."""
    if sample_weight is None:
        return ops.ones(shape, dtype)
    weight = ops.cast(sample_weight, dtype)
    while len(weight.shape) < len(shape):
        weight = ops.expand_dims(weight, -1)
    return ops.broadcast_to(weight, shape)


def labels_and_predictions(y_true, y_pred):
    """Int class ids of one shape; a float `y_pred` holds scores (argmax over its last axis)."""
    y_true = ops.convert_to_tensor(y_true)
    y_pred = ops.convert_to_tensor(y_pred)
    if keras.backend.is_float_dtype(y_pred.dtype):
        y_pred = ops.argmax(y_pred, axis=-1)
    y_true = ops.reshape(y_true, ops.shape(y_pred))  # drops a trailing axis of 1
    return ops.cast(y_true, "int32"), ops.cast(y_pred, "int32")
