"""Served generation: ms per generated token over HTTP against in-process, batch 1 and 8.

    python -m tools.benchmark serve_generate [--batch_sizes 1,8] [--new 32]
        [--requests 8] [--rounds 3] [--write]

A GPT of the benchmark size (4 layers, d 256, random weights) with all-MiniLM-L6-v2's
WordPiece vocabulary is exported with `export_saved_model` (greedy, `--new` tokens, no
stop token) and served by `python -m tools.serve` (REST); one request at a time carries
`batch` Shakespeare lines to the `generate` signature. Compared, on the same lines: that
signature called in this process, and `CausalLM.generate`-style decoding of the Keras
model (`tfllm.generation.generate`). Every served answer must equal the in-process one.
"""

import argparse
import os
import statistics
import tempfile

import keras
import tensorflow as tf

from export.load_test import http_caller, run_load
from export.saved_model import export_saved_model
from tfllm import assets
from tfllm.benchmarking import BENCH, markdown_table
from tfllm.generation import generate
from tfllm.models import CausalLM, GPTBackbone
from tfllm.tokenizers import WordPieceTokenizer
from tools.benchmarks import header, write_section
from tools.benchmarks.serve import start_server
from tools.benchmarks.tokenize import corpus_lines
from tools.benchmarks.train import comma_list

DESCRIPTION = "Served generate ms/token (REST) against in-process, batch 1 and 8."
SECTION = "## Served generation latency"
MODES = ("HTTP (tools.serve)", "in-process SavedModel signature", "in-process Keras model")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch_sizes", type=comma_list(kind=int), default=[1, 8])
    parser.add_argument("--new", type=int, default=32, help="generated tokens per text")
    parser.add_argument("--requests", type=int, default=8, help="requests per mode and round")
    parser.add_argument("--rounds", type=int, default=3)


def measure(args, base):
    """`{(batch, mode): [median seconds per request, one per round]}`."""
    tokenizer = WordPieceTokenizer(assets.minilm_path() / "vocab.txt")
    keras.utils.set_random_seed(0)
    config = {**BENCH, "vocabulary_size": tokenizer.vocabulary_size()}
    lm = CausalLM(GPTBackbone(**config, dropout=0.0))
    export_saved_model(lm, base, "gpt", tokenizer=tokenizer, max_new_tokens=args.new,
                       stop_token_ids=(), validate=False)  # fmt: skip
    model_dir = os.path.join(base, "gpt")
    signature = tf.saved_model.load(os.path.join(model_dir, "1")).signatures["generate"]
    lines = corpus_lines(0.01)
    process, _, port = start_server("gpt", model_dir, [])
    try:
        calls = {}
        for batch in args.batch_sizes:
            texts = [lines[i * batch : (i + 1) * batch] for i in range(args.requests)]
            expected = [signature(text=tf.constant(t))["text"].numpy() for t in texts]

            def check(i, answer, expected=expected):
                got = [row["text"].encode() for row in answer["predictions"]]
                if got != list(expected[i]):
                    raise ValueError(f"served {got} != in-process {list(expected[i])}")

            bodies = [{"signature_name": "generate", "instances": t} for t in texts]
            url = f"http://127.0.0.1:{port}/v1/models/gpt:predict"
            calls[(batch, MODES[0])] = http_caller(url, bodies, check)
            calls[(batch, MODES[1])] = lambda i, t=texts: signature(text=tf.constant(t[i]))
            calls[(batch, MODES[2])] = lambda i, t=texts: generate(
                lm, t[i], args.new, stop_token_ids=(), tokenizer=tokenizer, jit_compile=False
            )
        results = {key: [] for key in calls}
        for call in calls.values():  # warm up: connections, traces
            run_load(call, 2, 1)
        for _ in range(args.rounds):
            for key, call in calls.items():
                result = run_load(call, args.requests, 1)
                if result.failures:
                    raise RuntimeError(result.failures[0])
                results[key].append(statistics.median(result.latencies_s))
        return results
    finally:
        process.terminate()
        process.wait(timeout=30)


def run(args: argparse.Namespace, command: str) -> None:
    with tempfile.TemporaryDirectory() as base:
        results = measure(args, base)
    rows = []
    for (batch, mode), seconds in results.items():
        reference = results[(batch, MODES[1])]
        ratio = statistics.median(s / r for s, r in zip(seconds, reference, strict=True))
        per_token = statistics.median(seconds) / args.new * 1e3
        rows.append([batch, mode, f"{per_token:.2f}", f"{statistics.median(seconds) * 1e3:.0f}",
                     f"**{ratio:.2f}×**"])  # fmt: skip
    columns = ["batch", "mode", "ms/token", "ms/request", "time vs in-process signature"]
    table = markdown_table(columns, rows)
    print(table)
    if args.write:
        write_section(SECTION, section_body(command, table, args))


def section_body(command, table, args):
    return f"""
{header(command)}

GPT 4 layers, d 256, 4 heads, ff 1024 (random weights), all-MiniLM-L6-v2's WordPiece
vocabulary (30522), exported with `export_saved_model` (greedy, {args.new} new tokens, no
stop token). One request at a time ({args.requests} per round, {args.rounds} interleaved
rounds after 2 untimed requests; median request time per round, then the median over
rounds): `batch` Shakespeare lines as the instances of one REST request to `python -m
tools.serve` on 127.0.0.1 (the client runs on the same cores), the reloaded SavedModel's
`generate` signature called in this process, and `tfllm.generation.generate` on the Keras
model (no XLA). Served answers were checked equal to the in-process signature's.
ms/token = request time / {args.new} (the whole batch's step, tokenization included).

{table}
"""
