"""Int8 and bf16 decoding against float32: perplexity on real text and ms/token, one run.

    python -m tools.benchmark quantize [--steps 300] [--validation_lines 1000]
        [--batch_sizes 1,8] [--new 16] [--rounds 3] [--write]

Perplexity: a small GPT (2 layers, d 128) is trained for `--steps` on Shakespeare (the
WordPiece vocabulary of all-MiniLM-L6-v2; Hamlet held out) and on People's Daily (the
Chinese BERT vocabulary; the last tenth of paragraphs held out), then evaluated on the
held-out text in float32, bfloat16 weights (`with_overrides(dtype="bfloat16")`),
`quantize("int8")` (activations quantized too) and int8 weight-only. Speed: a GPT-2-small
size (random weights) decodes greedily in each precision, interleaved rounds.
"""

import argparse
import itertools
import math
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from tfllm import assets
from tfllm.benchmarking import decode_bytes_per_step, markdown_table, memory_bandwidth
from tfllm.generation import generate
from tfllm.models import CausalLM, GPTBackbone
from tfllm.models.preset_io import with_overrides
from tfllm.preprocessing import CausalLMPreprocessor
from tfllm.tokenizers import WordPieceTokenizer
from tools.benchmarks import header, interleaved_results, write_section
from tools.benchmarks.train import comma_list
from tools.demo_stages import peoples_daily_text

DESCRIPTION = "int8 / bf16 against float32: perplexity on real text and decoding ms/token."
SECTION = "## Quantized inference"
PRECISIONS = ("float32", "bf16", "int8", "int8 weight-only")
SMALL = dict(num_layers=2, num_heads=4, hidden_dim=128, intermediate_dim=512)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=300, help="training steps per language")
    parser.add_argument("--validation_lines", type=int, default=1000, help="held-out lines")
    parser.add_argument("--batch_sizes", type=comma_list(kind=int), default=[1, 8])
    parser.add_argument("--new", type=int, default=16, help="generated tokens (speed)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (speed)")


def in_precision(lm, precision):
    """A copy of `lm` in `precision` (one of `PRECISIONS`)."""
    if precision == "bf16":
        return with_overrides(lm, dtype="bfloat16")
    copy = with_overrides(lm, dropout=0.0)  # a rebuilt copy with the same weights
    if precision != "float32":
        weight_only = keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)
        copy.quantize("int8", config=weight_only if precision == "int8 weight-only" else None)
    return copy


def texts(language):
    """`(train lines, validation lines, tokenizer)` of real text."""
    if language == "en":
        lines = {}
        for path in sorted(assets.shakespeare_path().glob("*/*.md")):
            lines[path.stem] = [s.strip() for s in path.read_text().splitlines() if s.strip()]
        validation = lines.pop("hamlet")
        train = [line for play in lines.values() for line in play]
        return train, validation, WordPieceTokenizer(assets.minilm_path() / "vocab.txt")
    with tempfile.TemporaryDirectory() as folder:
        lines = peoples_daily_text(Path(folder)).read_text(encoding="utf-8").split("\n")
    lines = [line for line in lines if line.strip()]
    cut = len(lines) * 9 // 10
    vocab = assets.chinese_bert_vocab_path()
    return lines[:cut], lines[cut:], WordPieceTokenizer(vocab, lowercase=False)


def perplexities(language, steps, validation_lines):
    """`{precision: validation perplexity}` of a small GPT trained for `steps`."""
    train, validation, tokenizer = texts(language)
    validation = validation[:validation_lines]
    keras.utils.set_random_seed(0)
    backbone = GPTBackbone(vocabulary_size=tokenizer.vocabulary_size(), max_sequence_length=128,
                           dropout=0.0, **SMALL)  # fmt: skip
    lm = CausalLM(backbone, preprocessor=CausalLMPreprocessor(tokenizer, sequence_length=64))
    lm.compile(optimizer=keras.optimizers.AdamW(2e-3))
    lm.fit(train, batch_size=16, steps_per_epoch=steps, epochs=1, verbose=0)
    result = {}
    for precision in PRECISIONS:
        model = in_precision(lm, precision)
        model.compile()
        loss = model.evaluate(validation, batch_size=64, verbose=0, return_dict=True)["loss"]
        result[precision] = math.exp(loss)
    return result, sum(len(line) for line in validation)


def speed_rows(args, bandwidth):
    """ms/token of a GPT-2-small size in each precision, without and with XLA, interleaved."""
    keras.utils.set_random_seed(0)
    lm = CausalLM(GPTBackbone.from_preset("gpt2_small_random", dropout=0.0))
    models = {precision: in_precision(lm, precision) for precision in PRECISIONS}
    times, tokens = {}, {}
    # One batch size at a time: its 8 decoders fit `generate`'s cache of compiled
    # decoders, so no timed call retraces.
    for batch_size in args.batch_sizes:
        prompts = np.random.default_rng(batch_size).integers(1, 50257, (batch_size, 32))
        inputs = {"token_ids": prompts.astype("int32"), "padding_mask": np.ones_like(prompts)}
        timers = {}
        for (precision, model), xla in itertools.product(models.items(), (False, True)):

            def timer(model=model, inputs=inputs, xla=xla):
                start = time.perf_counter()
                out = generate(model, inputs, args.new, stop_token_ids=(), jit_compile=xla)
                return time.perf_counter() - start, out["token_ids"]

            timers[(batch_size, precision + " XLA" * xla)] = timer
        batch_times, batch_tokens = interleaved_results(timers, args.rounds)
        times.update(batch_times)
        tokens.update(batch_tokens)
    step_bytes = {  # the bytes one step reads, each precision's weights as stored
        (batch_size, precision): decode_bytes_per_step(model.backbone, batch_size, 32 + args.new)
        for batch_size in args.batch_sizes
        for precision, model in models.items()
    }
    rows = []
    for (batch_size, name), seconds in times.items():
        reference = times[(batch_size, "float32")]
        gain = statistics.median(r / s for r, s in zip(reference, seconds, strict=True))
        same = np.mean(tokens[(batch_size, name)] == tokens[(batch_size, "float32")])
        per_token = statistics.median(seconds) / args.new
        own, float32 = (step_bytes[(batch_size, p)] for p in (name.removesuffix(" XLA"), "float32"))
        rows.append([
            batch_size, name, f"{per_token * 1e3:.1f}", f"{gain:.2f}×", f"{own / 1e6:.0f}",
            f"{per_token * bandwidth / float32:.2f}×",
            f"{per_token * bandwidth / own:.2f}×", f"{same:.0%}",
        ])  # fmt: skip
    return rows


def run(args: argparse.Namespace, command: str) -> None:
    ppl_rows = []
    for language, name in (("en", "Shakespeare (Hamlet)"), ("zh", "People's Daily")):
        result, characters = perplexities(language, args.steps, args.validation_lines)
        for precision, value in result.items():
            change = value / result["float32"] - 1
            flag = f"**{change:+.2%}** (> 2%)" if change > 0.02 else f"{change:+.2%}"
            ppl_rows.append([f"{name}, {characters:,} chars", precision, f"{value:.2f}", flag])
    ppl_table = markdown_table(["validation text", "weights", "perplexity", "change"], ppl_rows)
    bandwidth = memory_bandwidth()
    columns = ["batch", "weights", "ms/token", "speed vs float32", "MB read/step",
               "× float32 bound", "× own bound", "same tokens as float32"]  # fmt: skip
    speed_table = markdown_table(columns, speed_rows(args, bandwidth))
    print(ppl_table, speed_table, sep="\n\n")
    if args.write:
        write_section(SECTION, section_body(command, ppl_table, speed_table, args, bandwidth))


def section_body(command, ppl_table, speed_table, args, bandwidth):
    return f"""
{header(command)}

`CausalLM.quantize("int8")` is Keras's int8 scheme: every `Dense` kernel and the (tied)
token embedding as int8 with one float32 scale per output channel / vocabulary row,
activations quantized per token on the fly (tfllm's `Dense` stores its int8 kernel
`(units, input_dim)`, so products contract its minor axis); "weight-only" passes
`Int8QuantizationConfig(activation_quantizer=None)`. bf16 = the model rebuilt with
`dtype="bfloat16"` (weights, activations and KV cache in bfloat16). Norms, biases and
position tables stay float32.

Perplexity: a GPT of 2 layers, d 128, 4 heads, ff 512 trained {args.steps} steps (batch 16,
64 tokens, AdamW 2e-3) on the other 37 plays / the first nine tenths of People's Daily,
evaluated (token-level, sequences of 64) on the first {args.validation_lines} held-out lines /
paragraphs in each precision. A rise
above 2% is marked.

{ppl_table}

Speed: a GPT-2-small size (12 layers, d 768, vocab 50257, random weights), greedy,
prompt 32, {args.new} new tokens, `tfllm.generation.generate` without and with XLA
(`jit_compile=True`); {args.rounds} interleaved rounds after one untimed call; medians;
speed = float32 (no XLA) time / this time. Bounds as in "Generation speed": bytes one
step reads (weights in their stored dtype but the position table, the KV cache of
{32 + args.new} positions) / copy bandwidth {bandwidth / 1e9:.1f} GB/s; × float32 bound =
ms/token over the float32 model's bound, × own bound = over this model's.

{speed_table}
"""
