"""Served classify: req/s and p50/p99 latency over HTTP against in-process calls.

    python -m tools.benchmark serve [--models minilm,bert_tiny] [--requests 1000]
        [--concurrency 32] [--rounds 3] [--write]

Each model is exported with `export_saved_model` and served by `python -m tools.serve`
subprocesses (without and with batching); every answer is checked against the in-process
`classify` signature on the same texts. See `section_body` for what is measured.
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

import numpy as np
import tensorflow as tf

from export.load_test import http_caller, run_load
from export.saved_model import export_saved_model
from pipelines.labelled import BUILTIN
from tfllm import assets
from tfllm.benchmarking import markdown_table
from tfllm.models import BertBackbone, TextClassifier
from tfllm.tokenizers import WordPieceTokenizer
from tools.benchmarks import header, write_section
from tools.benchmarks.train import comma_list

DESCRIPTION = "Served classify req/s and p50/p99 latency against in-process calls."
SECTION = "## Served classify latency"
MODELS = {"minilm": "all-MiniLM-L6-v2 (6L, d 384)", "bert_tiny": "bert_tiny (2L, d 64)"}
IN_PROCESS = "in-process signature call"
BATCHING = ["--enable_batching", "--max_batch_size", "32", "--batch_timeout_micros", "2000"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", type=comma_list(tuple(MODELS)), default=list(MODELS))
    parser.add_argument("--sequence_length", type=int, default=128)
    parser.add_argument("--requests", type=int, default=1000, help="requests per mode and round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)


def export_classifier(name: str, base: str, sequence_length: int) -> str:
    """Exports a 2-class classifier to `base/classifier/1`; returns its model folder."""
    if name == "minilm":
        backbone = BertBackbone.from_huggingface(assets.minilm_path())
        tokenizer = WordPieceTokenizer.from_huggingface(assets.minilm_path())
    else:
        tokenizer = WordPieceTokenizer(assets.minilm_path() / "vocab.txt")
        backbone = BertBackbone.from_preset(name, vocabulary_size=len(tokenizer.vocabulary))
    model = TextClassifier(backbone, num_classes=2, pooling="mean", dropout=0.0)
    export_saved_model(
        model, base, "classifier", tokenizer=tokenizer, sequence_length=sequence_length,
        label_names=["rotten", "fresh"], validate=False,
    )  # fmt: skip
    return os.path.join(base, "classifier")


def start_server(
    model_dir: str, extra: list[str], name: str = "classifier"
) -> tuple[subprocess.Popen, int]:
    """`python -m tools.serve` of `name` on a free port of 127.0.0.1, once it answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "tools.serve", f"--model={name}={model_dir}"]
    process = subprocess.Popen([*command, "--port", str(port), *extra], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600  # a loaded shared machine starts TensorFlow slowly
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                return process, port
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"tools.serve did not start: {command}")


def measure(model: str, texts: list[str], args: argparse.Namespace) -> dict:
    """`{(mode, concurrency): [LoadResult per round]}` for one exported model."""
    with tempfile.TemporaryDirectory() as base:
        model_dir = export_classifier(model, base, args.sequence_length)
        classify = tf.saved_model.load(os.path.join(model_dir, "1")).signatures["classify"]
        expected = classify(text=tf.constant(texts))
        labels, probabilities = expected["labels"].numpy(), expected["probabilities"].numpy()

        def check(i, answer):
            (row,) = answer["predictions"]
            if row["labels"].encode() != labels[i]:
                raise ValueError(f"label {row['labels']!r} != {labels[i]!r}")
            if np.abs(np.subtract(row["probabilities"], probabilities[i])).max() > 1e-5:
                raise ValueError(f"probabilities {row['probabilities']} != {probabilities[i]}")

        def in_process(i):
            classify(text=tf.constant(texts[i : i + 1]))

        bodies = [{"signature_name": "classify", "instances": [text]} for text in texts]
        servers = {"HTTP": [], "HTTP + batching (≤ 32, 2 ms)": BATCHING}
        servers = {name: start_server(model_dir, extra) for name, extra in servers.items()}
        try:
            modes = {(IN_PROCESS, 1): in_process, (IN_PROCESS, args.concurrency): in_process}
            for name, (_, port) in servers.items():
                url = f"http://127.0.0.1:{port}/v1/models/classifier:predict"
                modes[(name, args.concurrency)] = http_caller(url, bodies, check)
            for mode, call in modes.items():  # warm up: threads, connections, graphs
                run_load(call, min(64, len(texts)), mode[1])
            results = {mode: [] for mode in modes}
            for _ in range(args.rounds):
                for mode, call in modes.items():
                    results[mode].append(run_load(call, len(texts), mode[1]))
            return results
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)


def run(args: argparse.Namespace, command: str) -> None:
    texts = [text for text, _ in BUILTIN["rotten_tomatoes"]()[0][: args.requests]]
    rows = []
    for model in args.models:
        results = measure(model, texts, args)
        in_process = results[(IN_PROCESS, args.concurrency)]
        reference = statistics.median(r.requests_per_s for r in in_process)
        for (name, concurrency), rounds in results.items():
            rate = statistics.median(r.requests_per_s for r in rounds)
            p50, p99 = (statistics.median(r.percentile_ms(q) for r in rounds) for q in (50, 99))
            failed = sum(len(r.failures) for r in rounds)
            ratio = f"**{rate / reference:.2f}×**"
            cells = [f"{rate:,.0f}", ratio, f"{p50:.1f}", f"{p99:.1f}", failed]
            rows.append([MODELS[model], name, concurrency, *cells])
            for failure in [f for r in rounds for f in r.failures][:3]:
                print(failure)
    header = ["model", "mode", "in flight", "req/s", "vs in-process", "p50 ms", "p99 ms"]
    table = markdown_table([*header, "failed"], rows)
    print(table)
    if args.write:
        write_section(SECTION, section_body(command, table, args, len(texts)))


def section_body(command, table, args, count):
    return f"""
{header(command)}

A 2-class `TextClassifier` (mean pooling), T {args.sequence_length}, exported with
`export_saved_model`; {count} Rotten Tomatoes snippets, one per request, to `python -m
tools.serve` on 127.0.0.1 (uvicorn, one process; the client threads run on the same
cores), against the `classify` signature called in this process on the same texts, one
text a call. Every answer was checked against the in-process one (same label,
probabilities within 1e-5); "failed" counts errors and mismatches. Medians over
{args.rounds} interleaved rounds; "vs in-process" = req/s over in-process req/s at the same
number in flight.

{table}
"""
