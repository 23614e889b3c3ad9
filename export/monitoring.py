"""Prometheus text metrics of the model server, under TF Serving's metric names.

`Metrics` counts requests and their latencies (per model, version, signature, API and
entry point: `REST` or `GRPC`) and merged batch sizes; `render` writes them with the
served models' version states in the Prometheus text format (version 0.0.4) that TF
Serving's `--monitoring_config_file` exposes at `/monitoring/prometheus/metrics`.
`parse_monitoring_config` reads that file (a `MonitoringConfig` text proto).

Example:
>>> metrics = Metrics()
>>> metrics.record_request(("toy", "2", "classify", "predict", "REST"), "OK", 0.0021)
>>> metrics.record_batch(("toy", "classify"), 3)
>>> text = metrics.render({"toy": {2: "AVAILABLE"}})
>>> count = text.splitlines()[1]  # one request, answered OK
>>> count.split("{")[0], count.split(",")[-3:]
(':tensorflow:serving:request_count', ['API="predict"', 'entrypoint="REST"', 'status="OK"} 1'])
>>> parse_monitoring_config('prometheus_config { enable: true path: "/metrics" }')
'/metrics'
"""

import bisect
import threading
from collections import defaultdict

from export.text_proto import message_class, parse

PATH = "/monitoring/prometheus/metrics"
PREFIX = ":tensorflow:serving:"
REQUEST_LABELS = ("model_name", "model_version", "signature_name", "API", "entrypoint")
LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33))  # 10 µs .. ~1.5e9 µs, as TF Serving
BATCH_BUCKETS = tuple(2**i for i in range(15))


def parse_monitoring_config(text: str) -> str | None:
    """The metrics path a `MonitoringConfig` text proto enables (`None`: disabled).

    Raises `ValueError` naming the line it could not parse.
    """
    message_class("PrometheusConfig", {"enable": "bool", "path": "string"})
    config_class = message_class("MonitoringConfig", {"prometheus_config": "PrometheusConfig"})
    prometheus = parse(text, config_class(), "monitoring config").prometheus_config
    return (prometheus.path or PATH) if prometheus.enable else None


def _labels(names, values) -> str:
    def escape(value) -> str:
        return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return ",".join(f'{n}="{escape(v)}"' for n, v in zip(names, values, strict=True))


class _Histogram:
    def __init__(self, buckets):
        self.buckets, self.counts, self.sum = buckets, [0] * (len(buckets) + 1), 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> list[str]:
        lines, total = [], 0
        for bound, count in zip([*self.buckets, "+Inf"], self.counts, strict=True):
            total += count
            le = bound if bound == "+Inf" else f"{bound:.6g}"
            lines.append(f'{name}_bucket{{{labels},le="{le}"}} {total}')
        lines.append(f"{name}_sum{{{labels}}} {self.sum:.6g}")
        return [*lines, f"{name}_count{{{labels}}} {total}"]


class Metrics:
    """Thread-safe request and batch metrics (see the module docstring)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = defaultdict(int)  # (*request labels, status) -> requests
        self._latency = defaultdict(lambda: _Histogram(LATENCY_BUCKETS_US))
        self._batches = defaultdict(lambda: _Histogram(BATCH_BUCKETS))

    def record_request(self, labels: tuple, status: str, seconds: float) -> None:
        """One request: `labels` as `REQUEST_LABELS`, its status code name, its latency."""
        with self._lock:
            self._counts[(*labels, status)] += 1
            self._latency[labels].observe(seconds * 1e6)

    def record_batch(self, labels: tuple, size: int) -> None:
        """One merged batch of `size` rows; `labels` are `(model_name, signature_name)`."""
        with self._lock:
            self._batches[labels].observe(size)

    def render(self, states: dict[str, dict[int, str]]) -> str:
        """The Prometheus text of every metric; `states`: `{model: {version: state}}`."""
        count, latency = PREFIX + "request_count", PREFIX + "request_latency"
        batch, state = PREFIX + "batching_session:processed_batch_size", PREFIX + "model_state"
        lines = [f"# TYPE {count} counter"]
        with self._lock:
            for key, value in sorted(self._counts.items()):
                lines.append(f"{count}{{{_labels((*REQUEST_LABELS, 'status'), key)}}} {value}")
            lines.append(f"# TYPE {latency} histogram")
            for key, histogram in sorted(self._latency.items()):
                lines += histogram.lines(latency, _labels(REQUEST_LABELS, key))
            lines.append(f"# TYPE {batch} histogram")
            for key, histogram in sorted(self._batches.items()):
                lines += histogram.lines(batch, _labels(("model_name", "signature_name"), key))
        lines.append(f"# TYPE {state} gauge")
        for model, versions in sorted(states.items()):
            for version, name in sorted(versions.items()):
                labels = _labels(("model_name", "model_version", "state"), (model, version, name))
                lines.append(f"{state}{{{labels}}} 1")
        return "\n".join(lines) + "\n"
