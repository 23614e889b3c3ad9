"""Running the local TF Serving as `tensorflow_model_server`: flags, config files,
Prometheus metrics, load across REST and gRPC, versions appearing or broken mid-load,
SIGTERM draining requests in flight. All on 127.0.0.1, bounded in count and time.
"""

import io
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from export.load_test import grpc_caller, http_caller, run_load
from export.monitoring import PATH
from export.serve import ModelConfig, ModelServer
from tests.test_grpc_serve import predict_request
from tests.test_serve import http
from tests.toy_model import LABELS, SENTENCES, expected_probabilities, write_toy_model
from tools import serve as serve_tool


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metric(text: str, name: str, **labels) -> float:
    """The value of the sample `name{labels...}` (labels given must match; others any)."""
    for line in text.splitlines():
        match = re.fullmatch(r"([^{ ]+)\{(.*)\} (\S+)", line)
        if match and match[1] == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match[2]))
            if all(found.get(k) == str(v) for k, v in labels.items()):
                return float(match[3])
    raise AssertionError(f"no sample {name} {labels} in:\n{text}")


def test_prometheus_metrics_count_requests_latency_batches_and_states(toy_base):
    configs = [ModelConfig("toy", str(toy_base), versions=(1,))]
    with ModelServer(configs, enable_batching=True, monitoring_path=PATH) as server:
        server.start(grpc_port=0)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(server.grpc_address)
        )
        for _ in range(3):
            assert http(f"{server.url}/v1/models/toy:predict", {"instances": ["a b"]})[0] == 200
        stub.Predict(predict_request({"text": ["a", "b c"]}, version=1), timeout=30)
        with pytest.raises(grpc.RpcError):
            stub.Predict(predict_request({"txt": ["a"]}), timeout=30)
        with urllib.request.urlopen(server.url + PATH, timeout=30) as response:
            assert response.headers["content-type"].startswith("text/plain")
            text = response.read().decode()
    count, prefix = ":tensorflow:serving:request_count", ":tensorflow:serving:"
    rest = {"model_name": "toy", "model_version": 2, "signature_name": "serving_default"}
    assert metric(text, count, **rest, API="predict", entrypoint="REST", status="OK") == 3
    grpc_ok = {**rest, "model_version": 1, "API": "predict", "entrypoint": "GRPC"}
    assert metric(text, count, **grpc_ok, status="OK") == 1
    bad = {"model_version": 2, "entrypoint": "GRPC", "status": "INVALID_ARGUMENT"}
    assert metric(text, count, model_name="toy", **bad) == 1
    latency = prefix + "request_latency"
    rest_latency = {**rest, "API": "predict", "entrypoint": "REST"}
    assert metric(text, latency + "_count", **rest_latency) == 3
    assert metric(text, latency + "_bucket", **rest_latency, le="+Inf") == 3
    assert 0 < metric(text, latency + "_sum", **rest_latency) < 3 * 30e6  # microseconds
    batch = prefix + "batching_session:processed_batch_size"
    assert metric(text, batch + "_count", model_name="toy", signature_name="serving_default") == 4
    assert metric(text, batch + "_sum", model_name="toy", signature_name="serving_default") == 5
    for version in (1, 2):
        assert metric(text, prefix + "model_state", model_version=version, state="AVAILABLE") == 1


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("files", "flags", "message"),
    [
        ({}, ["--tensorflow_session_parallelism=2"], "unsupported flag '--tensorflow_session_parallelism=2'"),  # noqa: E501
        ({"m": "model_config_list {\n  config {\n    name: 'x' base_pth: 'y'\n"}, ["--model_config_file={m}"],  # noqa: E501
         "--model_config_file={m}: Malformed model config, line 3 (\"name: 'x' base_pth: 'y'\")"),  # noqa: E501
        ({"m": "model_config_list { config { name: 'x' base_path: '/no/such/dir' } }"},
         ["--model_config_file={m}"], "Model 'x': `base_path` must be a folder"),
        ({"b": "max_batch_size { value: 8 }\nmax_enqueued_batches { value: 4 }"},
         ["--model_base_path={base}", "--batching_parameters_file={b}"],
         "Batching parameter `max_enqueued_batches` is not supported"),
        ({"o": "prometheus_config {\n  enable: yes\n}"},
         ["--model_base_path={base}", "--monitoring_config_file={o}"],
         "Malformed monitoring config, line 2 ('enable: yes')"),
        ({}, ["--model_base_path={base}", "--enable_batching=maybe"], "expected true or false"),
        ({}, [], "give --model_base_path"),
    ],
)  # fmt: skip
def test_bad_flags_and_config_files_fail_at_start(
    tmp_path, capsys, toy_base, files, flags, message
):  # noqa: E501
    paths = {key: write(tmp_path / key, text) for key, text in files.items()}
    flags = [flag.format(base=toy_base, **paths) for flag in flags]
    with pytest.raises(SystemExit) as exit_:
        serve_tool.main(flags)
    assert exit_.value.code == 2
    assert message.format(**paths) in capsys.readouterr().err


@pytest.mark.slow
def test_tools_serve_flags_config_files_and_sigterm_drain(toy_base, tmp_path):
    """`python -m tools.serve` with TF Serving's flags and files; SIGTERM while a REST and
    a gRPC request wait in a batch: both are answered, then the process ends."""
    config = write(tmp_path / "models.config", f"""
        model_config_list {{
          config {{
            name: "toy"  base_path: "{toy_base}"  model_platform: "tensorflow"
            model_version_policy {{ specific {{ versions: 1 }} }}
          }}
          config {{ name: "latest" base_path: "{toy_base}" }}
        }}""")  # fmt: skip
    batching = write(tmp_path / "batching.txt", "batch_timeout_micros { value: 3000000 }")
    monitoring = write(tmp_path / "monitoring.txt", "prometheus_config { enable: true }")
    grpc_port, rest_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "tools.serve", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
        f"--model_config_file={config}", "--enable_batching=true",
        f"--batching_parameters_file={batching}", f"--monitoring_config_file={monitoring}",
        "--file_system_poll_wait_seconds=1", "--rest_api_timeout_in_ms=60000",
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(command, stderr=stderr, cwd=Path(__file__).parents[1])
    url = f"http://127.0.0.1:{rest_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if http(f"{url}/healthz")[0] == 200:
                    break
            except OSError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "tools.serve did not start"
                time.sleep(0.2)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        )
        with ThreadPoolExecutor(2) as pool:  # both wait up to 3 s for their batch to fill
            rest = pool.submit(http, f"{url}/v1/models/toy:predict", {"instances": SENTENCES})
            request = predict_request({"text": SENTENCES}, "latest")
            answer = pool.submit(stub.Predict, request, timeout=60)
            time.sleep(1.0)
            process.send_signal(signal.SIGTERM)
            status, body = rest.result()
            response = answer.result()
        assert status == 200
        np.testing.assert_allclose(
            [row["probabilities"] for row in body["predictions"]],
            expected_probabilities(SENTENCES, 1.0),  # policy "specific": version 1
            atol=1e-6,
        )
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs["probabilities"]),
            expected_probabilities(SENTENCES, 2.0),
            atol=1e-6,
        )
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "loaded toy version 1" in log.read_text()


@pytest.mark.slow
def test_load_across_rest_and_grpc_with_versions_appearing_and_broken(tmp_path):
    """1,000 (or more) requests, 32 in flight, half REST and half gRPC, while version 2
    appears: none fails and each answer equals its version's numpy answer. Then a corrupt version
    3 is reported in the status while version 2 serves, and is loaded once repaired."""
    base = tmp_path / "toy"
    base.mkdir()
    write_toy_model(str(base), 1, 1.0)
    texts = [" ".join(["w"] * (i % 7)) for i in range(50)]
    answers = {scale: expected_probabilities(texts, scale) for scale in (1.0, 2.0)}
    configs = [ModelConfig("toy", str(base))]
    with ModelServer(configs, enable_batching=True, poll_seconds=0.2) as server:
        server.start(grpc_port=0)
        seen = set()

        def check_rest(i, answer):
            (row,) = answer["predictions"]
            scale = min(
                answers, key=lambda s: np.abs(answers[s][i % 50] - row["probabilities"]).max()
            )  # noqa: E501
            np.testing.assert_allclose(row["probabilities"], answers[scale][i % 50], atol=1e-6)
            assert row["labels"] == LABELS[answers[scale][i % 50].argmax()]

        def check_grpc(i, response):
            version = response.model_spec.version.value
            seen.add(version)
            probabilities = tf.make_ndarray(response.outputs["probabilities"])[0]
            np.testing.assert_allclose(probabilities, answers[float(version)][i % 50], atol=1e-6)

        rest = http_caller(
            f"{server.url}/v1/models/toy:predict", [{"instances": [t]} for t in texts], check_rest
        )
        requests = [predict_request({"text": [t]}) for t in texts]
        grpc_call = grpc_caller(server.grpc_address, requests, check_grpc)
        writer = threading.Thread(target=write_toy_model, args=(str(base), 2, 2.0))
        writer.start()  # version 2 appears while the requests go on
        results, deadline = [], time.monotonic() + 120
        while sum(len(r.latencies_s) for r in results) < 1000 or 2 not in seen:
            assert time.monotonic() < deadline, "version 2 was not served"
            results.append(run_load(lambda i: (rest if i % 2 else grpc_call)(i), 250, 32))
            assert not results[-1].failures, results[-1].failures[:3]
        writer.join()
        deadline = time.monotonic() + 30
        while sorted(server.models["toy"].versions) != [2]:
            assert time.monotonic() < deadline, "version 2 was not loaded"
            time.sleep(0.1)
        # A corrupt version: reported, while version 2 keeps serving; loaded once repaired.
        (base / ".tmp-3").mkdir()
        (base / ".tmp-3" / "saved_model.pb").write_bytes(b"not a SavedModel")
        os.rename(base / ".tmp-3", base / "3")
        models = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(server.grpc_address))
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "toy"
        deadline = time.monotonic() + 30
        while len(models.GetModelStatus(request, timeout=30).model_version_status) < 2:
            assert time.monotonic() < deadline, "version 3 was not tried"
            time.sleep(0.1)
        broken, serving = models.GetModelStatus(request, timeout=30).model_version_status
        assert (broken.version, broken.state, broken.status.error_code) == (3, 50, 2)  # END
        assert broken.status.error_message and (serving.version, serving.state) == (2, 30)
        grpc_call(0)  # checks the answer against version 2's
        shutil.rmtree(base / "3")
        write_toy_model(str(base), 3, 1.0)  # the repaired export
        deadline = time.monotonic() + 30
        while sorted(server.models["toy"].versions) != [3]:
            assert time.monotonic() < deadline, "version 3 was not loaded once repaired"
            time.sleep(0.1)


def test_version_policies_and_rest_timeout(toy_base):
    from export.registry import Model

    def served(**policy) -> list[int]:
        model = Model(ModelConfig("toy", str(toy_base), **policy))
        model.refresh()
        return sorted(model.versions)

    assert served() == [2]
    assert served(num_versions=2) == served(version_policy="all") == [1, 2]
    assert served(version_policy="specific", versions=(1, 5)) == [1]  # 5 is not on disk
    with pytest.raises(ValueError, match="`version_policy` must be one of"):
        ModelConfig("toy", str(toy_base), version_policy="newest")
    slow = {"enable_batching": True, "batch_timeout_micros": 3_000_000, "rest_timeout_s": 0.2}
    with ModelServer([ModelConfig("toy", str(toy_base))], **slow) as server:
        server.start()
        status, body = http(f"{server.url}/v1/models/toy:predict", {"instances": ["a"]})
        assert status == 504 and "timed out" in body["error"]


def test_the_server_leaves_the_logging_configuration_alone(tmp_path, capsys):
    """uvicorn's default config would bind its loggers to the `sys.stderr` of the moment (a
    test's capture, closed afterwards) and close the process's handlers."""
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    try:
        handlers = {name: list(logging.getLogger(name).handlers) for name in ("", "uvicorn.error")}
        server = ModelServer([ModelConfig("empty", str(tmp_path))])
        server.start("127.0.0.1", 0)
        server.stop()
        after = {name: list(logging.getLogger(name).handlers) for name in handlers}
        assert after == handlers and not handler.stream.closed
    finally:
        root.removeHandler(handler)
