"""The task base: a backbone, a head, an optional preprocessor, keras-hub's calling style.

With a `preprocessor` attached, `fit`, `evaluate` and `predict` take raw inputs (strings,
pairs of strings, lists of words) as Python lists, numpy arrays or a batched
`tf.data.Dataset`, and preprocess them inside tf.data (`map`, `AUTOTUNE`). With
`preprocessor=None` they take the model's token dicts, as plain Keras models do.

A task compiles itself with defaults when built (`compile()` with no arguments: AdamW,
the task's loss and accuracy), so `fit` works right away; `compile(...)` again to change.
"""

import keras
import numpy as np
import tensorflow as tf

from tfllm.losses import SparseCategoricalCrossentropy
from tfllm.preprocessing import Preprocessor
from tfllm.training import AdamW


def _is_string_spec(spec) -> bool:
    return getattr(spec, "dtype", None) == tf.string


def _holds_strings(data) -> bool:
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
        return any(_holds_strings(v) for v in data.values())
    if isinstance(data, list):  # homogeneous: the first entry tells
        return bool(data) and _holds_strings(data[0])
    if isinstance(data, tuple):  # pairs of texts, (x, y) structures
        return any(_holds_strings(v) for v in data)
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


def _split(data, fraction: float):
    """`(first, last)` of in-memory `data`, the last `fraction` held out (Keras' order)."""
    if data is None:
        return None, None
    if isinstance(data, tuple):
        pairs = [_split(d, fraction) for d in data]
        return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    if isinstance(data, dict):
        pairs = {k: _split(v, fraction) for k, v in data.items()}
        return {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}
    keep = int(len(data) * (1 - fraction))
    return data[:keep], data[keep:]


class Task(keras.Model):
    """A functional model of `backbone` + a head; `preprocessor` turns raw inputs into its dict.

    Subclasses build their graph, then call `super().__init__(inputs=..., outputs=...,
    backbone=..., preprocessor=...)`, and set `config_keys` (their own constructor
    arguments), `backbone_cls`, `preprocessor_cls` and the defaults of `compile()`.
    """

    config_keys: tuple[str, ...] = ()
    backbone_cls = None
    preprocessor_cls = None
    default_learning_rate = 5e-5
    # Backbone layers the head never reads (BERT's pooler under a token head): they get no
    # gradient, so they are left out of `trainable_weights` rather than made untrainable
    # (a task does not change the backbone it is given).
    unused_layer_names: tuple[str, ...] = ()

    def __init__(self, *, inputs, outputs, backbone, preprocessor=None, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.compile()

    @property
    def preprocessor(self):
        """The `tfllm.preprocessing` layer applied by `fit` / `evaluate` / `predict`, or None."""
        return getattr(self, "_preprocessor", None)

    @preprocessor.setter
    def preprocessor(self, value):
        if value is not None:
            if not isinstance(value, self.preprocessor_cls):
                raise TypeError(
                    f"`preprocessor` of a {type(self).__name__} must be a "
                    f"{self.preprocessor_cls.__name__} or None. Received: {type(value).__name__}"
                )
            self._check_preprocessor(value)
        self._preprocessor = value

    def _check_preprocessor(self, preprocessor: Preprocessor) -> None:
        size, vocabulary = preprocessor.tokenizer.vocabulary_size(), self.backbone.vocabulary_size
        if size > vocabulary:
            raise ValueError(
                f"`preprocessor`'s tokenizer has {size} tokens but the backbone only "
                f"{vocabulary} embeddings (`vocabulary_size`)."
            )
        limit = self.backbone.max_sequence_length
        if preprocessor.sequence_length > limit:
            raise ValueError(
                f"`preprocessor.sequence_length` ({preprocessor.sequence_length}) exceeds the "
                f"backbone's `max_sequence_length` ({limit})."
            )

    @property
    def trainable_weights(self):
        backbone = getattr(self, "backbone", None)
        names = self.unused_layer_names if backbone is not None else ()
        unused = {id(w) for name in names for w in backbone.get_layer(name).weights}
        return [w for w in super().trainable_weights if id(w) not in unused]

    # --- Config -------------------------------------------------------------------------------

    def get_config(self) -> dict:
        config = {key: getattr(self, key) for key in self.config_keys}
        preprocessor = self.preprocessor
        config.update(
            name=self.name,
            trainable=self.trainable,
            backbone=keras.layers.serialize(self.backbone),
            preprocessor=None if preprocessor is None else keras.layers.serialize(preprocessor),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config, backbone=keras.layers.deserialize(config["backbone"]))
        if isinstance(config.get("preprocessor"), dict):
            config["preprocessor"] = keras.layers.deserialize(config["preprocessor"])
        return cls(**config)

    # --- Compile defaults ---------------------------------------------------------------------

    def default_loss(self):
        return SparseCategoricalCrossentropy()

    def default_metrics(self) -> dict:
        """`{"metrics": ...}` or `{"weighted_metrics": ...}` used by `compile()`."""
        return {"weighted_metrics": [keras.metrics.SparseCategoricalAccuracy("accuracy")]}

    def compile(self, optimizer="auto", loss="auto", metrics="auto", weighted_metrics="auto", **kw):
        """Keras `compile`; `"auto"` picks the task's defaults.

        `optimizer="auto"`: `tfllm.training.AdamW(default_learning_rate, weight_decay=0.01)`;
        `loss="auto"`: token / class cross-entropy from logits; metrics `"auto"`: accuracy
        (both metric arguments `"auto"`; one given explicitly drops the other's default).
        """
        if optimizer == "auto":
            optimizer = AdamW(learning_rate=self.default_learning_rate, weight_decay=0.01)
        if loss == "auto":
            loss = self.default_loss()
        if metrics == "auto" and weighted_metrics == "auto":
            defaults = self.default_metrics()
            metrics, weighted_metrics = defaults.get("metrics"), defaults.get("weighted_metrics")
        metrics = None if metrics == "auto" else metrics
        weighted_metrics = None if weighted_metrics == "auto" else weighted_metrics
        super().compile(
            optimizer=optimizer, loss=loss, metrics=metrics, weighted_metrics=weighted_metrics, **kw
        )

    def compile_from_config(self, config):
        """Compiles with the `compile()` arguments that a `.keras` file saved."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:  # optimizer variables, so that the saved ones load into them
            self.optimizer.build(self.trainable_variables)

    # --- Raw inputs ---------------------------------------------------------------------------

    def preprocess_samples(self, x, y=None, sample_weight=None):
        """One batch of raw `(x, y, sample_weight)` -> model inputs (a `Dataset.map` function)."""
        return self.preprocessor(x, y, sample_weight)

    def _refuse_strings(self, data, argument: str) -> None:
        if _holds_strings(data):
            raise ValueError(
                f"`{argument}` holds strings, but this {type(self).__name__} has no "
                f"`preprocessor`: attach one (`{type(self).__name__}(backbone, ..., "
                f"preprocessor={self.preprocessor_cls.__name__}(tokenizer, sequence_length))`, "
                "or build it with `from_preset(folder)`), or pass the token dicts "
                "(`token_ids`, `padding_mask`, ...)."
            )

    def _dataset(self, x, y, sample_weight, batch_size, shuffle=False) -> tf.data.Dataset:
        dataset = to_dataset(x, y, sample_weight, batch_size, shuffle)
        dataset = dataset.map(self.preprocess_samples, num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.prefetch(tf.data.AUTOTUNE)

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        sample_weight=None,
        validation_data=None,
        validation_split=0.0,
        shuffle=True,
        **kwargs,
    ):
        """Keras `fit`; with a preprocessor, `x` (and `validation_data`) may be raw inputs.

        In-memory inputs are batched (`batch_size`, default 32) and, with `shuffle`,
        reshuffled every epoch; `validation_split` holds out their last fraction.
        """
        if self.preprocessor is None:
            self._refuse_strings(x, "x")
            return super().fit(
                x=x,
                y=y,
                batch_size=batch_size,
                sample_weight=sample_weight,
                validation_data=validation_data,
                validation_split=validation_split,
                # Keras warns that a dataset is never shuffled; nothing to warn about.
                shuffle=shuffle and not isinstance(x, tf.data.Dataset),
                **kwargs,
            )
        if validation_split:
            if isinstance(x, tf.data.Dataset) or validation_data is not None:
                raise ValueError(
                    "`validation_split` needs in-memory `x` and no `validation_data`. "
                    f"Received: validation_split={validation_split!r}"
                )
            (x, held_x), (y, held_y), (sample_weight, held_weight) = (
                _split(x, validation_split),
                _split(y, validation_split),
                _split(sample_weight, validation_split),
            )
            validation_data = keras.utils.pack_x_y_sample_weight(held_x, held_y, held_weight)
        train = self._dataset(x, y, sample_weight, batch_size, shuffle=shuffle)
        if validation_data is not None:
            if isinstance(validation_data, tf.data.Dataset):
                validation_data = self._dataset(validation_data, None, None, None)
            else:
                validation_data = self._dataset(
                    *keras.utils.unpack_x_y_sample_weight(validation_data), batch_size
                )
        return super().fit(x=train, validation_data=validation_data, shuffle=False, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        """Keras `evaluate`; with a preprocessor, `x` may be raw inputs."""
        if self.preprocessor is None or kwargs.get("_use_cached_eval_dataset"):
            if self.preprocessor is None:
                self._refuse_strings(x, "x")
            return super().evaluate(
                x=x, y=y, batch_size=batch_size, sample_weight=sample_weight, **kwargs
            )
        dataset = self._dataset(x, y, sample_weight, batch_size)
        return super().evaluate(x=dataset, **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        """Keras `predict` (logits); with a preprocessor, `x` may be raw inputs."""
        if self.preprocessor is None:
            self._refuse_strings(x, "x")
            return super().predict(x, batch_size=batch_size, **kwargs)
        return super().predict(self._dataset(x, None, None, batch_size), **kwargs)
