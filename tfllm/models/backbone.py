"""Shared base of the backbones: config round trip, presets, LoRA and argument checks."""

import os
from pathlib import Path

import h5py
import keras
from keras import ops

from tfllm.io import atomic_path
from tfllm.models.presets import PRESETS


def check_positive_int(**values):
    """Raises `ValueError` naming the first argument that is not a positive int."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"`{name}` must be a positive int. Received: {value!r}")


def check_heads(hidden_dim: int, num_heads: int):
    if hidden_dim % num_heads:
        raise ValueError(
            "`hidden_dim` must be divisible by `num_heads`. "
            f"Received: hidden_dim={hidden_dim}, num_heads={num_heads}"
        )


def _dense_layers(layer, prefix=""):
    """`{path: Dense}` under `layer`; a path joins layer names below it ("a/b/qkv")."""
    found = {}
    for child in layer._layers:
        path = prefix + child.name
        if isinstance(child, keras.layers.Dense):
            found[path] = child
        found.update(_dense_layers(child, path + "/"))
    return found


def _read_lora_file(filepath):
    """`(backbone class name, rank, alpha, {path: (A, B)})` of a `.lora.h5` file."""
    if not Path(filepath).is_file():
        raise FileNotFoundError(f"No LoRA weights file at {str(filepath)!r}.")
    weights = {}

    def read(path, item):
        if isinstance(item, h5py.Group) and "lora_kernel_a" in item:
            weights[path] = (item["lora_kernel_a"][()], item["lora_kernel_b"][()])

    with h5py.File(filepath, "r") as file:
        if "rank" not in file.attrs:
            raise ValueError(f"{str(filepath)!r} is not a `.lora.h5` file of tfllm.")
        file.visititems(read)
        attrs = (
            str(file.attrs["backbone"]),
            int(file.attrs["rank"]),
            float(file.attrs["lora_alpha"]),
        )
    return (*attrs, weights)


def _set_trainable(layers, value: bool) -> None:
    """`layer.trainable = value` for each layer, its own variables included.

    Calls the property's setter: an assignment (TF backend) skips a value equal to the
    current one, and would leave variables frozen on their own (a LoRA kernel) as they are.
    """
    for layer in layers:
        keras.layers.Layer.trainable.fset(layer, value)


def _matches(path: str, name: str) -> bool:
    return path == name or path.endswith("/" + name)


class Backbone(keras.Model):
    """A functional transformer whose constructor arguments are its whole config.

    Subclasses build their graph in `__init__`, set `self.config_keys` (the names of
    their constructor arguments) and `preset_family` (the prefix of their `PRESETS`).
    LoRA (`enable_lora`, `save_lora_weights`, `load_lora_weights`, `merge_lora`) works on
    every backbone, as keras-hub's.
    """

    config_keys: tuple[str, ...] = ()
    preset_family = ""

    def __init__(self, *args, dtype=None, quantization_config=None, **kwargs):
        super().__init__(*args, **kwargs)
        # A functional model drops `dtype`: keep it, so `get_config` (and presets) do too.
        if dtype is not None:
            self.dtype_policy = keras.dtype_policies.get(dtype)
        if quantization_config is not None:
            self._restore_quantization_config(quantization_config)

    def get_config(self) -> dict:
        config = {key: getattr(self, key) for key in self.config_keys}
        config.update(
            name=self.name,
            trainable=self.trainable,
            dtype=keras.dtype_policies.serialize(self._dtype_policy_map()),
        )
        quantized = [layer for layer in self._flatten_layers() if layer.quantization_mode]
        if quantized and getattr(quantized[0], "quantization_config", None) is not None:
            # Not part of the dtype policy (e.g. weight-only int8: no activation quantizer).
            config["quantization_config"] = keras.saving.serialize_keras_object(
                quantized[0].quantization_config
            )
        return config

    def _restore_quantization_config(self, config):
        """Gives the layers rebuilt quantized (by the policy map) the config they had.

        Keras builds a layer quantized by its policy with the default config (int8:
        activations quantized too); this sets the saved one, as `Model.quantize` did.
        """
        if isinstance(config, dict):
            config = keras.saving.deserialize_keras_object(config)
        for layer in self._flatten_layers():
            if layer.quantization_mode is not None:
                layer.quantization_config = config
                layer.inputs_quantizer = config.activation_quantizer

    def _dtype_policy_map(self):
        """The dtype policy, or after `quantize` a `DTypePolicyMap` of the quantized layers.

        Sublayers take their parent's `dtype`; a map passed as `dtype` gives each layer
        its policy by path, so a reloaded model builds its quantized layers with int8
        kernels and scales before the weights are read (as keras-hub's `Backbone`).
        """
        policy = self.dtype_policy
        if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
            return policy
        policy_map = keras.dtype_policies.DTypePolicyMap(default_policy=policy)
        for layer in self._flatten_layers(include_self=False):
            if layer.quantization_mode is not None:
                policy_map[layer.path] = layer.dtype_policy
        return policy_map if len(policy_map) else policy

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """A backbone from a `PRESETS` size name (random weights) or a local preset folder.

        Args:
            preset: a name of `PRESETS` for this backbone (`*_tiny`, `*_bench`,
                `*_random`): a new, randomly initialised backbone of that size; or a folder
                (Hugging Face, keras-hub, tfllm preset or tfllm run; see
                `tfllm.models.preset_io`): the backbone with the folder's weights.
            **kwargs: constructor arguments over the preset's (for a folder: only those
                that keep the weights' shapes, e.g. `dropout`, `dtype`).

        Example:
        >>> backbone = BertBackbone.from_preset("bert_tiny")  # random weights
        >>> backbone.save_to_preset("my_bert")
        >>> BertBackbone.from_preset("my_bert", dropout=0.0).dropout  # its weights
        0.0
        >>> minilm = BertBackbone.from_preset(tfllm.assets.minilm_path())  # doctest: +SKIP
        """
        if not isinstance(preset, (str, os.PathLike)):
            raise TypeError(f"`preset` must be a name or a folder path. Received: {preset!r}")
        family = {k: v for k, v in PRESETS.items() if v["backbone"] == cls.preset_family}
        if isinstance(preset, str) and preset in family:
            return cls(**{**family[preset]["config"], **kwargs})
        if not Path(preset).expanduser().exists():
            raise ValueError(
                f"`preset` must be one of {sorted(family)} for {cls.__name__} or a preset "
                f"folder. Received: {str(preset)!r}"
            )
        from tfllm.models.preset_io import read_preset

        return read_preset(preset, backbone_cls=cls, **kwargs).backbone

    def save_to_preset(self, preset_dir) -> None:
        """Writes this backbone (config + weights) as a tfllm preset folder.

        Example:
        >>> GPTBackbone.from_preset("gpt_tiny").save_to_preset("presets/my_gpt")
        >>> GPTBackbone.from_preset("presets/my_gpt").num_layers
        2
        """
        from tfllm.models.preset_io import save_preset

        save_preset(self, preset_dir)

    # --- LoRA ---------------------------------------------------------------------------

    def default_lora_layer_names(self) -> list[str]:
        """Layers `enable_lora` adapts by default: every attention and feed-forward projection.

        "qkv" is the fused query/key/value projection, "output" the output projection of
        both attention and feed-forward, "intermediate" the first feed-forward projection.
        """
        return ["qkv", "output", "intermediate"]

    @property
    def lora_rank(self) -> int | None:
        """The rank given to `enable_lora`, or None while LoRA is off."""
        return getattr(self, "_lora_rank", None)

    def enable_lora(self, rank: int, target_layer_names=None, lora_alpha: float | None = None):
        """Adds low-rank adapters to projections and freezes everything else in the backbone.

        Each target `Dense` computes `x @ (kernel + lora_alpha / rank * A @ B)` with `A`
        `(in, rank)` (He-uniform) and `B` `(rank, out)` (zeros, so the model is unchanged
        at first); only the `A`s and `B`s train (Keras's `Dense.enable_lora`). A task's own
        head stays trainable. Call it before `fit` (a model that has already trained must
        be compiled again). `.keras` and `.weights.h5` files of a LoRA model hold merged
        kernels (Keras's `Dense` saves them so) and load as a model without LoRA; to go on
        training the adapters, save them with `save_lora_weights`. Load full weights before
        `enable_lora`: Keras zeroes both `A` and `B` when it loads them into LoRA layers,
        and adapters at zero get no gradient.

        Args:
            rank: rank of the adapters, a positive int.
            target_layer_names: layer names or name paths ("attention/output") of the
                `Dense` layers to adapt; default `default_lora_layer_names()`.
            lora_alpha: scale numerator; `None` means `rank` (scale 1).

        Example:
        >>> backbone = GPTBackbone.from_preset("gpt_tiny")
        >>> backbone.enable_lora(4)
        >>> sum(int(np.prod(w.shape)) for w in backbone.trainable_weights)  # 2 x 4 x (8d + 2ff)
        8192
        """
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise ValueError(f"`rank` must be a positive int. Received: rank={rank!r}")
        if lora_alpha is not None and (
            isinstance(lora_alpha, bool)
            or not isinstance(lora_alpha, int | float)
            or lora_alpha <= 0
        ):
            raise ValueError(f"`lora_alpha` must be a positive number. Received: {lora_alpha!r}")
        if self.lora_rank is not None:
            raise ValueError(
                f"LoRA is already enabled on this backbone (rank={self.lora_rank}); "
                "`merge_lora()` first to add another."
            )
        names = (
            self.default_lora_layer_names() if target_layer_names is None else target_layer_names
        )
        if isinstance(names, str) or not all(isinstance(name, str) for name in names):
            raise TypeError(
                f"`target_layer_names` must be a list of layer names. Received: {names!r}"
            )
        dense = _dense_layers(self)
        unmatched = [n for n in names if not any(_matches(path, n) for path in dense)]
        if unmatched or not names:
            raise ValueError(
                f"`target_layer_names` must name Dense layers of this backbone, e.g. "
                f"{sorted(dense)[:4]}. Received: {list(names)!r}, matching none: {unmatched}"
            )
        targets = [path for path in dense if any(_matches(path, n) for n in names)]
        self.trainable = True
        _set_trainable(self._flatten_layers(include_self=False), False)
        for path in targets:
            layer = dense[path]
            _set_trainable([layer], True)  # for the adapters Keras adds next
            layer.enable_lora(rank, lora_alpha=lora_alpha)
            if layer.bias is not None:
                layer.bias.trainable = False
        self._lora_rank, self._lora_alpha = rank, float(lora_alpha or rank)
        self._lora_paths = tuple(targets)
        self._reset_compiled_functions()

    def _lora_layers(self) -> dict:
        if self.lora_rank is None:
            raise ValueError("LoRA is not enabled on this backbone: call `enable_lora(rank)`.")
        dense = _dense_layers(self)
        return {path: dense[path] for path in self._lora_paths}

    def save_lora_weights(self, filepath) -> None:
        """Writes the LoRA adapters alone (and their rank and alpha) to a `.lora.h5` file.

        Layers are keyed by their name path (`transformer_layer_0/attention/qkv`). The
        file is written atomically.

        Example:
        >>> backbone = GPTBackbone.from_preset("gpt_tiny")
        >>> backbone.enable_lora(4)
        >>> backbone.save_lora_weights("gpt.lora.h5")
        >>> fresh = GPTBackbone.from_preset("gpt_tiny")  # same config (and base weights)
        >>> fresh.load_lora_weights("gpt.lora.h5")  # enables LoRA at rank 4
        >>> fresh.lora_rank
        4
        """
        layers = self._lora_layers()
        if not str(filepath).endswith(".lora.h5"):
            raise ValueError(f"`filepath` must end in `.lora.h5`. Received: {str(filepath)!r}")
        with atomic_path(filepath) as temp, h5py.File(temp, "w") as file:
            file.attrs["backbone"] = type(self).__name__
            file.attrs["rank"], file.attrs["lora_alpha"] = self._lora_rank, self._lora_alpha
            for path, layer in layers.items():
                group = file.create_group(path)
                group["lora_kernel_a"] = ops.convert_to_numpy(layer.lora_kernel_a)
                group["lora_kernel_b"] = ops.convert_to_numpy(layer.lora_kernel_b)

    def load_lora_weights(self, filepath) -> None:
        """Loads adapters written by `save_lora_weights` into this backbone.

        The backbone must have the config (and base weights) of the one that saved them.
        Without LoRA, it is enabled with the file's rank, alpha and layers; with LoRA, its
        rank, alpha and layers must be the file's. Nothing is assigned unless all match.
        """
        kind, rank, alpha, weights = _read_lora_file(filepath)
        if kind != type(self).__name__:
            raise ValueError(
                f"{str(filepath)!r} holds LoRA weights of a {kind}, not a {type(self).__name__}."
            )
        if self.lora_rank is not None and (self.lora_rank, self._lora_alpha) != (rank, alpha):
            raise ValueError(
                f"{str(filepath)!r} holds LoRA weights of rank={rank}, lora_alpha={alpha:g}, "
                f"but this backbone has `enable_lora(rank={self.lora_rank}, "
                f"lora_alpha={self._lora_alpha:g})`. Both must match."
            )
        dense = _dense_layers(self)
        targets = set(weights) if self.lora_rank is None else set(self._lora_paths)
        missing, extra = (
            sorted(targets - set(weights)),
            sorted(set(weights) - (targets & set(dense))),
        )
        if missing or extra:
            raise ValueError(
                f"{str(filepath)!r} does not fit this backbone's LoRA layers: no weights for "
                f"{missing[:4]}; weights for layers it does not adapt {extra[:4]}."
            )
        for path, (a, b) in weights.items():
            kernel = tuple(dense[path].kernel.shape)  # (input_dim, units)
            if a.shape != (kernel[0], rank) or b.shape != (rank, kernel[1]):
                raise ValueError(
                    f"{str(filepath)!r}: LoRA weights of {path} have shapes {a.shape}, "
                    f"{b.shape}; this backbone's kernel {kernel} needs "
                    f"{(kernel[0], rank)}, {(rank, kernel[1])} (another config?)."
                )
        if self.lora_rank is None:
            self.enable_lora(rank, target_layer_names=sorted(weights), lora_alpha=alpha)
        for path, (a, b) in weights.items():
            dense[path].lora_kernel_a.assign(a)
            dense[path].lora_kernel_b.assign(b)

    def merge_lora(self) -> None:
        """Folds the adapters into the kernels (`kernel += alpha / rank * A @ B`), removes
        them and makes the whole backbone trainable again: no extra cost when exported.

        Example:
        >>> backbone = GPTBackbone.from_preset("gpt_tiny")
        >>> backbone.enable_lora(4)
        >>> backbone.merge_lora()
        >>> backbone.lora_rank, len(backbone.trainable_weights)  # the plain model's
        (None, 28)
        """
        for layer in self._lora_layers().values():
            if layer.quantization_mode == "int8":  # dequantize, add, requantize (QLoRA)
                values, kernel_scale, _ = layer._get_kernel_with_merged_lora()
                layer._kernel.assign(values)
                layer.kernel_scale.assign(kernel_scale)
            else:
                scale = layer.lora_alpha / layer.lora_rank
                delta = scale * ops.matmul(layer.lora_kernel_a, layer.lora_kernel_b)  # float32
                kernel = ops.add(ops.cast(layer._kernel, "float32"), delta)
                layer._kernel.assign(ops.cast(kernel, layer._kernel.dtype))
            # Functions traced with LoRA still read B: zeroed, they see the merged kernel.
            layer.lora_kernel_b.assign(ops.zeros_like(layer.lora_kernel_b))
            for name in ("lora_kernel_a", "lora_kernel_b"):
                # `Layer.__delattr__` without its `gc.collect()` per variable.
                layer._untrack_variable(getattr(layer, name))
                super(keras.layers.Layer, layer).__delattr__(name)
            layer.lora_enabled, layer.lora_rank, layer.lora_alpha = False, None, None
        self._lora_rank = self._lora_alpha = None
        self._lora_paths = ()
        _set_trainable(self._flatten_layers(), True)
        self._reset_compiled_functions()

    def _reset_compiled_functions(self):
        """Retrace this model's step functions (their variables changed), as Keras's `quantize`."""
        self.train_function = self.test_function = self.predict_function = None
