"""Raw task inputs (Python lists, numpy arrays, datasets) as batched `tf.data` datasets."""

import keras
import numpy as np
import tensorflow as tf


def _is_string_spec(spec) -> bool:
    return getattr(spec, "dtype", None) == tf.string


def is_token_dict(x) -> bool:
    """Whether `x` (or a dataset's `x` part) is already the model's dict of `token_ids`, ..."""
    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec
        x = spec[0] if isinstance(spec, tuple) else spec
    return isinstance(x, dict) and "token_ids" in x


def holds_strings(data) -> bool:
    """Whether any leaf of `data` (lists, arrays, tensors, a dataset's spec) is text."""
    if isinstance(data, tf.data.Dataset):
        return any(_is_string_spec(s) for s in tf.nest.flatten(data.element_spec))
    if isinstance(data, (str, bytes)):
        return True
    if isinstance(data, (tf.Tensor, tf.RaggedTensor)):
        return data.dtype == tf.string
    if isinstance(data, np.ndarray):
        return data.dtype.kind in "USO"
    if isinstance(data, dict):
        return any(holds_strings(v) for v in data.values())
    if isinstance(data, list):  # homogeneous: the first entry tells
        return bool(data) and holds_strings(data[0])
    if isinstance(data, tuple):  # pairs of texts, (x, y) structures
        return any(holds_strings(v) for v in data)
    return False


def _to_tensor(value, argument: str):
    """A list of strings or ints -> tensor; a list of lists (words, tags) -> ragged."""
    if value is None or isinstance(value, (tf.Tensor, tf.RaggedTensor)):
        return value
    if isinstance(value, (str, bytes)):
        raise ValueError(
            f"`{argument}` must be a batch (a list or array), not a single string. "
            f"Received: {value!r:.80}"
        )
    if isinstance(value, list) and value and isinstance(value[0], (list, tuple, np.ndarray)):
        return tf.ragged.constant([list(row) for row in value])
    try:
        return tf.convert_to_tensor(np.asarray(value) if isinstance(value, list) else value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"`{argument}` cannot be made a tensor: {error}") from None


def _convert(value, argument: str):
    if isinstance(value, tuple):
        return tuple(_convert(v, f"{argument}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict):
        return {k: _convert(v, f"{argument}[{k!r}]") for k, v in value.items()}
    return _to_tensor(value, argument)


def _count(data) -> int:
    first = tf.nest.flatten(data, expand_composites=False)[0]
    return int(first.shape[0]) if first.shape[0] is not None else int(first.nrows())


def to_dataset(x, y=None, sample_weight=None, batch_size=None, shuffle=False) -> tf.data.Dataset:
    """In-memory `x`, `y`, `sample_weight` -> a batched dataset of `(x, y, sample_weight)`.

    A `tf.data.Dataset` is returned as it is (it must be batched and hold `y` itself).
    Lists of lists (words, tags) become ragged rows; batches are `ragged_batch`ed.
    """
    if isinstance(x, tf.data.Dataset):
        for name, value in (("y", y), ("sample_weight", sample_weight), ("batch_size", batch_size)):
            if value is not None:
                raise ValueError(
                    f"When `x` is a tf.data.Dataset, it holds the labels and batches itself: "
                    f"leave `{name}` unset. Received: {name}={value!r:.80}"
                )
        return x
    if x is None:
        raise ValueError("`x` must be given. Received: x=None")
    parts = {"x": _convert(x, "x"), "y": _convert(y, "y")}
    parts["sample_weight"] = _convert(sample_weight, "sample_weight")
    counts = {name: _count(value) for name, value in parts.items() if value is not None}
    for name, value in parts.items():
        if value is not None:
            leaf_counts = {_count(leaf) for leaf in tf.nest.flatten(value)}
            if len(leaf_counts) > 1:
                raise ValueError(f"The parts of `{name}` differ in length: {sorted(leaf_counts)}")
    if len(set(counts.values())) > 1:
        raise ValueError(
            "`x`, `y` and `sample_weight` must hold one entry per example. Received: "
            + ", ".join(f"{count} in `{name}`" for name, count in counts.items())
        )
    data = keras.utils.pack_x_y_sample_weight(parts["x"], parts["y"], parts["sample_weight"])
    dataset = tf.data.Dataset.from_tensor_slices(data)
    if shuffle:
        dataset = dataset.shuffle(counts["x"], reshuffle_each_iteration=True)
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"`batch_size` must be a positive int. Received: {batch_size!r}")
    ragged = any(isinstance(t, tf.RaggedTensor) for t in tf.nest.flatten(data))
    batch = dataset.ragged_batch if ragged else dataset.batch
    return batch(batch_size or 32)


def split(data, fraction: float):
    """`(first, last)` of in-memory `data`, the last `fraction` held out (Keras' order)."""
    if data is None:
        return None, None
    if isinstance(data, tuple):
        pairs = [split(d, fraction) for d in data]
        return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    if isinstance(data, dict):
        pairs = {k: split(v, fraction) for k, v in data.items()}
        return {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}
    keep = int(len(data) * (1 - fraction))
    return data[:keep], data[keep:]
