"""Serving: req/s and p50/p99 latency over REST and gRPC against in-process calls.

    python -m tools.benchmark serve [--models minilm,gpt_tiny] [--requests 200]
        [--concurrency 32] [--rounds 3] [--write]

Each model is exported with `export_saved_model` and served by `python -m tools.serve`
subprocesses (without and with batching), queried over REST (`:predict`) and gRPC
(`PredictionServiceStub.Predict`) with 1 and `--concurrency` requests in flight; every
answer is checked against the in-process signature on the same text. See `section_body`.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from export.load_test import compare_outputs, grpc_caller, http_caller, run_load
from export.saved_model import export_saved_model
from pipelines.labelled import BUILTIN
from tfllm import assets
from tfllm.benchmarking import markdown_table
from tfllm.models import BertBackbone, CausalLM, GPTBackbone, TextClassifier
from tfllm.tokenizers import WordPieceTokenizer
from tools.benchmarks import header, write_section
from tools.benchmarks.train import comma_list

DESCRIPTION = "Served req/s and p50/p99 latency, REST and gRPC, against in-process calls."
SECTION = "## Serving: REST and gRPC against in-process calls"
MODELS = {
    "minilm": "all-MiniLM-L6-v2 `classify` (6L, d 384)",
    "bert_tiny": "bert_tiny `classify` (2L, d 64)",
    "gpt_tiny": "gpt_tiny `generate` (16 new tokens)",
}
IN_PROCESS = "in-process"
BATCHING = "max_batch_size { value: 32 } batch_timeout_micros { value: 2000 }"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", type=comma_list(tuple(MODELS)), default=["minilm", "gpt_tiny"])
    parser.add_argument("--sequence_length", type=int, default=128)
    parser.add_argument("--requests", type=int, default=200, help="requests per mode and round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)


def export_model(name: str, base: str, sequence_length: int) -> tuple[str, str]:
    """Exports `name` to `base/<name>/1`; returns its model folder and signature."""
    if name == "minilm":
        backbone = BertBackbone.from_huggingface(assets.minilm_path())
        tokenizer = WordPieceTokenizer.from_huggingface(assets.minilm_path())
    else:
        tokenizer = WordPieceTokenizer(assets.minilm_path() / "vocab.txt")
    size = {"vocabulary_size": len(tokenizer.vocabulary)}
    if name == "gpt_tiny":
        model = CausalLM(GPTBackbone.from_preset(name, max_sequence_length=128, **size))
        options, signature = {"max_new_tokens": 16}, "generate"
    else:
        backbone = backbone if name == "minilm" else BertBackbone.from_preset(name, **size)
        model = TextClassifier(backbone, num_classes=2, pooling="mean", dropout=0.0)
        options = {"sequence_length": sequence_length, "label_names": ["rotten", "fresh"]}
        signature = "classify"
    export_saved_model(model, base, name, tokenizer=tokenizer, validate=False, **options)
    return os.path.join(base, name), signature


def start_server(name: str, model_dir: str, extra: list[str]) -> tuple[subprocess.Popen, int, int]:
    """`python -m tools.serve` on free ports of 127.0.0.1, once it answers `/healthz`."""
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    command = [sys.executable, "-m", "tools.serve", f"--model_name={name}",
               f"--model_base_path={model_dir}", f"--port={ports[0]}",
               f"--rest_api_port={ports[1]}", *extra]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600  # a loaded shared machine starts TensorFlow slowly
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/healthz", timeout=5):
                return process, ports[0], ports[1]
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"tools.serve did not start: {command}")


def measure(model: str, texts: list[str], args: argparse.Namespace, base: str) -> dict:
    """`{(mode, in flight): [LoadResult per round]}` for one exported model."""
    model_dir, signature = export_model(model, base, args.sequence_length)
    function = tf.saved_model.load(os.path.join(model_dir, "1")).signatures[signature]
    expected = [
        {k: v.numpy()[0] for k, v in function(text=tf.constant([text])).items()} for text in texts
    ]

    def check_rest(i, answer):
        (row,) = answer["predictions"]
        compare_outputs(
            expected[i], row if len(expected[i]) > 1 else {next(iter(expected[i])): row}
        )

    def check_grpc(i, response):
        compare_outputs(
            expected[i], {k: tf.make_ndarray(v)[0] for k, v in response.outputs.items()}
        )

    def in_process(i):
        function(text=tf.constant(texts[i : i + 1]))

    bodies = [{"signature_name": signature, "instances": [text]} for text in texts]
    requests = []
    for text in texts:
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = model, signature
        request.inputs["text"].CopyFrom(tf.make_tensor_proto([text]))
        requests.append(request)
    with open(os.path.join(base, "batching.txt"), "w") as file:
        file.write(BATCHING)
    batching = ["--enable_batching", f"--batching_parameters_file={file.name}"]
    servers = {"": start_server(model, model_dir, [])}
    servers[" + batching"] = start_server(model, model_dir, batching)
    try:
        modes = {}
        for flight in (1, args.concurrency):
            modes[(IN_PROCESS, flight)] = in_process
            for suffix, (_, grpc_port, rest_port) in servers.items():
                url = f"http://127.0.0.1:{rest_port}/v1/models/{model}:predict"
                modes[("REST" + suffix, flight)] = http_caller(url, bodies, check_rest)
                address = f"127.0.0.1:{grpc_port}"
                modes[("gRPC" + suffix, flight)] = grpc_caller(address, requests, check_grpc)
        for mode, call in modes.items():  # warm up: threads, connections, graphs
            run_load(call, min(64, len(texts)), mode[1])
        results = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode, call in modes.items():
                results[mode].append(run_load(call, len(texts), mode[1]))
        return results
    finally:
        for process, _, _ in servers.values():
            process.terminate()
            process.wait(timeout=60)


def run(args: argparse.Namespace, command: str) -> None:
    texts = [text for text, _ in BUILTIN["rotten_tomatoes"]()[0][: args.requests]]
    rows = []
    for model in args.models:
        prompts = [" ".join(t.split()[:24]) for t in texts] if model == "gpt_tiny" else texts
        with tempfile.TemporaryDirectory() as base:
            results = measure(model, prompts, args, base)
        for (name, flight), rounds in results.items():
            reference = statistics.median(r.requests_per_s for r in results[(IN_PROCESS, flight)])
            rate = statistics.median(r.requests_per_s for r in rounds)
            p50, p99 = (statistics.median(r.percentile_ms(q) for r in rounds) for q in (50, 99))
            failed = sum(len(r.failures) for r in rounds)
            cells = [f"{rate:,.0f}", f"**{rate / reference:.2f}×**", f"{p50:.1f}", f"{p99:.1f}"]
            rows.append([MODELS[model], name, flight, *cells, failed])
            for failure in [f for r in rounds for f in r.failures][:3]:
                print(failure)
    columns = ["model", "mode", "in flight", "req/s", "vs in-process", "p50 ms", "p99 ms"]
    table = markdown_table([*columns, "failed"], rows)
    print(table)
    if args.write:
        write_section(SECTION, section_body(command, table, args, len(texts)))


def section_body(command, table, args, count):
    return f"""
{header(command)}

Exported with `export_saved_model`: a 2-class `TextClassifier` (mean pooling, T
{args.sequence_length}) and a `CausalLM` (random weights, greedy, 16 new tokens, prompts
cut to 24 words). {count} Rotten Tomatoes snippets, one per request, to `python -m
tools.serve` on 127.0.0.1 (one process; REST on uvicorn, gRPC on grpcio; the client
threads run on the same cores), without and with `--enable_batching` (≤ 32 rows, 2 ms),
against the same signature called in this process, one text a call. Every answer was
checked against the in-process one (identical strings and ints, floats within 1e-5);
"failed" counts errors and mismatches. Medians over {args.rounds} interleaved rounds; "vs
in-process" = req/s over in-process req/s at the same number in flight.

{table}
"""
