"""Training tokens/s of tfllm against keras-hub on the same config, in the same run.

    python -m tools.benchmark train [--steps 5] [--rounds 5] [--models gpt,bert]
        [--precisions fp32,bf16] [--dropout 0.1[,0.0]] [--write]

Every model pair is built and compiled alike (AdamW(1e-4), sparse cross-entropy from
logits, each library's own implementation of both; no metrics, no XLA), warmed up, then
timed `--rounds` times interleaved (A B A B ...). Reported: median tokens/s, the median
of the per-round ratios tfllm / keras-hub, and MFU against a measured `tf.matmul` peak
(4096^2) of this machine.
`--write` updates the "Training throughput" section of BENCHMARKS.md.
"""

import argparse
import statistics

from tfllm import benchmarking as bench
from tools.benchmarks import header, write_section

DESCRIPTION = "Training tokens/s of tfllm against keras-hub on the same config."
SECTION = "## Training throughput"
BATCH_SIZE, SEQUENCE_LENGTH = 16, 128


def comma_list(choices=None, kind=str):
    def parse(text):
        values = [kind(item) for item in text.split(",") if item]
        bad = [v for v in values if choices is not None and v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"expected a comma list of {choices}, got {text!r}")
        return values

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--models", type=comma_list(("gpt", "bert")), default=["gpt", "bert"])
    parser.add_argument(
        "--precisions", type=comma_list(tuple(bench.PRECISIONS)), default=["fp32", "bf16"]
    )
    parser.add_argument("--dropout", type=comma_list(kind=float), default=[0.1])


def run(args: argparse.Namespace, command: str) -> None:
    configs = [(t, p, d) for t in args.models for p in args.precisions for d in args.dropout]
    timers = {}
    for task, precision, dropout in configs:
        vocabulary_size = bench.BENCH["vocabulary_size"]
        batch = bench.synthetic_batch(task, BATCH_SIZE, SEQUENCE_LENGTH, vocabulary_size)
        for library, model in bench.build_models(task, precision, dropout).items():
            timers[(task, precision, dropout, library)] = bench.step_timer(model, batch, args.steps)
    # The matmul peak is timed in every round too, so it sees the same machine state.
    for precision in args.precisions:
        dtype = bench.PRECISIONS[precision].replace("mixed_", "")
        timers[("peak", precision)] = bench.matmul_timer(dtype)
    times = bench.interleaved_times(timers, args.rounds, warmup=args.warmup)
    peaks = {p: 2 * 4096**3 / statistics.median(times[("peak", p)]) / 1e9 for p in args.precisions}
    print("tf.matmul 4096^2 peak: " + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items()))

    header = ["model", "precision", "dropout", "tfllm tok/s", "keras-hub tok/s", "ratio"]
    header += ["tfllm MFU", "keras-hub MFU"]
    rows = [result_row(config, times, peaks) for config in configs]
    table = bench.markdown_table(header, rows)
    print(table)
    if args.write:
        write_section(SECTION, section_body(command, peaks, table, args))


def result_row(config, times, peaks):
    """Median tokens/s, median per-round ratio and MFU of one (task, precision, dropout)."""
    task, precision, dropout = config
    ours, theirs = (times[(*config, library)] for library in ("tfllm", "keras-hub"))
    speed = [BATCH_SIZE * SEQUENCE_LENGTH / statistics.median(t) for t in (ours, theirs)]
    ratio = statistics.median(b / a for a, b in zip(ours, theirs, strict=True))
    flops = bench.task_flops_per_token(task, SEQUENCE_LENGTH)
    mfu = [s * flops / (peaks[precision] * 1e9) for s in speed]
    name = "GPT causal LM" if task == "gpt" else "BERT masked LM"
    return [name, precision, dropout, *(f"{s:,.0f}" for s in speed), f"**{ratio:.2f}×**"] + [
        f"{m:.0%}" for m in mfu
    ]


def section_body(command, peaks, table, args):
    peak_text = ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items())
    return f"""
{header(command)}

GPT/BERT 4 layers, d 256, 4 heads, ff 1024, vocab 8192, T {SEQUENCE_LENGTH}, batch
{BATCH_SIZE}; no metrics, `jit_compile=False`, `train_on_batch` on in-memory synthetic ids;
each library's AdamW(1e-4) (`tfllm.training.AdamW`, `keras.optimizers.AdamW`) and sparse
cross-entropy from logits (`tfllm.losses.SparseCategoricalCrossentropy`,
`keras.losses.SparseCategoricalCrossentropy`): the same updates and values.
{args.rounds} interleaved rounds of {args.steps} steps after {args.warmup} untimed round(s);
tokens/s (all B×T input tokens, masked LM too) are medians over rounds,
ratio = median over rounds of tfllm / keras-hub step time ratios.
MFU = FLOPs/token (6 × matmul weights + 12·L·T·d attention; masked LM counts its head
at 20/128 positions) × tokens/s / measured `tf.matmul` 4096² peak ({peak_text}).

{table}
"""
