"""The local TF Serving REST server over real HTTP on 127.0.0.1, against numpy answers.

The served SavedModels are tiny `tf.Module`s with string-input signatures (a tf-text
tokenizer and a little arithmetic) in TF Serving's `<base>/<name>/<version>/` layout.
"""

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from export import registry
from export.saved_model import export_saved_model
from export.serve import WARMUP_FILE, ModelConfig, ModelServer
from tests.toy_model import LABELS, SENTENCES, expected_probabilities, write_toy_model
from tfllm.models import BertBackbone, TextClassifier
from tfllm.preprocessing import BertPreprocessor
from tfllm.tokenizers import WordPieceTokenizer


def http(url, body=None, method=None):
    """`(status, JSON)` of a request; `body` is a dict (sent as JSON) or raw bytes."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def server(toy_base):
    config = ModelConfig("toy", str(toy_base), versions=(1,), labels={"stable": 1})
    with ModelServer([config], max_batch_size=8) as server:
        server.start()
        yield server


def test_status_metadata_and_health(server, toy_base):
    status, body = http(f"{server.url}/v1/models/toy")
    assert status == 200
    assert body == {
        "model_version_status": [
            {
                "version": v,
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v in ("2", "1")
        ]
    }
    assert (
        http(f"{server.url}/v1/models/toy/labels/stable")[1]["model_version_status"][0]["version"]
        == "1"
    )
    status, body = http(f"{server.url}/v1/models/toy/versions/1/metadata")
    assert status == 200 and body["model_spec"] == {
        "name": "toy",
        "signature_name": "",
        "version": "1",
    }
    defs = body["metadata"]["signature_def"]["signature_def"]
    loaded = tf.saved_model.load(str(toy_base / "1")).signatures
    assert set(loaded) <= set(defs)
    text = defs["classify"]["inputs"]["text"]
    assert text["dtype"] == "DT_STRING" and text["tensor_shape"]["dim"] == [
        {"size": "-1", "name": ""}
    ]
    assert defs["classify"]["method_name"] == "tensorflow/serving/predict"
    assert defs["scale"]["outputs"]["y"]["dtype"] == "DT_FLOAT"
    assert http(f"{server.url}/healthz") == (200, {"status": "ok", "models": {"toy": [1, 2]}})


@pytest.mark.parametrize(
    ("route", "scale"), [("", 2.0), ("/versions/1", 1.0), ("/labels/stable", 1.0)]
)
def test_predict_row_and_columnar_formats(server, route, scale):
    url = f"{server.url}/v1/models/toy{route}:predict"
    expected = expected_probabilities(SENTENCES, scale)
    status, body = http(url, {"signature_name": "classify", "instances": SENTENCES})
    assert status == 200
    rows = body["predictions"]
    assert [row["labels"] for row in rows] == [LABELS[i] for i in expected.argmax(1)]
    assert [row["label_ids"] for row in rows] == expected.argmax(1).tolist()
    np.testing.assert_allclose([row["probabilities"] for row in rows], expected, atol=1e-6)
    # Columnar, through serving_default (the same function), with a {"b64": ...} input.
    inputs = [SENTENCES[0], {"b64": base64.b64encode(SENTENCES[2].encode()).decode()}]
    status, body = http(url, {"inputs": {"text": inputs}})
    assert status == 200 and body["outputs"]["labels"] == [
        LABELS[i] for i in expected[[0, 2]].argmax(1)
    ]
    np.testing.assert_allclose(body["outputs"]["probabilities"], expected[[0, 2]], atol=1e-6)


def test_json_as_tensorflow_serving_clients_send_it(server):
    """Bodies shaped as in the TF Serving REST docs: named row objects, bare columns, b64."""
    url = f"{server.url}/v1/models/toy/versions/2:predict"
    instances = [{"x": [1.5, -2.0], "k": 3}, {"x": [0.25, 4], "k": -1}]
    status, body = http(url, {"signature_name": "scale", "instances": instances})
    assert status == 200
    assert body == {"predictions": [[9.0, -12.0], [-0.5, -8.0]]}  # x * k * scale (2)
    status, body = http(url, {"signature_name": "scale", "inputs": {"x": [[0.1, 0.2]], "k": [1]}})
    assert body == {"outputs": [[0.2, 0.4]]}  # float32 printed as its shortest decimal
    raw = "tschüß".encode()
    request = {"signature_name": "echo", "instances": [{"b64": base64.b64encode(raw).decode()}]}
    status, body = http(url, request)
    assert status == 200
    (row,) = body["predictions"]  # `_bytes` outputs come back base64, as TF Serving does
    assert base64.b64decode(row["upper_bytes"]["b64"]) == "TSCHüß".encode() and row["rows"] == 1
    status, body = http(
        f"{server.url}/v1/models/toy:classify", {"examples": [{"text": "a b c d e"}]}
    )
    expected = expected_probabilities(["a b c d e"], 2.0)[0]
    assert status == 200 and [label for label, _ in body["result"][0]] == ["", ""]
    np.testing.assert_allclose([score for _, score in body["result"][0]], expected, atol=1e-6)
    examples = [{"text": ["a b c"]}, {}]  # a one-element list is a feature value too
    request = {"signature_name": "count", "context": {"text": "x y"}, "examples": examples[1:]}
    assert http(f"{server.url}/v1/models/toy:regress", request) == (200, {"result": [2.0]})
    request = {"signature_name": "count", "examples": examples[:1]}
    assert http(f"{server.url}/v1/models/toy:regress", request) == (200, {"result": [3.0]})


PREDICT = "/v1/models/toy:predict"


def scale_body(x, k):
    return {"signature_name": "scale", "inputs": {"x": x, "k": k}}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/models/toy:predict", b'{"instances": ["a"', 400),  # malformed JSON
        ("POST", "/v1/models/toy:predict", b'["a"]', 400),  # not an object
        ("POST", "/v1/models/toy:predict", {"instance": ["a"]}, 400),  # wrong field name
        ("POST", "/v1/models/toy:predict", {"instances": ["a"], "inputs": ["a"]}, 400),
        ("POST", "/v1/models/toy:predict", {"instances": [1, 2]}, 400),  # wrong dtype
        ("POST", "/v1/models/toy:predict", {"instances": [{"b64": "!!"}]}, 400),
        ("POST", PREDICT, scale_body([[1, "a"]], [1]), 400),  # wrong dtype in a list
        ("POST", PREDICT, scale_body([[1, 2]], [1.5]), 400),  # float for an int input
        ("POST", PREDICT, scale_body([[1], [2, 3]], [1]), 400),  # ragged
        ("POST", PREDICT, scale_body([1, 2], [1]), 400),  # wrong shape
        ("POST", "/v1/models/toy:predict", {"signature_name": "nope", "instances": ["a"]}, 400),
        ("POST", "/v1/models/toy:predict", {"instances": ["a"] * 9}, 400),  # > max_batch_size
        ("POST", PREDICT, {"inputs": {"text": ["a"] * 9}}, 400),
        ("POST", "/v1/models/toy:classify", {"examples": [{"txt": "a"}]}, 400),
        ("POST", "/v1/models/nope:predict", {"instances": ["a"]}, 404),
        ("POST", "/v1/models/toy/versions/7:predict", {"instances": ["a"]}, 404),
        ("GET", "/v1/models/toy/labels/canary", None, 404),
        ("GET", "/v1/models/toy:predict", None, 405),
        ("GET", "/v2/models", None, 404),
    ],
)
def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(server, method, path, body, status):
    got, answer = http(server.url + path, body, method)
    assert got == status and isinstance(answer["error"], str) and answer["error"]
    got, answer = http(f"{server.url}/v1/models/toy:predict", {"instances": ["a b"]})
    assert got == 200 and answer["predictions"][0]["labels"] == "short"


def test_oversized_body_gets_413(toy_base):
    with ModelServer([ModelConfig("toy", str(toy_base))], max_body_bytes=100) as server:
        server.start()
        status, body = http(f"{server.url}/v1/models/toy:predict", {"instances": ["a" * 200]})
        assert status == 413 and "exceeds" in body["error"]


def test_batching_merges_concurrent_requests(toy_base):
    config = ModelConfig("toy", str(toy_base))
    with ModelServer(
        [config], enable_batching=True, max_batch_size=4, batch_timeout_micros=500_000
    ) as server:
        server.start()
        url = f"{server.url}/v1/models/toy:predict"
        requests = [
            {"signature_name": "echo", "instances": [f"text {i}"] * (1 + i % 2)} for i in range(12)
        ]
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda body: http(url, body), requests))
        for i, (status, body) in enumerate(answers):
            assert status == 200 and len(body["predictions"]) == 1 + i % 2
            expected = f"TEXT {i}".encode()
            assert all(
                base64.b64decode(r["upper_bytes"]["b64"]) == expected for r in body["predictions"]
            )
        rows = [row["rows"] for _, body in answers for row in body["predictions"]]
        assert max(rows) > 2 and max(rows) <= 4  # merged, never past max_batch_size
        status, body = http(url, {"instances": SENTENCES})  # classify through the batcher
        np.testing.assert_allclose(
            [r["probabilities"] for r in body["predictions"]],
            expected_probabilities(SENTENCES, 2.0),
            atol=1e-6,
        )


def test_new_versions_are_loaded_and_superseded_ones_dropped(tmp_path):
    base = tmp_path / "toy"
    base.mkdir()
    write_toy_model(str(base), 1, 1.0)
    with ModelServer([ModelConfig("toy", str(base))], poll_seconds=0.1) as server:
        server.start()
        url = f"{server.url}/v1/models/toy:predict"
        # A version 5 whose warmup request fails to run: version 1 keeps serving.
        shutil.copytree(base / "1", base / ".tmp-5")
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="toy"))
        request.inputs["wrong_name"].CopyFrom(tf.make_tensor_proto(np.array([b"a"])))
        log = prediction_log_pb2.PredictionLog(predict_log={"request": request})
        (base / ".tmp-5" / "assets.extra").mkdir()
        with tf.io.TFRecordWriter(str(base / ".tmp-5" / WARMUP_FILE)) as writer:
            writer.write(log.SerializeToString())
        os.rename(base / ".tmp-5", base / "5")
        shutil.copytree(base / "1", base / ".tmp-3")
        os.rename(base / ".tmp-3", base / "3")
        deadline = time.monotonic() + 20
        while http(f"{server.url}/healthz")[1]["models"]["toy"] != [3]:
            assert time.monotonic() < deadline, "version 3 was not loaded"
            time.sleep(0.1)
        states = {
            s["version"]: s["state"]
            for s in http(f"{server.url}/v1/models/toy")[1]["model_version_status"]
        }
        assert states == {"5": "END", "3": "AVAILABLE"}
        status, body = http(f"{server.url}/v1/models/toy/versions/5")
        (failed,) = body["model_version_status"]
        assert status == 200 and failed["status"]["error_code"] == "UNKNOWN"
        assert "wrong_name" in failed["status"]["error_message"]
        assert http(url.replace(":predict", "/versions/1:predict"), {"instances": ["a"]})[0] == 404
        status, body = http(url, {"instances": SENTENCES[:1]})
        assert status == 200
        np.testing.assert_allclose(
            body["predictions"][0]["probabilities"],
            expected_probabilities(SENTENCES[:1], 1.0)[0],
            atol=1e-6,
        )


def test_a_failed_version_is_retried_when_its_folder_changes(tmp_path, monkeypatch):
    base, staging = tmp_path / "toy", tmp_path / "staging"
    base.mkdir()
    staging.mkdir()
    write_toy_model(str(base), 1, 1.0)
    write_toy_model(str(staging), 2, 2.0)
    # Version 2 half copied: its graph is there, its variables are not yet.
    shutil.copytree(staging / "2", base / "2", ignore=shutil.ignore_patterns("variables"))
    loads = []
    load = registry.Version.load
    monkeypatch.setattr(
        registry.Version, "load", classmethod(lambda cls, p, n: loads.append(n) or load(p, n))
    )
    url = None

    def states():
        body = http(f"{url}/v1/models/toy")[1]
        return {
            s["version"]: (s["state"], s["status"]["error_message"])
            for s in body["model_version_status"]
        }

    def scale_served():
        body = http(
            f"{url}/v1/models/toy:predict",
            {"signature_name": "scale", "instances": [{"x": [1.0, 0.0], "k": 1}]},
        )[1]
        return body["predictions"][0][0]

    with ModelServer([ModelConfig("toy", str(base))], poll_seconds=0.05) as server:
        url = server.start()
        state, error = states()["2"]
        assert state == "END" and error  # the failure is reported ...
        assert scale_served() == 1.0  # ... and version 1 keeps serving
        time.sleep(0.5)  # ten polls of an unchanged folder: no new attempt
        assert loads.count(2) == 1
        os.rename(staging / "2" / "variables", base / "2" / "variables")  # the copy ends
        deadline = time.monotonic() + 20
        while http(f"{url}/healthz")[1]["models"]["toy"] != [2]:
            assert time.monotonic() < deadline, "version 2 was not loaded again"
            time.sleep(0.05)
        assert states() == {"2": ("AVAILABLE", "")}
        assert scale_served() == 2.0
        assert loads.count(2) == 2


def test_tools_serve_command(toy_base, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "tools.serve", f"--model=toy={toy_base}:1", "--port=0"]
    command.append(f"--rest_api_port={port}")
    log = tmp_path / "serve.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(command, stderr=stderr, cwd=Path(__file__).parents[1])
    try:
        deadline = time.monotonic() + 120  # a loaded 2-core machine: TF imports slowly
        while True:
            try:
                if http(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                    break
            except OSError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "tools.serve did not start"
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/v1/models/toy/versions/1:predict"
        status, body = http(url, {"instances": ["a"]})
        assert status == 200 and body["predictions"][0]["labels"] == "short"
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode in (0, -15)
    assert "loaded toy version 1" in log.read_text()


def test_serves_a_tfllm_export(tmp_path):
    """A real `export_saved_model` classifier answers over HTTP as the in-process model."""
    vocabulary = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *["a", "fine", "film", "good", "bad", "plot"],
    ]
    tokenizer = WordPieceTokenizer(vocabulary)
    backbone = BertBackbone.from_preset("bert_tiny", vocabulary_size=len(vocabulary))
    model = TextClassifier(backbone, num_classes=3, dropout=0.0)
    names = ["negative", "neutral", "positive"]
    export_saved_model(
        model, tmp_path, "sentiment", tokenizer=tokenizer, sequence_length=16,
        label_names=names, validate=False,
    )  # fmt: skip
    texts = ["a fine film", "bad plot", "Good, GOOD film!", "unknown words here"]
    logits = model(BertPreprocessor(tokenizer, 16)(tf.constant(texts)), training=False)
    expected = tf.nn.softmax(logits).numpy()
    with ModelServer([ModelConfig("sentiment", str(tmp_path / "sentiment"))]) as server:
        server.start()
        url = f"{server.url}/v1/models/sentiment"
        status, body = http(f"{url}/metadata")
        assert status == 200 and {"classify", "embed", "serving_default"} <= set(
            body["metadata"]["signature_def"]["signature_def"]
        )
        status, body = http(f"{url}:predict", {"instances": texts})  # serving_default
        assert status == 200
        assert [row["labels"] for row in body["predictions"]] == [
            names[i] for i in expected.argmax(1)
        ]
        assert [row["label_ids"] for row in body["predictions"]] == expected.argmax(1).tolist()
        np.testing.assert_allclose(
            [row["probabilities"] for row in body["predictions"]], expected, atol=1e-5
        )
        status, body = http(f"{url}:classify", {"examples": [{"text": t} for t in texts]})
        scores = [[score for _, score in pairs] for pairs in body["result"]]
        assert status == 200
        np.testing.assert_allclose(scores, expected, atol=1e-5)
        assert [[label for label, _ in pairs] for pairs in body["result"]] == [names] * len(texts)
