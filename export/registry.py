"""The served models: version folders loaded, polled, looked up, as TF Serving's manager.

Shared by the REST (`export/serve.py`) and gRPC (`export/grpc_service.py`) front ends.
A `Model` follows one `ModelConfig`: `refresh()` loads the versions its policy asks for
from `<base_path>/<version>/` (replaying each one's warmup requests), drops the others,
and keeps the error of a version that failed to load (state `END`) while the previous
version serves; the failed version is loaded again once its folder changes (files
added, resized or touched). A lookup that finds nothing raises `RequestError` with TF
Serving's message and the HTTP status of its error code.

Example:
>>> class Doubler(tf.Module):
...     @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
...     def double(self, x):
...         return {"y": 2 * x}
>>> module = Doubler()
>>> tf.saved_model.save(module, "models/doubler/3", signatures={"serving_default": module.double})
>>> model = Model(ModelConfig("doubler", "models/doubler", labels={"stable": 3}))
>>> model.refresh()
>>> version = model.lookup(None, "stable")
>>> version.number, version.call("serving_default", {"x": np.array([1.5], np.float32)})
(3, {'y': array([3.], dtype=float32)})
"""

import dataclasses
import logging
import os
import re
import threading
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the ops that exported tokenizers use)
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from export.rest_json import RequestError

logger = logging.getLogger("tfllm.serve")
DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
POLICIES = ("latest", "all", "specific")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One served model, as an entry of TF Serving's `model_config_list`.

    Args:
        name: its name in requests (`/v1/models/<name>`, `ModelSpec.name`).
        base_path: the folder of numeric version folders (`<base_path>/<version>/`).
        versions: with policy `"specific"`, the versions served; with `"latest"`,
            versions pinned beside the newest ones.
        labels: version labels, e.g. `{"stable": 1}`.
        version_policy: `"latest"` (the newest `num_versions` that load), `"all"` or
            `"specific"`, as TF Serving's `model_version_policy`.
        num_versions: how many of the newest versions `"latest"` serves.
    """

    name: str
    base_path: str
    versions: tuple[int, ...] = ()
    labels: Mapping[str, int] = dataclasses.field(default_factory=dict)
    version_policy: str = "latest"
    num_versions: int = 1

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(
                f"`name` must be letters, digits, '_', '.', '-'. Received: {self.name!r}"
            )
        if not os.path.isdir(self.base_path):
            raise ValueError(f"`base_path` must be a folder. Received: {self.base_path!r}")
        numbers = [*self.versions, *self.labels.values()]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in numbers):
            raise ValueError(
                f"`versions` and `labels` values must be integers >= 0. Received: "
                f"{self.versions!r}, {dict(self.labels)!r}"
            )
        if self.version_policy not in POLICIES:
            raise ValueError(
                f"`version_policy` must be one of {POLICIES}. Received: {self.version_policy!r}"
            )
        if self.version_policy == "specific" and not self.versions:
            raise ValueError("`version_policy='specific'` needs `versions`. Received: ()")
        if isinstance(self.num_versions, bool) or not isinstance(self.num_versions, int):
            raise ValueError(f"`num_versions` must be an int >= 1. Received: {self.num_versions!r}")
        if self.num_versions < 1:
            raise ValueError(f"`num_versions` must be an int >= 1. Received: {self.num_versions!r}")


@dataclasses.dataclass
class Version:
    """A loaded SavedModel version and what serving it needs.

    `signature_def_map` holds the `SignatureDef` protos (metadata); `specs` the inputs of
    each signature as `{name: tf.TensorSpec}`.
    """

    number: int
    module: object  # the loaded object: keeps the signatures' variables alive
    signatures: dict
    specs: dict[str, dict[str, tf.TensorSpec]]
    signature_def_map: dict
    batchers: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, path: str, number: int) -> "Version":
        with open(os.path.join(path, "saved_model.pb"), "rb") as file:
            saved_model = saved_model_pb2.SavedModel.FromString(file.read())
        module = tf.saved_model.load(path)
        signatures = dict(module.signatures)
        specs = {key: fn.structured_input_signature[1] for key, fn in signatures.items()}
        defs = dict(saved_model.meta_graphs[0].signature_def)
        version = cls(number, module, signatures, specs, defs)
        version.warm_up(os.path.join(path, WARMUP_FILE))
        return version

    def warm_up(self, file: str) -> None:
        """Replays the `PredictLog` requests of `file` (if any), as TF Serving does on load."""
        if not os.path.isfile(file):
            return
        for record in tf.data.TFRecordDataset(file).take(1000):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.WhichOneof("log_type") == "predict_log":
                request = log.predict_log.request
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                self.call(request.model_spec.signature_name or DEFAULT_SIGNATURE, inputs)

    def signature(self, name: str) -> str:
        """`name` (empty: the default) once checked to be a signature of this version."""
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise RequestError(f'Serving signature name: "{name}" not found in signature def')
        return name

    def call(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        return {name: value.numpy() for name, value in outputs.items()}


def folder_signature(path: str) -> tuple:
    """`(relative path, size, mtime)` of every file under `path`, sorted."""
    files = []
    for root, _, names in os.walk(path):
        for name in names:
            file = os.path.join(root, name)
            try:
                stat = os.stat(file)
            except FileNotFoundError:  # removed while we walk: the next poll sees it
                continue
            files.append((os.path.relpath(file, path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(files))


class Model:
    """The loaded versions of one `ModelConfig`; `refresh` follows its base path."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.versions: dict[int, Version] = {}  # replaced whole, never mutated: thread safe
        self.errors: dict[int, str] = {}
        self._failed: dict[int, tuple] = {}  # the folder signature each failed load saw
        self._lock = threading.Lock()

    def _on_disk(self) -> list[int]:
        with os.scandir(self.config.base_path) as entries:
            return sorted(
                int(entry.name)
                for entry in entries
                if entry.name.isdigit()
                and os.path.isfile(os.path.join(entry.path, "saved_model.pb"))
            )

    def refresh(self) -> None:
        """Loads the versions the policy asks for that are on disk; drops the others."""
        with self._lock:
            config, on_disk, versions = self.config, self._on_disk(), dict(self.versions)

            def ready(number: int) -> bool:
                if number in versions:
                    return True
                path = os.path.join(config.base_path, str(number))
                signature = folder_signature(path)
                # A failed version is tried again once its folder changes (a copy that was
                # still going on, a replaced export); meanwhile its status shows the error.
                if self._failed.get(number) == signature:
                    return False
                try:
                    versions[number] = Version.load(path, number)
                except Exception as error:  # a bad export must not stop the server
                    self.errors[number] = f"{type(error).__name__}: {error}"
                    self._failed[number] = signature
                    logger.error("cannot load %s: %s", path, self.errors[number])
                    return False
                logger.info("loaded %s version %d", config.name, number)
                self.errors.pop(number, None)
                self._failed.pop(number, None)
                return True

            if config.version_policy == "all":
                keep = {n for n in on_disk if ready(n)}
            elif config.version_policy == "specific":
                keep = {n for n in config.versions if n in on_disk and ready(n)}
            else:  # the newest that load; an older one keeps serving if a newer one fails
                keep = set()
                for number in reversed(on_disk):
                    if len(keep) == config.num_versions:
                        break
                    keep |= {number} if ready(number) else set()
                keep |= {n for n in config.versions if n in on_disk and ready(n)}
            self.versions = {n: versions[n] for n in sorted(keep)}
            self.errors = {n: e for n, e in self.errors.items() if n in on_disk}
            self._failed = {n: f for n, f in self._failed.items() if n in on_disk}

    def number(self, version: int | str | None, label: str | None) -> int | None:
        """The version a request names (`None`: the newest)."""
        if label is None:
            return None if version is None else int(version)
        if label not in self.config.labels:
            raise RequestError(f"Unrecognized servable version label: {label}", 404)
        return self.config.labels[label]

    def lookup(self, version: int | str | None, label: str | None) -> Version:
        """The loaded version a request names; `RequestError` (404) when it is not served."""
        number, versions, name = self.number(version, label), self.versions, self.config.name
        if number is None:
            if not versions:
                raise RequestError(f"Servable not found for request: Latest({name})", 404)
            return versions[max(versions)]
        if number not in versions:
            raise RequestError(f"Servable not found for request: Specific({name}, {number})", 404)
        return versions[number]

    def states(self, version: int | str | None, label: str | None) -> dict[int, tuple[str, str]]:
        """`{version: (state, error message)}` of every version, or of the one named."""
        states = {n: ("AVAILABLE", "") for n in self.versions}
        states.update({n: ("END", e) for n, e in self.errors.items()})
        number = self.number(version, label)
        if number is None:
            if not states:
                raise RequestError(f"Could not find any versions of model {self.config.name}", 404)
            return states
        if number not in states:
            raise RequestError(f"Could not find version {number} of model {self.config.name}", 404)
        return {number: states[number]}
