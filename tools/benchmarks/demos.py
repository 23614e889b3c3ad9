"""Demonstration selection speed: pool search, vote-k, pool embedding.

    python -m tools.benchmark demos [--pool 100000] [--queries 200] [--texts 1000] [--write]

Search: `top_k_similar` (TF matmul + `tf.math.top_k`, query chunks) against numpy
(`argpartition` then sort; and a full `argsort`) on a random unit-norm `(pool, 384)`
matrix; all three must return the same indices. Vote-k: `vote_k` on `--vote-pool` rows.
Embedding: `SentenceEncoder` (all-MiniLM-L6-v2, texts sorted by length, batches cut to
their longest row) against the same backbone on batches padded to 128 in input order, on
Rotten Tomatoes snippets. Interleaved rounds, medians.
"""

import argparse
import statistics
import time

import numpy as np
import tensorflow as tf

from tfllm import benchmarking as bench
from tfllm.demonstrations import minilm_encoder, top_k_similar, vote_k
from tools.benchmarks import machine, write_section

DESCRIPTION = "Demonstration selection: top-k search vs numpy, vote-k, pool embedding."
SECTION = "## Demonstration selection speed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", type=int, default=100_000, help="rows searched")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=8)
    parser.add_argument("--vote-pool", type=int, default=10_000, help="rows for vote-k")
    parser.add_argument("--texts", type=int, default=1000, help="texts embedded")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")


def timed(function):
    def timer():
        start = time.perf_counter()
        result = function()
        return time.perf_counter() - start, result

    return timer


def padded_embedder(encoder, texts):
    """The naive way: input order, every batch padded to the full sequence length."""
    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(encoder.batch_size)
    dataset = dataset.map(encoder.preprocessor).prefetch(tf.data.AUTOTUNE)
    return lambda: np.concatenate([encoder.embed_batch(x).numpy() for x in dataset])


def run(args: argparse.Namespace, command: str) -> None:
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(args.pool, 384)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    queries = pool[rng.choice(args.pool, args.queries, replace=False)] + 0.1
    k = args.k

    def numpy_partition():
        scores = queries @ pool.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
        return np.take_along_axis(top, order, 1)

    search = {
        "tfllm top_k_similar": timed(lambda: top_k_similar(queries, pool, k)[0]),
        "numpy argpartition": timed(numpy_partition),
        "numpy argsort": timed(lambda: np.argsort(-(queries @ pool.T), axis=1)[:, :k]),
    }
    runs = bench.interleaved_times(search, args.rounds)
    answers = [result for _, result in (times[0] for times in runs.values())]
    if not all(np.array_equal(answers[0], a) for a in answers[1:]):
        raise RuntimeError("The search implementations disagree.")
    median = {name: statistics.median(t for t, _ in times) for name, times in runs.items()}
    base = median["tfllm top_k_similar"]
    rows = [
        [
            f"search {args.queries} queries in {args.pool:,} × 384, k={k}: {name}",
            f"{s * 1e3:.0f} ms",
            f"{s / base:.2f}",
        ]
        for name, s in median.items()
    ]
    start = time.perf_counter()
    vote_k(pool[: args.vote_pool], budget=100, num_neighbors=150)
    rows.append(
        [
            f"vote_k {args.vote_pool:,} rows, budget 100, 150 neighbours",
            f"{(time.perf_counter() - start) * 1e3:.0f} ms",
            "",
        ]
    )

    from pipelines.labelled import load_builtin

    texts = [t for t, _ in load_builtin("rotten_tomatoes").train[: args.texts]]
    encoder = minilm_encoder(sequence_length=128)
    embed = {
        "SentenceEncoder (sorted, trimmed)": timed(lambda: encoder(texts)),
        "padded to 128, input order": timed(padded_embedder(encoder, texts)),
    }
    runs = bench.interleaved_times(embed, args.rounds)
    results = [times[0][1] for times in runs.values()]
    if not np.allclose(results[0], results[1], atol=1e-4):
        raise RuntimeError("Sorted/trimmed embeddings differ from padded ones.")
    median = {name: statistics.median(t for t, _ in times) for name, times in runs.items()}
    base = median["SentenceEncoder (sorted, trimmed)"]
    rows += [
        [
            f"embed {args.texts} snippets (MiniLM): {name}",
            f"{len(texts) / s:.0f} texts/s",
            f"{s / base:.2f}",
        ]
        for name, s in median.items()
    ]
    table = bench.markdown_table(["what", "median", "time / ours"], rows)
    print(table)
    if args.write:
        body = f"`{command}` on {machine()}, {args.rounds} interleaved rounds.\n\n{table}\n"
        write_section(SECTION, body)
