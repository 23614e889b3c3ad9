"""Shared base of the backbones: config round trip, presets and argument checks."""

import os
from pathlib import Path

import keras

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


class Backbone(keras.Model):
    """A functional transformer whose constructor arguments are its whole config.

    Subclasses build their graph in `__init__`, set `self.config_keys` (the names of
    their constructor arguments) and `preset_family` (the prefix of their `PRESETS`).
    """

    config_keys: tuple[str, ...] = ()
    preset_family = ""

    def __init__(self, *args, dtype=None, **kwargs):
        super().__init__(*args, **kwargs)
        # A functional model drops `dtype`: keep it, so `get_config` (and presets) do too.
        if dtype is not None:
            self.dtype_policy = keras.dtype_policies.get(dtype)

    def get_config(self) -> dict:
        config = {key: getattr(self, key) for key in self.config_keys}
        config.update(
            name=self.name,
            trainable=self.trainable,
            dtype=keras.dtype_policies.serialize(self.dtype_policy),
        )
        return config

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
