"""Generation speed of tfllm against keras-hub and the memory-bandwidth bound, in one run.

    python -m tools.benchmark generate [--sizes gpt_tiny,gpt_bench,gpt2_small]
        [--batch_sizes 1,8] [--prompt 32] [--new 64] [--rounds 5] [--write]

For each size, a random-weight keras-hub `GPT2CausalLM` and a tfllm `CausalLM` holding
the same weights (`gpt_from_keras_hub`) continue the same random prompts greedily for
`--new` tokens, with no stop token, without XLA (keras-hub's default on CPU) and with it
(`jit_compile=True`). Reported: median ms per generated step, tokens/s, the median
per-round speed-up of tfllm over keras-hub, and the step's lower bound: the bytes one
step must read (`decode_bytes_per_step`: every weight, the KV cache) over the machine's
memory bandwidth (`memory_bandwidth`, a large array copy). Both must emit the same tokens.
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
from tfllm.models.presets import PRESETS
from tools.benchmarks import header, interleaved_results, write_section
from tools.benchmarks.train import comma_list

DESCRIPTION = "Generation ms/token of tfllm and keras-hub against the memory-bandwidth bound."
SECTION = "## Generation speed"
SIZES = {
    "gpt_tiny": PRESETS["gpt_tiny"]["config"],
    "gpt_bench": bench.BENCH,
    "gpt2_small": PRESETS["gpt2_small_random"]["config"],
}
LIBRARIES = ("keras-hub", "keras-hub XLA", "tfllm", "tfllm XLA")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=comma_list(choices=list(SIZES)), default=list(SIZES))
    parser.add_argument("--batch_sizes", type=comma_list(kind=int), default=[1, 8])
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="generated tokens")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (compiles)")


def build_models(config: dict, total_length: int):
    """keras-hub `GPT2CausalLM`s (without, with XLA) and a tfllm `CausalLM`, same weights."""
    config = {**config, "max_sequence_length": max(total_length, config["max_sequence_length"])}
    backbone = keras_hub.models.GPT2Backbone(**config, dropout=0.0)
    theirs = {}
    for jit_compile in (False, True):
        theirs[jit_compile] = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
        theirs[jit_compile].compile(sampler="greedy", jit_compile=jit_compile)  # default top-k
    return theirs, CausalLM(gpt_from_keras_hub(backbone))


def timers_for(batch_size, args, theirs, ours):
    """`{library: timer}` for one batch size; each returns (seconds, new token ids)."""
    rng = np.random.default_rng(batch_size)
    vocabulary_size = ours.backbone.vocabulary_size
    prompts = rng.integers(1, vocabulary_size, (batch_size, args.prompt))
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

    return dict(zip(LIBRARIES, [keras_hub_timer(False), keras_hub_timer(True),
                                tfllm_timer(False), tfllm_timer(True)], strict=True))  # fmt: skip


def run(args: argparse.Namespace, command: str) -> None:
    bandwidth = bench.memory_bandwidth()
    print(f"memory bandwidth (array copy): {bandwidth / 1e9:.1f} GB/s")
    rows = []
    for size in args.sizes:
        theirs, ours = build_models(SIZES[size], args.prompt + args.new)
        timers = {
            (batch_size, library): timer
            for batch_size in args.batch_sizes
            for library, timer in timers_for(batch_size, args, theirs, ours).items()
        }
        times, tokens = interleaved_results(timers, args.rounds, args.warmup)
        for batch_size in args.batch_sizes:
            # The mean cache length over the steps; tfllm reads its whole cache each step.
            step_bytes = bench.decode_bytes_per_step(
                ours.backbone, batch_size, args.prompt + args.new
            )
            bound = step_bytes / bandwidth
            reference = times[(batch_size, "keras-hub")]
            for library in LIBRARIES:
                seconds = times[(batch_size, library)]
                speedup = statistics.median(k / s for k, s in zip(reference, seconds, strict=True))
                same = np.array_equal(
                    tokens[(batch_size, library)], tokens[(batch_size, "keras-hub")]
                )
                per_token = statistics.median(seconds) / args.new
                rows.append([
                    size, batch_size, library, f"{per_token * 1e3:.2f}",
                    f"{step_bytes / 1e6:.1f}", f"{bound * 1e3:.2f}",
                    f"**{per_token / bound:.1f}×**",
                    f"{speedup:.2f}×", "yes" if same else "**no**",
                ])  # fmt: skip
    columns = ["model", "batch", "library", "ms/token", "MB read/step", "bound ms",
               "× bound", "speed-up vs keras-hub", "same tokens"]  # fmt: skip
    table = bench.markdown_table(columns, rows)
    print(table)
    if args.write:
        write_section(SECTION, section_body(command, table, bandwidth, args))


def section_body(command, table, bandwidth, args):
    return f"""
{header(command)}

Random-weight GPTs shared by both libraries: `gpt_tiny` (2 layers, d 64, vocab 1024),
the benchmark GPT (4 layers, d 256, 4 heads, ff 1024, vocab 8192) and a GPT-2-small
size (12 layers, d 768, 12 heads, ff 3072, vocab 50257); greedy, prompt {args.prompt}
tokens, {args.new} new tokens, no stop token. keras-hub `GPT2CausalLM.generate`
(preprocessor `None`, padded inputs) against `tfllm.generation.generate` (the whole loop
one `tf.function`; per layer one head-major key and one value cache tensor, written in
place; the prefill projects only each prompt's last position to the vocabulary), each
without XLA (the default of both on CPU) and with `jit_compile=True`; speed-ups are
against keras-hub without XLA. {args.rounds} interleaved rounds after {args.warmup}
untimed call(s) (compilation); medians. ms/token = time per generated position (the
whole batch). Bound = bytes one step reads (every weight but the position table, float32,
plus the whole KV cache of {args.prompt + args.new} positions) / memory bandwidth
{bandwidth / 1e9:.1f} GB/s (a 512 MB float32 array copy, bytes read + written; its
best of 5); × bound = ms/token / bound ms (1.0 would be the hardware's floor).

{table}
"""
