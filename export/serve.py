"""A local server for exported SavedModels that speaks the TensorFlow Serving REST API v1.

The TensorFlow Serving binary is not on the package registries, so this serves the same
`<base_path>/<version>/` folders over the same URLs (starlette + uvicorn):

    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            model status
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   signature defs
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict    `instances` or `inputs`
    POST /v1/models/<name>[...]:classify | :regress              `examples` (one text input)
    GET  /healthz                                                200 once every model serves

Each model serves its newest version plus pinned `versions`; a poll thread loads new
version folders as they appear (and drops superseded ones), replaying each version's
`assets.extra/tf_serving_warmup_requests` before serving it. A version that fails to load
keeps its error in the model status (state `END`) while the previous version serves, and is
loaded again at the first poll after its folder changes (files added, resized or touched:
a copy that was still going on, a replaced export). With `enable_batching`,
concurrent requests to one signature are merged into batches of up to `max_batch_size`
rows, waiting at most `batch_timeout_micros` for more (TF Serving's `--enable_batching`).
Every request is refused with a 4xx `{"error": ...}` when it is malformed or too large,
and the server keeps serving. `tensorflow_text` is imported here: exported models use its
ops, which must be registered before `tf.saved_model.load`.

Example:
>>> import json
>>> import urllib.request
>>> class Doubler(tf.Module):  # any SavedModel; `export_saved_model` writes tfllm's
...     @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
...     def double(self, x):
...         return {"y": 2 * x}
>>> module = Doubler()
>>> tf.saved_model.save(module, "exports/doubler/1", signatures={"serving_default": module.double})
>>> with ModelServer([ModelConfig("doubler", "exports/doubler")]) as server:
...     url = server.start()  # http://127.0.0.1:<free port>
...     body = json.dumps({"instances": [1.0, 2.5]}).encode()
...     request = urllib.request.Request(f"{url}/v1/models/doubler:predict", body)
...     json.loads(urllib.request.urlopen(request).read())
{'predictions': [2.0, 5.0]}
"""

import dataclasses
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the ops that exported tokenizers use)
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tensorflow_serving.apis import prediction_log_pb2

from export import rest_json
from export.batching import Batcher
from export.rest_json import RequestError

logger = logging.getLogger("tfllm.serve")
DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_PATH = re.compile(
    r"(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>predict|classify|regress)|/(?P<metadata>metadata))?"
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One served model.

    Args:
        name: its URL name, `/v1/models/<name>`.
        base_path: the folder of numeric version folders (`<base_path>/<version>/`).
        versions: pinned versions served beside the newest one.
        labels: version labels for `/labels/<label>` URLs, e.g. `{"stable": 1}`.
    """

    name: str
    base_path: str
    versions: tuple[int, ...] = ()
    labels: Mapping[str, int] = dataclasses.field(default_factory=dict)

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


@dataclasses.dataclass
class _Version:
    """A loaded SavedModel version and what serving it needs."""

    number: int
    module: object  # the loaded object: keeps the signatures' variables alive
    signatures: dict
    specs: dict[str, dict[str, tf.TensorSpec]]
    signature_defs: dict
    batchers: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, path: str, number: int) -> "_Version":
        module = tf.saved_model.load(path)
        signatures = dict(module.signatures)
        specs = {key: fn.structured_input_signature[1] for key, fn in signatures.items()}
        version = cls(number, module, signatures, specs, rest_json.signature_defs(path))
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

    def call(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        return {name: value.numpy() for name, value in outputs.items()}


def _folder_signature(path: str) -> tuple:
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


class _Model:
    """The loaded versions of one `ModelConfig`; `refresh` follows its base path."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.versions: dict[int, _Version] = {}  # replaced whole, never mutated: thread safe
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
        """Loads the newest version (and pinned ones) on disk; drops the others."""
        with self._lock:
            on_disk, versions = self._on_disk(), dict(self.versions)

            def ready(number: int) -> bool:
                if number in versions:
                    return True
                path = os.path.join(self.config.base_path, str(number))
                signature = _folder_signature(path)
                # A failed version is tried again once its folder changes (a copy that was
                # still going on, a replaced export); meanwhile its status shows the error.
                if self._failed.get(number) == signature:
                    return False
                try:
                    versions[number] = _Version.load(path, number)
                except Exception as error:  # a bad export must not stop the server
                    self.errors[number] = f"{type(error).__name__}: {error}"
                    self._failed[number] = signature
                    logger.error("cannot load %s: %s", path, self.errors[number])
                    return False
                logger.info("loaded %s version %d", self.config.name, number)
                self.errors.pop(number, None)
                self._failed.pop(number, None)
                return True

            # The newest version that loads; an older one keeps serving if a newer one fails.
            newest = next((n for n in reversed(on_disk) if ready(n)), None)
            keep = {n for n in self.config.versions if n in on_disk and ready(n)}
            keep |= set() if newest is None else {newest}
            self.versions = {n: versions[n] for n in sorted(keep)}
            self.errors = {n: e for n, e in self.errors.items() if n in on_disk}
            self._failed = {n: f for n, f in self._failed.items() if n in on_disk}

    def _number(self, version: str | None, label: str | None) -> int | None:
        """The version a URL names (`None`: the newest)."""
        if label is None:
            return None if version is None else int(version)
        if label not in self.config.labels:
            raise RequestError(f"Unrecognized servable version label: {label}", 404)
        return self.config.labels[label]

    def lookup(self, version: str | None, label: str | None) -> _Version:
        """The loaded version a URL names; HTTP 404 when it is not served."""
        number, versions, name = self._number(version, label), self.versions, self.config.name
        if number is None:
            if not versions:
                raise RequestError(f"Servable not found for request: Latest({name})", 404)
            return versions[max(versions)]
        if number not in versions:
            raise RequestError(f"Servable not found for request: Specific({name}, {number})", 404)
        return versions[number]

    def status(self, version: str | None, label: str | None) -> dict:
        """GetModelStatusResponse JSON of every version, or of the one the URL names."""
        states = {n: ("AVAILABLE", "") for n in self.versions}
        states.update({n: ("END", e) for n, e in self.errors.items()})
        number = self._number(version, label)
        if number is not None:
            if number not in states:
                raise RequestError(
                    f"Could not find version {number} of model {self.config.name}", 404
                )
            states = {number: states[number]}
        return rest_json.status_json(states)


def _json(content: dict, status: int = 200) -> Response:
    # TF Serving writes NaN and Infinity as such; starlette's JSONResponse refuses them.
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    return Response(body.encode("utf-8"), status, media_type="application/json")


class ModelServer:
    """Serves `ModelConfig`s over the TF Serving REST API (see the module docstring).

    Args:
        models: the models to serve (distinct names).
        enable_batching: merge concurrent requests into batches.
        max_batch_size: most rows in one request, and in one merged batch.
        batch_timeout_micros: longest a request waits for others to join its batch.
        num_batch_threads: batches of one signature that may run at once.
        poll_seconds: how often the base paths are checked for new versions.
        max_body_bytes: largest request body; a larger one gets HTTP 413.
    """

    def __init__(
        self,
        models: Sequence[ModelConfig],
        *,
        enable_batching: bool = False,
        max_batch_size: int = 128,
        batch_timeout_micros: int = 2000,
        num_batch_threads: int = 2,
        poll_seconds: float = 2.0,
        max_body_bytes: int = 16 << 20,
    ):
        names = [config.name for config in models]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"`models` must be distinct non-empty names. Received: {names}")
        for argument, value in (
            ("max_batch_size", max_batch_size),
            ("batch_timeout_micros", batch_timeout_micros + 1),
            ("num_batch_threads", num_batch_threads),
            ("poll_seconds", poll_seconds),
            ("max_body_bytes", max_body_bytes),
        ):
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"`{argument}` must be positive. Received: {value!r}")
        self.models = {config.name: _Model(config) for config in models}
        self.enable_batching, self.max_batch_size = enable_batching, max_batch_size
        self.batch_timeout_s, self.num_batch_threads = batch_timeout_micros / 1e6, num_batch_threads
        self.poll_seconds, self.max_body_bytes = poll_seconds, max_body_bytes
        self.url = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._uvicorn = None
        self.refresh()
        self.app = Starlette(
            routes=[
                Route("/v1/models/{path:path}", self._handle, methods=["GET", "POST"]),
                Route("/healthz", self._health, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self._http_error, Exception: self._server_error},
        )

    def refresh(self) -> None:
        """Loads new versions and drops superseded ones, for every model (what polling does)."""
        for model in self.models.values():
            model.refresh()

    async def _http_error(self, request: Request, error: HTTPException) -> Response:
        return _json({"error": str(error.detail)}, error.status_code)

    async def _server_error(self, request: Request, error: Exception) -> Response:
        return _json({"error": f"{type(error).__name__}: {error}"}, 500)

    async def _health(self, request: Request) -> Response:
        versions = {name: sorted(model.versions) for name, model in self.models.items()}
        ok = all(versions.values())
        return _json(
            {"status": "ok" if ok else "unavailable", "models": versions}, 200 if ok else 503
        )

    async def _handle(self, request: Request) -> Response:
        try:
            return _json(await self._answer(request))
        except RequestError as error:
            return _json({"error": str(error)}, error.status)
        except tf.errors.InvalidArgumentError as error:
            return _json({"error": error.message}, 400)

    async def _answer(self, request: Request) -> dict:
        match = _PATH.fullmatch(request.path_params["path"])
        if not match:
            raise RequestError(f"Malformed request: {request.method} {request.url.path}", 404)
        if match["name"] not in self.models:
            raise RequestError(f"Servable not found for request: Latest({match['name']})", 404)
        model, verb = self.models[match["name"]], match["verb"]
        if (request.method == "POST") != (verb is not None):
            raise RequestError(f"Method {request.method} is not allowed on {request.url.path}", 405)
        if verb is None and not match["metadata"]:
            return model.status(match["version"], match["label"])
        version = model.lookup(match["version"], match["label"])
        if verb is None:
            spec = {"name": model.config.name, "signature_name": "", "version": str(version.number)}
            return {
                "model_spec": spec,
                "metadata": {"signature_def": {"signature_def": version.signature_defs}},
            }
        body = await self._body(request)
        signature = body.get("signature_name", DEFAULT_SIGNATURE)
        if not isinstance(signature, str) or signature not in version.signatures:
            raise RequestError(f'Serving signature name: "{signature}" not found in signature def')
        specs = version.specs[signature]
        if verb == "predict":
            inputs, row_format = rest_json.parse_predict(body, specs, self.max_batch_size)
        else:
            inputs = rest_json.parse_examples(body, specs, self.max_batch_size)
        outputs = await self._call(version, signature, inputs)
        if verb == "predict":
            return rest_json.format_predict(outputs, row_format)
        formatter = rest_json.format_classify if verb == "classify" else rest_json.format_regress
        return formatter(outputs)

    async def _body(self, request: Request) -> dict:
        length = request.headers.get("content-length", "0")
        if length.isdigit() and int(length) > self.max_body_bytes:
            raise RequestError(
                f"Request body of {length} bytes exceeds {self.max_body_bytes}.", 413
            )
        chunks, size = [], 0
        async for chunk in request.stream():  # never more than the limit in memory
            size += len(chunk)
            if size > self.max_body_bytes:
                raise RequestError(f"Request body exceeds {self.max_body_bytes} bytes.", 413)
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RequestError(f"JSON Parse error: {error}") from None
        if not isinstance(body, dict):
            raise RequestError("The request body must be a JSON object.")
        return body

    async def _call(self, version: _Version, signature: str, inputs: dict) -> dict:
        # Merged requests are split by rows: every input must have the same batch dimension.
        specs = version.specs[signature].values()
        batchable = all(spec.shape.rank and spec.shape[0] is None for spec in specs)
        batchable = batchable and len({array.shape[0] for array in inputs.values()}) == 1
        if not (self.enable_batching and batchable):
            return await run_in_threadpool(version.call, signature, inputs)
        if signature not in version.batchers:
            call = lambda merged: version.call(signature, merged)  # noqa: E731
            version.batchers[signature] = Batcher(
                call, self.max_batch_size, self.batch_timeout_s, self.num_batch_threads
            )
        return await version.batchers[signature](inputs)

    def _poll(self) -> None:
        while not self._stopping.wait(self.poll_seconds):
            try:
                self.refresh()
            except OSError as error:  # e.g. a base path removed: keep serving what is loaded
                logger.error("polling failed: %s", error)

    def _server(self, host: str, port: int) -> tuple[uvicorn.Server, socket.socket]:
        sock = socket.create_server((host, port))
        self.url = f"http://{host}:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        poller = threading.Thread(target=self._poll, name="tfllm-serve-poll", daemon=True)
        poller.start()
        self._threads.append(poller)
        return uvicorn.Server(config), sock

    def start(self, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 30.0) -> str:
        """Serves in background threads; returns the URL. `port=0` picks a free port."""
        self._uvicorn, sock = self._server(host, port)
        thread = threading.Thread(target=self._uvicorn.run, args=([sock],), daemon=True)
        thread.start()
        self._threads.append(thread)
        deadline = time.monotonic() + timeout_s
        while not self._uvicorn.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"The server did not start on {self.url}.")
            time.sleep(0.01)
        return self.url

    def serve_forever(self, host: str = "127.0.0.1", port: int = 8501) -> None:
        """Serves in this thread until SIGINT/SIGTERM."""
        server, sock = self._server(host, port)
        logger.warning("serving %s at %s", sorted(self.models), self.url)
        try:
            server.run([sock])
        finally:
            self.stop()

    def stop(self) -> None:
        """Stops serving and polling."""
        self._stopping.set()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=10)
        self._threads.clear()

    def __enter__(self) -> "ModelServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
