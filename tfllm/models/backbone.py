"""Shared base of the backbones: config round trip, presets and argument checks."""

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
    def from_preset(cls, name: str, **overrides):
        """Builds a randomly initialised backbone of a named size from `PRESETS`.

        Example:
        >>> GPTBackbone.from_preset("gpt_tiny", dropout=0.0)
        """
        family = {k: v for k, v in PRESETS.items() if v["backbone"] == cls.preset_family}
        if name not in family:
            raise ValueError(
                f"`name` must be one of {sorted(family)} for {cls.__name__}. Received: {name!r}"
            )
        return cls(**{**family[name]["config"], **overrides})
