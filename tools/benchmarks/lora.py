"""Fine-tuning the benchmark GPT with and without LoRA: parameters, step time, memory, decoding.

    python -m tools.benchmark lora [--rank 8] [--steps 3] [--rounds 5] [--write]

A fully trainable `gpt_bench` `CausalLM` against one with `backbone.enable_lora(rank)`,
trained interleaved on one synthetic batch (B 16, T 128); then greedy decoding of the LoRA
model against the same weights after `merge_lora` (the same tokens required). The method
is described in the BENCHMARKS.md section it writes (`section_body`).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfllm import benchmarking as bench
from tfllm.generation import generate
from tfllm.losses import SparseCategoricalCrossentropy
from tfllm.models import CausalLM, GPTBackbone
from tfllm.training import AdamW
from tools.benchmarks import header, interleaved_results, write_section

DESCRIPTION = "gpt_bench fine-tuning with and without LoRA: parameters, step time, memory."
SECTION = "## LoRA fine-tuning"
BATCH_SIZE, SEQUENCE_LENGTH, PROMPT, NEW = 16, 128, 32, 32
MIB = 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--dropout", type=float, default=0.1)


def build(rank: int | None, dropout: float, weights=None) -> CausalLM:
    backbone = GPTBackbone.from_preset("gpt_bench", dropout=dropout)
    if weights is not None:
        backbone.set_weights(weights)
    model = CausalLM(backbone)
    if rank is not None:
        backbone.enable_lora(rank)
    model.compile(AdamW(1e-4), SparseCategoricalCrossentropy(), weighted_metrics=None)
    return model


def train_timer(model, batch, steps, peaks: list):
    """Seconds per step of `steps` `train_on_batch` calls; appends the round's peak (bytes)."""
    x, y = batch

    def timer():
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)  # returns Python floats: each step is synchronous
        seconds = (time.perf_counter() - start) / steps
        peaks.append(tf.config.experimental.get_memory_info("CPU:0")["peak"] - before)
        return seconds, None

    return timer


def decode_timer(model, prompts):
    def timer():
        start = time.perf_counter()
        tokens = generate(model, prompts, NEW, sampler="greedy", stop_token_ids=())
        return (time.perf_counter() - start) / NEW, tokens

    return timer


def run(args: argparse.Namespace, command: str) -> None:
    base = GPTBackbone.from_preset("gpt_bench", dropout=args.dropout).get_weights()
    models = {"full": build(None, args.dropout, base), "lora": build(args.rank, args.dropout, base)}
    batch = bench.synthetic_batch(
        "gpt", BATCH_SIZE, SEQUENCE_LENGTH, bench.BENCH["vocabulary_size"]
    )
    peaks = {name: [] for name in models}
    timers = {name: train_timer(m, batch, args.steps, peaks[name]) for name, m in models.items()}
    times, _ = interleaved_results(timers, args.rounds, args.warmup)
    peaks = {name: values[args.warmup :] for name, values in peaks.items()}  # timed rounds

    # The trained adapters, merged into a copy of the same base weights.
    merged = build(None, 0.0, base)
    with tempfile.TemporaryDirectory() as folder:
        models["lora"].backbone.save_lora_weights(Path(folder) / "bench.lora.h5")
        merged.backbone.load_lora_weights(Path(folder) / "bench.lora.h5")
    merged.backbone.merge_lora()
    prompts = np.random.default_rng(0).integers(1, bench.BENCH["vocabulary_size"], (1, PROMPT))
    decoders = {"lora": decode_timer(models["lora"], prompts.tolist())}
    decoders["merged"] = decode_timer(merged, prompts.tolist())
    decode_times, tokens = interleaved_results(decoders, args.rounds, args.warmup)
    if tokens["lora"] != tokens["merged"]:
        raise RuntimeError("The merged model generated other tokens than the LoRA model.")

    rows = []
    for name, model in models.items():
        params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        state = sum(
            int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.optimizer.variables
        )
        step = statistics.median(times[name])
        rows.append([
            "full fine-tuning" if name == "full" else f"LoRA rank {args.rank}",
            f"{params:,}", f"{step * 1000:.0f}", f"{BATCH_SIZE * SEQUENCE_LENGTH / step:,.0f}",
            f"{statistics.median(peaks[name]) / MIB:.0f}", f"{state / MIB:.1f}",
        ])  # fmt: skip
    ratio = statistics.median(f / lo for f, lo in zip(times["full"], times["lora"], strict=True))
    header_row = ["model", "trainable params", "ms/step", "tokens/s", "peak MiB/step"]
    table = bench.markdown_table([*header_row, "optimizer state MiB"], rows)
    decode = {name: statistics.median(t) * 1000 for name, t in decode_times.items()}
    summary = (
        f"Step time full / LoRA: median per-round ratio **{ratio:.2f}×**.\n"
        f"Greedy decoding, batch 1, prompt {PROMPT}, {NEW} new tokens (same tokens): LoRA "
        f"unmerged {decode['lora']:.1f} ms/token, merged {decode['merged']:.1f} ms/token."
    )
    print(table, summary, sep="\n\n")
    if args.write:
        write_section(SECTION, section_body(command, args, table, summary))


def section_body(command, args, table, summary):
    return f"""
{header(command)}

`gpt_bench` `CausalLM` (4 layers, d 256, ff 1024, vocab 8192, dropout {args.dropout}), B
{BATCH_SIZE}, T {SEQUENCE_LENGTH}, `train_on_batch` on in-memory synthetic ids,
`tfllm.training.AdamW(1e-4)`, no metrics, no XLA: fully trainable against
`backbone.enable_lora({args.rank})` on all attention and feed-forward projections (the
backbone frozen; the tied output projection too). {args.rounds} interleaved rounds of
{args.steps} steps after {args.warmup} untimed round(s); medians over rounds. Peak MiB/step:
TensorFlow's CPU allocator peak during a round above what was allocated before it (tensors
only: activations, gradients, temporaries; not the process RSS); optimizer state: the
optimizer's variables (AdamW: two slots per trainable weight). Two cores shared with other
jobs (see the load): compare the rows of one run, not across runs.

{table}

Keras's `Dense` LoRA computes `x @ (kernel + alpha/r * A @ B)`: the backward pass of each
adapted projection still forms the full kernel-shaped gradient before projecting it onto
`A` and `B`, so a step saves only the frozen weights' gradients (the tied vocabulary
projection's above all) and optimizer updates. Unmerged decoding rebuilds every adapted
kernel at each token; `merge_lora()` before serving removes that cost.

{summary}
"""
