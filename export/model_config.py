"""TF Serving's `--model_config_file` (a `ModelServerConfig` text proto) as `ModelConfig`s.

Example:
>>> import os
>>> os.makedirs("models/toy")
>>> config = parse_model_server_config('''
... model_config_list {
...   config {
...     name: "toy"
...     base_path: "models/toy"
...     model_platform: "tensorflow"
...     model_version_policy { specific { versions: 1 versions: 2 } }
...     version_labels { key: "stable" value: 1 }
...   }
... }''')
>>> (model,) = model_configs(config)
>>> model.name, model.version_policy, model.versions, dict(model.labels)
('toy', 'specific', (1, 2), {'stable': 1})
>>> parse_model_server_config("model_config_list { config { nam: 'x' } }")
Traceback (most recent call last):
ValueError: Malformed model config, line 1 ("model_config_list { config { nam: 'x' } }"): \
1:30 : Message type "tensorflow.serving.ModelConfig" has no field named "nam".
"""

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from export.registry import ModelConfig
from export.text_proto import parse


def parse_model_server_config(text: str, source: str = "model config"):
    """`text` as a `ModelServerConfig` proto; `ValueError` naming the line it could not
    parse (`source` names the file in the message)."""
    return parse(text, model_server_config_pb2.ModelServerConfig(), source)


def model_configs(config) -> list[ModelConfig]:
    """The `model_config_list` of a `ModelServerConfig` proto as `ModelConfig`s."""
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError(
            "A model server config must hold a `model_config_list` (`custom_model_config` is "
            f"not supported). Received: {text_format.MessageToString(config, as_one_line=True)!r}"
        )
    models = []
    for entry in config.model_config_list.config:
        if entry.model_platform not in ("", "tensorflow"):
            raise ValueError(
                f"Model {entry.name!r}: `model_platform` must be 'tensorflow'. "
                f"Received: {entry.model_platform!r}"
            )
        policy = entry.model_version_policy
        kind = policy.WhichOneof("policy_choice") or "latest"
        versions = tuple(policy.specific.versions) if kind == "specific" else ()
        try:
            models.append(
                ModelConfig(
                    entry.name,
                    entry.base_path,
                    versions=versions,
                    labels=dict(entry.version_labels),
                    version_policy=kind,
                    num_versions=policy.latest.num_versions or 1,
                )
            )
        except ValueError as error:
            raise ValueError(f"Model {entry.name!r}: {error}") from None
    return models
