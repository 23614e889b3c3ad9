"""The task base: a backbone, a head, an optional preprocessor, keras-hub's calling style.

With a `preprocessor` attached, `fit`, `evaluate` and `predict` take raw inputs (strings,
pairs of strings, lists of words) as Python lists, numpy arrays or a batched
`tf.data.Dataset`, and preprocess them inside tf.data (`map`, `AUTOTUNE`). With
`preprocessor=None` they take the model's token dicts, as plain Keras models do; token
dicts (a dict with `token_ids`, or a dataset of them) also pass through unchanged when a
preprocessor is attached.

A task compiles itself with defaults when built (`compile()` with no arguments: AdamW,
the task's loss and accuracy), so `fit` works right away; `compile(...)` again to change.
One rebuilt by `from_config` (`load_model(..., compile=False)`) is compiled with the
defaults by its first `fit` or `evaluate`.
"""

import logging
import os
import re
import warnings

import keras
import tensorflow as tf

from tfllm.layers import Dense, Dropout
from tfllm.losses import SparseCategoricalCrossentropy
from tfllm.models.preset_io import read_preset, save_preset
from tfllm.models.presets import PRESETS
from tfllm.models.task_inputs import holds_strings, is_token_dict, split, to_dataset
from tfllm.preprocessing import MaskedLMPreprocessor, Preprocessor
from tfllm.training import AdamW

logger = logging.getLogger(__name__)
# A preprocessor built by `from_preset` packs this many tokens unless told otherwise (or
# fewer, when the backbone's context is shorter).
DEFAULT_SEQUENCE_LENGTH = 128


def check_backbone(task: str, backbone, expected) -> None:
    if not isinstance(backbone, expected):
        raise TypeError(
            f"`backbone` of a {task} must be a tfllm {expected.__name__}. "
            f"Received: {type(backbone).__name__}"
        )


def check_classes(argument: str, value) -> None:
    """`ValueError` unless `value` (argument `argument`) is an int >= 2."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(f"`{argument}` must be an int >= 2. Received: {value!r}")


def check_dropout(dropout) -> None:
    """`ValueError` unless `dropout` is a float in [0, 1)."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"`dropout` must be a float in [0, 1). Received: {dropout!r}")


def classification_head(backbone, units: int, dropout: float):
    """`(output_dropout, logits)`: the `Dropout` and `Dense(units)` of a classifier's head."""
    kwargs = dict(dtype=backbone.dtype_policy)
    output_dropout = Dropout(dropout, name="output_dropout", **kwargs)
    output_dense = Dense(
        units,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        name="logits",
        **kwargs,
    )
    return output_dropout, output_dense


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

    def __init__(self, *, inputs, outputs, backbone, preprocessor=None, compile=True, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.backbone = backbone
        self.preprocessor = preprocessor
        if compile:  # with the defaults; `fit` / `evaluate` also compile an uncompiled task
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
        # Not compiled here: `load_model` compiles from the saved arguments (or not at all,
        # with `compile=False`), and `fit` / `evaluate` compile with the defaults if needed.
        return cls(**config, compile=False)

    # --- Presets ------------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, preset, sequence_length: int | None = None, **kwargs):
        """This task on a `PRESETS` size (random weights) or a local preset folder.

        A folder (Hugging Face, keras-hub, tfllm preset or run; see
        `tfllm.models.preset_io`) gives the backbone's weights and a preprocessor around
        its tokenizer. A task of this class saved in the folder is returned whole (head
        weights included) unless head arguments are given; a Hugging Face BERT's
        masked-LM head is carried over to `MaskedLM` / `BertPretrainer`, and a new one is
        created (and logged) when the checkpoint has none.

        Args:
            preset: a `PRESETS` name or a folder.
            sequence_length: of the preprocessor built here (default: the saved
                preprocessor's, else `min(128, max_sequence_length)`). A saved preprocessor
                of this task's kind keeps its other settings (casing, chat template, ...).
            **kwargs: the task's own constructor arguments (`num_classes`, `dropout`,
                `preprocessor`, ...); other keys are backbone arguments that keep the
                weights' shapes (`dtype`, and for a size name any of them).

        Example:
        >>> classifier = TextClassifier.from_preset("bert_tiny", num_classes=3)  # no tokenizer
        >>> classifier.save_to_preset("my_classifier")
        >>> TextClassifier.from_preset("my_classifier").num_classes  # head weights too
        3
        >>> minilm = tfllm.assets.minilm_path()  # doctest: +SKIP
        >>> TextClassifier.from_preset(minilm, num_classes=2).fit(texts, labels)  # doctest: +SKIP
        """
        if cls.backbone_cls is None:
            raise TypeError("Call `from_preset` on a task class, e.g. `TextClassifier`.")
        if not isinstance(preset, (str, os.PathLike)):
            raise TypeError(f"`preset` must be a name or a folder path. Received: {preset!r}")
        own = set(cls.config_keys) | {"name", "preprocessor"} | cls.preset_task_arguments
        task_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in own}
        if isinstance(preset, str) and preset in PRESETS:
            backbone = cls.backbone_cls.from_preset(preset, **kwargs)
            for key in cls.preset_task_arguments:  # no tokenizer: no preprocessor
                task_kwargs.pop(key, None)
            return cls(backbone, **task_kwargs)
        if not os.path.exists(os.path.expanduser(preset)):
            names = sorted(k for k, v in PRESETS.items() if v["backbone"] == cls.family())
            raise ValueError(
                f"`preset` must be one of {names} for {cls.__name__} or a preset folder. "
                f"Received: {str(preset)!r}"
            )
        parts = read_preset(preset, backbone_cls=cls.backbone_cls, **kwargs)
        saved = parts.task
        reuse = isinstance(saved, cls) and not task_kwargs and sequence_length is None
        preprocessor = task_kwargs.pop("preprocessor", None)
        saved_preprocessor = getattr(saved, "preprocessor", None)
        keeps_saved = not cls.preset_task_arguments & task_kwargs.keys()  # e.g. new tags
        if (
            preprocessor is None
            and keeps_saved
            and isinstance(saved_preprocessor, cls.preprocessor_cls)
        ):
            # The saved settings (casing, masking rates, chat template), maybe a new length.
            length = sequence_length or saved_preprocessor.sequence_length
            config = {**saved_preprocessor.get_config(), "sequence_length": length}
            preprocessor = type(saved_preprocessor).from_config(config)
        elif preprocessor is None and parts.tokenizer is not None:
            length = sequence_length or min(
                DEFAULT_SEQUENCE_LENGTH, parts.backbone.max_sequence_length
            )
            preprocessor = cls.preset_preprocessor(parts.tokenizer, length, task_kwargs)
        for key in cls.preset_task_arguments:  # preprocessor arguments, used or not
            task_kwargs.pop(key, None)
        if reuse:
            if saved.preprocessor is None:
                saved.preprocessor = preprocessor
            return saved
        task = cls(parts.backbone, preprocessor=preprocessor, **task_kwargs)
        task.adopt_heads(saved, preset)
        return task

    # `from_preset` arguments that go to `preset_preprocessor`, not to the constructor.
    preset_task_arguments: frozenset = frozenset()

    @classmethod
    def family(cls) -> str:
        return cls.backbone_cls.preset_family

    @classmethod
    def preset_preprocessor(cls, tokenizer, sequence_length: int, task_kwargs: dict):
        """The preprocessor `from_preset` attaches (it may read and set `task_kwargs`)."""
        return cls.preprocessor_cls(tokenizer, sequence_length)

    def adopt_heads(self, saved, preset) -> None:
        """Copies pretrained head weights of the preset's task `saved` that fit this task."""

    def save_to_preset(self, preset_dir) -> None:
        """Writes this task (backbone, head, preprocessor and tokenizer) as a tfllm preset.

        `Task.from_preset(preset_dir)` of the same class returns it whole; other tasks
        take its backbone and tokenizer.
        """
        save_preset(self, preset_dir)

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

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:  # whether the optimizer has state to save (a task compiles when built)
            config["optimizer_built"] = bool(self.optimizer.built)
        return config

    def compile_from_config(self, config):
        """Compiles with the `compile()` arguments that a `.keras` file saved."""
        config = dict(config)
        built = config.pop("optimizer_built", True)
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built and built:  # optimizer variables, so that the saved ones load into them
            self.optimizer.build(self.trainable_variables)

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        """Quantizes the weights in place: Keras's `Model.quantize`, quietly.

        `"int8"` stores every `Dense` kernel and the token embedding as int8 with one
        float32 scale per output channel (per vocabulary row for the embedding, tied
        logits included; tfllm's projections store it `(units, input_dim)`, see
        `tfllm.layers.Dense`); by default activations are quantized per token on the fly
        (int8 x int8 matmuls). `config=keras.quantizers.Int8QuantizationConfig(
        activation_quantizer=None)` keeps activations float (weight-only). Norms,
        position embeddings and biases stay float. Keras warns once per layer it leaves
        float; those warnings are dropped here. `.keras` files, presets and SavedModels
        keep the quantized weights; the preprocessor is left alone. For bfloat16 weights
        rebuild instead:
        `from_preset(..., dtype="bfloat16")` or `preset_io.with_overrides(task,
        dtype="bfloat16")`.

        Example:
        >>> lm = CausalLM(GPTBackbone.from_preset("gpt_tiny"))
        >>> lm.quantize("int8")
        >>> lm.backbone.token_embedding.embeddings.dtype
        'int8'
        """
        if not (filters is None or isinstance(filters, (str, list, tuple)) or callable(filters)):
            raise ValueError(
                "`filters` must be a regex string, a list of them or a callable. "
                f"Received: {filters!r}"
            )
        # The preprocessor's layers (tokenizers) hold no weights to quantize; Keras would
        # refuse them as unbuilt. Otherwise `filters` as Keras reads them (layer names).
        skip = {id(layer) for layer in getattr(self.preprocessor, "_flatten_layers", list)()}

        def keep(layer):
            if id(layer) in skip:
                return False
            if filters is None or callable(filters):
                return filters is None or filters(layer)
            patterns = [filters] if isinstance(filters, str) else filters
            return any(re.search(pattern, layer.name) for pattern in patterns)

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Layer .* does not have a `quantize` method")
            super().quantize(mode, config=config, filters=keep, **kwargs)

    # --- Raw inputs ---------------------------------------------------------------------------

    def preprocess_samples(self, x, y=None, sample_weight=None):
        """One batch of raw `(x, y, sample_weight)` -> model inputs (a `Dataset.map` function)."""
        return self.preprocessor(x, y, sample_weight)

    def _refuse_strings(self, data, argument: str) -> None:
        if self.preprocessor is None and holds_strings(data):
            raise ValueError(
                f"`{argument}` holds strings, but this {type(self).__name__} has no "
                f"`preprocessor`: attach one (`{type(self).__name__}(backbone, ..., "
                f"preprocessor={self.preprocessor_cls.__name__}(tokenizer, sequence_length))`, "
                "or build it with `from_preset(folder)`), or pass the token dicts "
                "(`token_ids`, `padding_mask`, ...)."
            )

    def _dataset(self, x, y, sample_weight, batch_size, shuffle=False) -> tf.data.Dataset:
        dataset = to_dataset(x, y, sample_weight, batch_size, shuffle)
        # Masking draws from the preprocessor's random generator: a sequential map keeps
        # the draws in batch order, so a seeded run masks the same way every time.
        masking = isinstance(self.preprocessor, MaskedLMPreprocessor)
        parallel = None if masking else tf.data.AUTOTUNE
        dataset = dataset.map(self.preprocess_samples, num_parallel_calls=parallel)
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
        if not self.compiled:
            self.compile()
        if self.preprocessor is None or is_token_dict(x):
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
                split(x, validation_split),
                split(y, validation_split),
                split(sample_weight, validation_split),
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
        if not self.compiled:
            self.compile()
        if self.preprocessor is None or is_token_dict(x) or kwargs.get("_use_cached_eval_dataset"):
            self._refuse_strings(x, "x")
            return super().evaluate(
                x=x, y=y, batch_size=batch_size, sample_weight=sample_weight, **kwargs
            )
        dataset = self._dataset(x, y, sample_weight, batch_size)
        return super().evaluate(x=dataset, **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        """Keras `predict` (logits); with a preprocessor, `x` may be raw inputs."""
        if self.preprocessor is None or is_token_dict(x):
            self._refuse_strings(x, "x")
            return super().predict(x, batch_size=batch_size, **kwargs)
        return super().predict(self._dataset(x, None, None, batch_size), **kwargs)
