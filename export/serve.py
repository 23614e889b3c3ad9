"""A local drop-in for TensorFlow Serving: its REST API v1 and gRPC API on exported SavedModels.

The TensorFlow Serving binary is not on the package registries, so this serves the same
`<base_path>/<version>/` folders over the same URLs (starlette + uvicorn) and, with
`grpc_port`, the same gRPC services (`export/grpc_service.py`):

    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            model status
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   signature defs
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict    `instances` or `inputs`
    POST /v1/models/<name>[...]:classify | :regress              `examples` (one text input)
    GET  /healthz                                                200 once every model serves
    GET  /monitoring/prometheus/metrics                          with `monitoring_path`

Each model serves the versions of its policy (`export/registry.py`); a poll thread loads
new version folders as they appear (and drops superseded ones), replaying each version's
`assets.extra/tf_serving_warmup_requests` before serving it. A version that fails to load
keeps its error in the model status (state `END`) while the previous version serves, and is
loaded again at the first poll after its folder changes. `reload` replaces the model list
(gRPC `HandleReloadConfigRequest`, a polled `--model_config_file`). With `enable_batching`,
concurrent requests to one signature are merged into batches of up to `max_batch_size`
rows, waiting at most `batch_timeout_micros` for more (TF Serving's `--enable_batching`).
Every request is refused with a 4xx `{"error": ...}` (gRPC: TF Serving's status code and
message) when it is malformed or too large, and the server keeps serving. `stop` drains
the requests in flight.

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

import asyncio
import json
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Sequence

import tensorflow as tf
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from export import rest_json
from export.batching import Batcher
from export.monitoring import Metrics
from export.registry import DEFAULT_SIGNATURE, WARMUP_FILE, Model, ModelConfig, Version
from export.rest_json import RequestError

__all__ = ["DEFAULT_SIGNATURE", "WARMUP_FILE", "ModelConfig", "ModelServer"]
logger = logging.getLogger("tfllm.serve")
_PATH = re.compile(
    r"(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>predict|classify|regress)|/(?P<metadata>metadata))?"
)


def _json(content: dict, status: int = 200) -> Response:
    # TF Serving writes NaN and Infinity as such; starlette's JSONResponse refuses them.
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    return Response(body.encode("utf-8"), status, media_type="application/json")


class ModelServer:
    """Serves `ModelConfig`s over the TF Serving REST and gRPC APIs (see the module docstring).

    Args:
        models: the models to serve (distinct names).
        enable_batching: merge concurrent requests into batches.
        max_batch_size: most rows in one request, and in one merged batch.
        batch_timeout_micros: longest a request waits for others to join its batch.
        num_batch_threads: batches of one signature that may run at once.
        poll_seconds: how often the base paths are checked for new versions (`None`:
            only at start and `reload`).
        max_body_bytes: largest request body (REST: HTTP 413; gRPC: message size).
        monitoring_path: serve Prometheus metrics at this URL path (`None`: off).
        rest_timeout_s: a REST request running longer gets HTTP 504 (`None`: no limit).
    """

    def __init__(
        self,
        models: Sequence[ModelConfig],
        *,
        enable_batching: bool = False,
        max_batch_size: int = 128,
        batch_timeout_micros: int = 2000,
        num_batch_threads: int = 2,
        poll_seconds: float | None = 2.0,
        max_body_bytes: int = 16 << 20,
        monitoring_path: str | None = None,
        rest_timeout_s: float | None = None,
    ):
        for argument, value in (
            ("max_batch_size", max_batch_size),
            ("batch_timeout_micros", batch_timeout_micros + 1),
            ("num_batch_threads", num_batch_threads),
            ("poll_seconds", 1 if poll_seconds is None else poll_seconds),
            ("max_body_bytes", max_body_bytes),
            ("rest_timeout_s", 1 if rest_timeout_s is None else rest_timeout_s),
        ):
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"`{argument}` must be positive. Received: {value!r}")
        if monitoring_path is not None and not str(monitoring_path).startswith("/"):
            raise ValueError(
                f"`monitoring_path` must start with '/'. Received: {monitoring_path!r}"
            )
        self.enable_batching, self.max_batch_size = enable_batching, max_batch_size
        self.batch_timeout_s, self.num_batch_threads = batch_timeout_micros / 1e6, num_batch_threads
        self.poll_seconds, self.max_body_bytes = poll_seconds, max_body_bytes
        self.rest_timeout_s = rest_timeout_s
        self.url = self.grpc_address = None
        self.metrics = Metrics()
        self.models: dict[str, Model] = {}  # replaced whole by `reload`: thread safe
        self._reload_lock, self._batcher_lock = threading.Lock(), threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._uvicorn = self._grpc = self._batch_loop = None
        self.reload(models)
        routes = [
            Route("/v1/models/{path:path}", self._handle, methods=["GET", "POST"]),
            Route("/healthz", self._health, methods=["GET"]),
        ]
        if monitoring_path is not None:
            routes.append(Route(monitoring_path, self._metrics, methods=["GET"]))
        self.app = Starlette(
            routes=routes,
            exception_handlers={HTTPException: self._http_error, Exception: self._server_error},
        )

    def reload(self, models: Sequence[ModelConfig]) -> None:
        """Serves `models` instead of the current list, once their versions are loaded.

        A model whose name and base path stay keeps its loaded versions.
        """
        names = [config.name for config in models]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"`models` must be distinct non-empty names. Received: {names}")
        with self._reload_lock:
            served = {}
            for config in models:
                model = self.models.get(config.name)
                if model is None or model.config.base_path != config.base_path:
                    model = Model(config)
                model.config = config
                model.refresh()
                served[config.name] = model
            self.models = served

    def refresh(self) -> None:
        """Loads new versions and drops superseded ones, for every model (what polling does)."""
        for model in self.models.values():
            model.refresh()

    def model(self, name: str) -> Model:
        """The served model `name`; `RequestError` (404) when there is none."""
        model = self.models.get(name)
        if model is None:
            raise RequestError(f"Servable not found for request: Latest({name})", 404)
        return model

    def states(self) -> dict[str, dict[int, str]]:
        """`{model: {version: state}}` of every served model."""
        return {
            name: {n: state for n, (state, _) in model.states(None, None).items()}
            for name, model in self.models.items()
            if model.versions or model.errors
        }

    def run(self, name: str, version: Version, signature: str, inputs: dict) -> dict:
        """Calls a signature in this thread, through the batcher when batching is on."""
        batcher = self._batcher(name, version, signature, inputs)
        if batcher is None:
            return version.call(signature, inputs)
        return asyncio.run_coroutine_threadsafe(batcher(inputs), self._batch_loop).result()

    async def _call(self, name: str, version: Version, signature: str, inputs: dict) -> dict:
        batcher = self._batcher(name, version, signature, inputs)
        if batcher is None:
            return await run_in_threadpool(version.call, signature, inputs)
        future = asyncio.run_coroutine_threadsafe(batcher(inputs), self._batch_loop)
        return await asyncio.wrap_future(future)

    def _batcher(self, name: str, version: Version, signature: str, inputs: dict):
        # Merged requests are split by rows: every input must have the same batch dimension.
        specs = version.specs[signature].values()
        batchable = all(spec.shape.rank and spec.shape[0] is None for spec in specs)
        batchable = batchable and len({array.shape[0] for array in inputs.values()}) == 1
        if not (self.enable_batching and batchable):
            return None
        with self._batcher_lock:
            if self._batch_loop is None:
                self._batch_loop = asyncio.new_event_loop()
                self._batch_thread = threading.Thread(
                    target=self._batch_loop.run_forever, name="tfllm-batching", daemon=True
                )
                self._batch_thread.start()
            if signature not in version.batchers:

                def call(merged: dict) -> dict:
                    rows = len(next(iter(merged.values())))
                    self.metrics.record_batch((name, signature), rows)
                    return version.call(signature, merged)

                version.batchers[signature] = Batcher(
                    call, self.max_batch_size, self.batch_timeout_s, self.num_batch_threads
                )
            return version.batchers[signature]

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

    async def _metrics(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.render(self.states()), media_type="text/plain")

    async def _handle(self, request: Request) -> Response:
        labels = {"model": "", "version": "", "signature": "", "api": "status"}
        start, status = time.perf_counter(), "OK"
        try:
            answer = self._answer(request, labels)
            return _json(await asyncio.wait_for(answer, self.rest_timeout_s))
        except RequestError as error:
            status = error.code
            return _json({"error": str(error)}, error.status)
        except tf.errors.InvalidArgumentError as error:
            status = "INVALID_ARGUMENT"
            return _json({"error": error.message}, 400)
        except asyncio.TimeoutError:  # TimeoutError from Python 3.11
            status = "DEADLINE_EXCEEDED"
            return _json({"error": f"Request timed out after {self.rest_timeout_s} s."}, 504)
        finally:
            if labels["model"] in self.models:  # unknown models are not counted
                key = (labels["model"], labels["version"], labels["signature"], labels["api"])
                self.metrics.record_request((*key, "REST"), status, time.perf_counter() - start)

    async def _answer(self, request: Request, labels: dict) -> dict:
        match = _PATH.fullmatch(request.path_params["path"])
        if not match:
            raise RequestError(f"Malformed request: {request.method} {request.url.path}", 404)
        model, verb = self.model(match["name"]), match["verb"]
        labels["model"] = match["name"]
        if (request.method == "POST") != (verb is not None):
            raise RequestError(f"Method {request.method} is not allowed on {request.url.path}", 405)
        if verb is None and not match["metadata"]:
            return rest_json.status_json(model.states(match["version"], match["label"]))
        version = model.lookup(match["version"], match["label"])
        labels["version"], labels["api"] = str(version.number), verb or "metadata"
        if verb is None:
            spec = {"name": model.config.name, "signature_name": "", "version": str(version.number)}
            defs = rest_json.signature_defs(version.signature_def_map)
            return {"model_spec": spec, "metadata": {"signature_def": {"signature_def": defs}}}
        body = await self._body(request)
        signature = body.get("signature_name", DEFAULT_SIGNATURE)
        if not isinstance(signature, str):
            raise RequestError(f"'signature_name' must be a string. Received: {signature!r}")
        signature = labels["signature"] = version.signature(signature)
        specs = version.specs[signature]
        if verb == "predict":
            inputs, row_format = rest_json.parse_predict(body, specs, self.max_batch_size)
        else:
            inputs = rest_json.parse_examples(body, specs, self.max_batch_size)
        outputs = await self._call(model.config.name, version, signature, inputs)
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

    def _poll(self) -> None:
        while not self._stopping.wait(self.poll_seconds):
            try:
                self.refresh()
            except OSError as error:  # e.g. a base path removed: keep serving what is loaded
                logger.error("polling failed: %s", error)

    def _start_polling(self) -> None:
        polling = any(t.name == "tfllm-serve-poll" for t in self._threads)
        if self.poll_seconds is not None and not polling:
            poller = threading.Thread(target=self._poll, name="tfllm-serve-poll", daemon=True)
            poller.start()
            self._threads.append(poller)

    def _start_grpc(self, host: str, port: int) -> None:
        from export.grpc_service import GrpcServer  # grpcio is needed only with gRPC

        self._grpc = GrpcServer(self, max_message_bytes=self.max_body_bytes)
        self.grpc_address = self._grpc.start(host, port)

    def _server(self, host: str, port: int) -> tuple[uvicorn.Server, socket.socket]:
        sock = socket.create_server((host, port))
        # Accepted connections inherit it: without, the body write of each response waits
        # for the client's delayed ACK of its header write (Nagle's algorithm).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.url = f"http://{host}:{sock.getsockname()[1]}"
        # `log_config=None`: uvicorn must not replace the process's logging configuration
        # (its default `dictConfig` closes the existing handlers and binds new ones to the
        # `sys.stderr` of the moment); its loggers propagate to the application's.
        config = uvicorn.Config(
            self.app, log_config=None, log_level="warning", access_log=False, lifespan="off"
        )
        return uvicorn.Server(config), sock

    def start(
        self,
        host: str = "127.0.0.1",
        port: int | None = 0,
        grpc_port: int | None = None,
        timeout_s: float = 30.0,
    ) -> str | None:
        """Serves in background threads; returns the REST URL. Port 0 picks a free port;
        `port=None` serves no REST, `grpc_port=None` no gRPC (see `grpc_address`)."""
        self._start_polling()
        if grpc_port is not None:
            self._start_grpc(host, grpc_port)
        if port is None:
            return None
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

    def serve_forever(
        self, host: str = "127.0.0.1", port: int | None = 8501, grpc_port: int | None = None
    ) -> None:
        """Serves until SIGINT/SIGTERM, then answers the requests in flight and returns."""
        signalled = threading.Event()
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, lambda *_: signalled.set())
        self.start(host, port, grpc_port)
        logger.warning(
            "serving %s: REST %s, gRPC %s", sorted(self.models), self.url, self.grpc_address
        )
        try:
            while not signalled.wait(1.0):
                pass
        finally:
            self.stop()

    def stop(self, grace_s: float = 30.0) -> None:
        """Stops serving and polling; requests in flight get `grace_s` to finish."""
        self._stopping.set()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True  # uvicorn answers the requests it has, then ends
        if self._grpc is not None:
            self._grpc.stop(grace_s)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=grace_s)
        self._threads.clear()
        if self._batch_loop is not None:  # last: the requests drained above may need it
            loop, self._batch_loop = self._batch_loop, None
            loop.call_soon_threadsafe(loop.stop)
            self._batch_thread.join(timeout=grace_s)
            tasks = asyncio.all_tasks(loop)  # idle batchers' loops
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    def __enter__(self) -> "ModelServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
