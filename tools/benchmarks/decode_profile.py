"""Where a decoding step of tfllm's GPT spends its time, against what the memory allows.

    python -m tools.benchmark decode_profile [--size gpt2_small] [--batch_size 1]
        [--rounds 5] [--write]

A random-weight `CausalLM` of `--size` decodes greedily from a 32-token prompt (no XLA).
Reported, in one process and interleaved: the step's time (`(t(36 new) - t(4 new)) / 32`,
so the prefill cancels) as GB/s of the bytes it must read (`decode_bytes_per_step`); the
same products alone (every kernel times a `(batch, d)` input, in a while loop); the
machine's read bandwidth (`read_bandwidth`) and copy bandwidth (`memory_bandwidth`, read
+ written bytes, the bound of the generation benchmark). Then a `tf.profiler` trace of
one decoding call: host time per step by op type.
"""

import argparse
import collections
import glob
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf

from tfllm import benchmarking as bench
from tfllm import generation
from tfllm.models import CausalLM, GPTBackbone
from tools.benchmarks import header, write_section
from tools.benchmarks.generate import SIZES

DESCRIPTION = "Decoding step: op-type profile and GB/s against read and copy bandwidth."
SECTION = "## Decoding profile"
PROMPT, SHORT, LONG = 32, 4, 36


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=list(SIZES), default="gpt2_small")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")


def products_timer(backbone, batch_size, steps=16):
    """`(timer, bytes)`: the timer returns the seconds of one step of every weight
    matrix's product alone (the output projection included), each product waiting for
    the previous one as in a forward pass, in a while loop."""
    embeddings = backbone.token_embedding.embeddings
    skip = {id(embeddings), *(id(w) for w in getattr(backbone.position_layer, "weights", []))}
    kernels = [w for w in backbone.weights if len(w.shape) == 2 and id(w) not in skip]
    width = max(max(w.shape) for w in kernels)
    nbytes = sum(int(np.prod(w.shape)) * 4 for w in [*kernels, embeddings])

    def body(i, x):
        for w in kernels:  # one after the other, as in a forward pass
            x = x + tf.reduce_sum(tf.matmul(x[:, : w.shape[0]], w)) * 1e-30
        logits = tf.matmul(x[:, : embeddings.shape[1]], embeddings, transpose_b=True)
        return i + 1, x + tf.reduce_sum(logits) * 1e-30

    loop = tf.function(lambda x: tf.while_loop(lambda i, x: i < steps, body, (0, x))[1])
    x = tf.ones([batch_size, width])
    loop(x)

    def timer():
        start = time.perf_counter()
        loop(x).numpy()
        return (time.perf_counter() - start) / steps

    return timer, nbytes


def op_type_times(run, steps):
    """`{op type: (microseconds per step, ops per step)}` of `run()`, from a profiler trace.

    Call it after a single warm-up call: later, the executor runs the ops its cost model
    has found cheap inline, and those the trace leaves out.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals, counts = collections.Counter(), collections.Counter()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        run()
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
            space.ParseFromString(f.read())
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name  # "op name:OpType"
                if "while/" in name and ":" in name:  # the loop body only
                    totals[name.rsplit(":", 1)[1]] += event.duration_ps / 1e6
                    counts[name.rsplit(":", 1)[1]] += 1
    return {op: (totals[op] / steps, counts[op] / steps) for op in totals}


def run(args: argparse.Namespace, command: str) -> None:
    config = dict(SIZES[args.size], max_sequence_length=PROMPT + LONG)
    lm = CausalLM(GPTBackbone(**config, dropout=0.0))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, config["vocabulary_size"], (args.batch_size, PROMPT))
    ids, seed = tf.constant(ids, tf.int32), tf.zeros([2], tf.int32)
    call = {}
    decoder = generation._decoder(lm, generation.GreedySampler(), (), False, len(ids))
    for n in (SHORT, LONG):
        call[n] = lambda n=n: decoder(ids, tf.ones_like(ids), tf.constant(n), seed)[0].numpy()

    def step_timer():
        seconds = {}
        for n in (SHORT, LONG):
            start = time.perf_counter()
            call[n]()
            seconds[n] = time.perf_counter() - start
        return (seconds[LONG] - seconds[SHORT]) / (LONG - SHORT)

    call[LONG]()  # traces it
    profile = op_type_times(call[LONG], LONG - 1)
    step_bytes = bench.decode_bytes_per_step(lm.backbone, args.batch_size, PROMPT + LONG)
    products, product_bytes = products_timer(lm.backbone, args.batch_size)
    rates = {
        "tfllm decoding step": lambda: step_bytes / step_timer(),
        "its weight products alone (MatMul)": lambda: product_bytes / products(),
        "read bandwidth (`read_bandwidth`)": bench.read_bandwidth,
        "copy bandwidth, read + written (`memory_bandwidth`)": bench.memory_bandwidth,
    }
    results = bench.interleaved_times(rates, args.rounds)
    rows = [[name, f"{statistics.median(v) / 1e9:.1f}", f"{min(v) / 1e9:.1f}–{max(v) / 1e9:.1f}"]
            for name, v in results.items()]  # fmt: skip
    rate_table = bench.markdown_table(["", "GB/s (median)", "range"], rows)
    total = sum(us for us, _ in profile.values())
    top = sorted(profile.items(), key=lambda kv: -kv[1][0])[:8]
    rows = [[op, f"{us / 1e3:.2f}", f"{us / total:.1%}", f"{n:.0f}"] for op, (us, n) in top]
    rows.append(["all", f"{total / 1e3:.2f}", "100%", f"{sum(n for _, n in profile.values()):.0f}"])
    op_table = bench.markdown_table(["op type", "ms/step", "share", "ops/step"], rows)
    print(rate_table, op_table, sep="\n\n")
    if args.write:
        body = f"""
{header(command)}

tfllm `CausalLM`, {args.size} size (random weights), batch {args.batch_size}, greedy,
prompt {PROMPT}, no XLA; {step_bytes / 1e6:.0f} MB read per step (weights and KV cache).
{args.rounds} interleaved rounds. GB/s = bytes the step must read / time (for the
bandwidths: bytes moved / time).

{rate_table}

Host time per decoding step by op type (`tf.profiler`, {LONG - 1} steps of one call):

{op_table}
"""
        write_section(SECTION, body)
