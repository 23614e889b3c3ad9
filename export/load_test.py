"""A bounded load test: `count` calls on `concurrency` threads, latency and throughput.

The same runner times in-process signature calls and HTTP requests to a server, so the
two are measured alike. A call fails by raising; failures are counted, not retried.

Example:
>>> def call(i):  # an in-process call; a failure raises
...     if i % 10 == 9:
...         raise ValueError("bad input")
>>> result = run_load(call, count=100, concurrency=4)
>>> len(result.latencies_s), len(result.failures), result.percentile_ms(99) >= 0
(90, 10, True)
>>> bodies = [{"instances": ["a fine film"]}]
>>> def check(i, answer):  # raise unless `answer` is right for `bodies[i]`
...     assert len(answer["predictions"]) == 1
>>> call = http_caller("http://127.0.0.1:8501/v1/models/m:predict", bodies, check)
>>> result = run_load(call, count=1000, concurrency=32)  # needs a server # doctest: +SKIP
>>> result.requests_per_s, result.percentile_ms(50), result.percentile_ms(99)  # doctest: +SKIP

`grpc_caller` does the same over gRPC with `PredictRequest`s and `PredictionServiceStub`;
`compare_outputs` checks a served answer against in-process outputs.
"""

import base64
import dataclasses
import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from tensorflow_serving.apis import prediction_service_pb2_grpc


@dataclasses.dataclass
class LoadResult:
    """Latencies of the calls that succeeded, failure messages and the wall time."""

    latencies_s: list[float]
    failures: list[str]
    wall_s: float

    @property
    def requests_per_s(self) -> float:
        return (len(self.latencies_s) + len(self.failures)) / self.wall_s

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) * 1e3 if self.latencies_s else float("nan")


def run_load(call: Callable[[int], None], count: int, concurrency: int) -> LoadResult:
    """Runs `call(i)` for `i` in `range(count)`, at most `concurrency` at a time."""
    if count < 1 or concurrency < 1:
        raise ValueError(
            f"`count` and `concurrency` must be >= 1. Received: {count}, {concurrency}"
        )
    latencies, failures = [], []

    def timed(i: int) -> None:
        start = time.perf_counter()
        try:
            call(i)
        except Exception as error:  # a failed request is a result, not a crash
            failures.append(f"request {i}: {type(error).__name__}: {error}")
            return
        latencies.append(time.perf_counter() - start)  # list.append is thread safe

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(timed, range(count)))
    return LoadResult(latencies, failures, time.perf_counter() - start)


def http_caller(
    url: str, bodies: Sequence[dict], check: Callable[[int, dict], None]
) -> Callable[[int], None]:
    """`call(i)`: POSTs `bodies[i % len(bodies)]` as JSON to `url` over one kept-alive
    connection per thread; raises unless HTTP 200 and `check(i, answer)` passes."""
    parts = urllib.parse.urlsplit(url)
    encoded = [json.dumps(body).encode() for body in bodies]
    local = threading.local()

    def call(i: int) -> None:
        if getattr(local, "connection", None) is None:
            local.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            headers = {"Content-Type": "application/json"}
            local.connection.request("POST", parts.path, encoded[i % len(encoded)], headers)
            response = local.connection.getresponse()
            answer = json.loads(response.read())
        except (OSError, http.client.HTTPException):
            local.connection.close()
            local.connection = None
            raise
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {answer}")
        check(i, answer)

    return call


def grpc_caller(
    address: str, requests: Sequence, check: Callable[[int, object], None]
) -> Callable[[int], None]:
    """`call(i)`: sends `requests[i % len(requests)]` (`PredictRequest`s) to `Predict` at
    `address` (`host:port`) over one shared channel; raises unless `check(i, response)`
    passes (a gRPC error raises `grpc.RpcError`)."""

    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(address))

    def call(i: int) -> None:
        check(i, stub.Predict(requests[i % len(requests)], timeout=60))

    return call


def _from_json(value, dtype) -> np.ndarray:
    """A JSON output value as an array: text or `{"b64": ...}` as bytes for strings."""
    if np.dtype(dtype).kind != "O":
        return np.asarray(value)

    def decode(item):
        return item.encode() if isinstance(item, str) else base64.b64decode(item["b64"])

    return np.vectorize(decode, otypes=[object])(np.array(value, dtype=object))


def compare_outputs(expected: dict[str, np.ndarray], got: dict, tolerance: float = 1e-5) -> None:
    """Raises `ValueError` unless `got` (arrays, or REST JSON values) has the outputs of
    `expected` with identical strings and integers and floats within `tolerance`."""
    if sorted(got) != sorted(expected):
        raise ValueError(f"outputs {sorted(got)} != {sorted(expected)}")
    for name, want in expected.items():
        value, want = got[name], np.asarray(want)
        want = want.astype(object) if want.dtype.kind == "S" else want  # a bytes scalar
        if want.size == 0:  # JSON keeps no shape for an empty array
            if np.size(value):
                raise ValueError(f"{name}: {value!r} is not empty")
            continue
        if isinstance(value, bytes | np.generic):  # one row's scalar output, as an array
            value = np.asarray(value, dtype=object if isinstance(value, bytes) else None)
        value = value if isinstance(value, np.ndarray) else _from_json(value, want.dtype)
        if value.shape != want.shape:
            raise ValueError(f"{name}: shape {value.shape} != {want.shape}")
        if want.dtype.kind == "f":
            close = np.allclose(value, want, rtol=0, atol=tolerance, equal_nan=True)
        else:
            close = np.array_equal(value, want)
        if not close:
            raise ValueError(f"{name}: {value!r} != {want!r}")
