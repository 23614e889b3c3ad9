"""Generation speed of tfllm against keras-hub, same config and weights, in one run.

    python -m tools.benchmark generate [--batch_sizes 1,8] [--prompt 32] [--new 64]
        [--rounds 5] [--xla both] [--write]

A random-weight keras-hub `GPT2CausalLM` (the `gpt_bench` size: 4 layers, d 256, vocab
8192) and a tfllm `CausalLM` holding the same weights (`gpt_from_keras_hub`) continue the
same random prompts greedily for `--new` tokens, with no stop token. Both run without XLA
(keras-hub's default on CPU) and with it (`jit_compile=True`).
Reported: median ms per generated step and tokens/s over interleaved rounds, and the
median per-round speed-up of tfllm over keras-hub. Both must emit the same tokens.
"""

import argparse
import statistics
import time

import keras_hub
import numpy as np

from tfllm import benchmarking as bench
from tfllm.generation import generate
from tfllm.models import CausalLM
from tfllm.models.convert import gpt_from_keras_hub
from tools.benchmarks import header, interleaved_results, write_section
from tools.benchmarks.train import comma_list

DESCRIPTION = "Generation ms/token of tfllm against keras-hub GPT2CausalLM.generate."
SECTION = "## Generation speed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch_sizes", type=comma_list(kind=int), default=[1, 8])
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="generated tokens")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (compiles)")


def build_models(total_length: int):
    """keras-hub `GPT2CausalLM`s (without, with XLA) and a tfllm `CausalLM`, same weights."""
    config = {**bench.BENCH, "max_sequence_length": max(total_length, 128)}
    backbone = keras_hub.models.GPT2Backbone(**config, dropout=0.0)
    theirs = {}
    for jit_compile in (False, True):
        theirs[jit_compile] = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
        theirs[jit_compile].compile(sampler="greedy", jit_compile=jit_compile)  # default top-k
    return theirs, CausalLM(gpt_from_keras_hub(backbone))


def timers_for(batch_size, args, theirs, ours):
    """`{name: timer}` for one batch size; each timer returns (seconds, new token ids)."""
    rng = np.random.default_rng(batch_size)
    prompts = rng.integers(1, bench.BENCH["vocabulary_size"], (batch_size, args.prompt))
    total = args.prompt + args.new
    # keras-hub continues to the padded length: the prompt, then `new` masked slots.
    padded = {
        "token_ids": np.pad(prompts, ((0, 0), (0, args.new))).astype("int32"),
        "padding_mask": np.arange(total)[None].repeat(batch_size, 0) < args.prompt,
    }
    ours_inputs = {"token_ids": prompts.astype("int32"), "padding_mask": np.ones_like(prompts)}

    def keras_hub_timer(jit_compile):
        def timer():
            start = time.perf_counter()
            out = theirs[jit_compile].generate(padded, stop_token_ids=None)
            return time.perf_counter() - start, np.asarray(out["token_ids"])[:, args.prompt :]

        return timer

    def tfllm_timer(jit_compile):
        def timer():
            start = time.perf_counter()
            out = generate(ours, ours_inputs, args.new, stop_token_ids=(), jit_compile=jit_compile)
            return time.perf_counter() - start, out["token_ids"]

        return timer

    return {
        (batch_size, "keras-hub"): keras_hub_timer(False),
        (batch_size, "keras-hub XLA"): keras_hub_timer(True),
        (batch_size, "tfllm"): tfllm_timer(False),
        (batch_size, "tfllm XLA"): tfllm_timer(True),
    }


def run(args: argparse.Namespace, command: str) -> None:
    theirs, ours = build_models(args.prompt + args.new)
    timers = {}
    for batch_size in args.batch_sizes:
        timers.update(timers_for(batch_size, args, theirs, ours))
    times, tokens = interleaved_results(timers, args.rounds, args.warmup)
    rows = []
    for batch_size in args.batch_sizes:
        reference = tokens[(batch_size, "keras-hub")]
        for library in ("keras-hub", "keras-hub XLA", "tfllm", "tfllm XLA"):
            seconds = times[(batch_size, library)]
            speedup = statistics.median(
                k / s for k, s in zip(times[(batch_size, "keras-hub")], seconds, strict=True)
            )
            same = np.array_equal(tokens[(batch_size, library)], reference)
            median = statistics.median(seconds)
            rows.append([
                batch_size, library, f"{median / args.new * 1e3:.2f}",
                f"{batch_size * args.new / median:,.0f}", f"**{speedup:.2f}×**",
                "yes" if same else "**no**",
            ])  # fmt: skip
    header = ["batch", "library", "ms/token", "tokens/s", "speed-up vs keras-hub", "same tokens"]
    table = bench.markdown_table(header, rows)
    print(table)
    if args.write:
        write_section(SECTION, section_body(command, table, args))


def section_body(command, table, args):
    return f"""
{header(command)}

GPT 4 layers, d 256, 4 heads, ff 1024, vocab 8192, random weights shared by both models;
greedy, prompt {args.prompt} tokens, {args.new} new tokens, no stop token. keras-hub
`GPT2CausalLM.generate` (preprocessor `None`, padded inputs) against
`tfllm.generation.generate` (the whole loop one `tf.function`; per layer one head-major
key and one value cache tensor, written in place; the prefill projects only each prompt's
last position to the vocabulary), each without XLA
(the default of both on CPU) and with `jit_compile=True`; speed-ups are against keras-hub
without XLA (compare the XLA rows with each other for XLA against XLA).
{args.rounds} interleaved rounds after {args.warmup} untimed call(s) (compilation); medians.
ms/token = time per generated position (the whole batch); speed-up = median over rounds
of keras-hub (no XLA) time / this row's time.

{table}
"""
