"""Training steps/s fed by the real input pipeline against in-memory batches.

    python -m tools.benchmark pipeline [--tasks causal_lm,bert_pretraining] [--write]

The benchmark-size models (`gpt_bench` / `bert_bench`: 4 layers, d 256, vocab 8192,
T 128, batch 16) train through `tfllm.trainer.Trainer`'s step on two iterators: the real
pipeline (`pipelines.datasets.pretraining_dataset_fn` over Shakespeare's plays: file
reading, shuffling, in-graph WordPiece, packing or NSP pairs + dynamic masking) and the
first real batch repeated from memory. The ratio shows what the input pipeline costs the
accelerator-side loop; the goal is >= 0.95.
"""

import argparse
import statistics
import time
from pathlib import Path

import tensorflow as tf

from pipelines.datasets import pretraining_dataset_fn
from tfllm import benchmarking as bench
from tfllm.config import RunConfig
from tfllm.pretraining import build_model, build_preprocessor, default_corpus
from tfllm.replica_input import ReplicaInput
from tfllm.tokenizers import train_wordpiece
from tfllm.trainer import Trainer
from tools.benchmarks import header, write_section
from tools.benchmarks.train import comma_list

DESCRIPTION = "Training steps/s on the real tf.data pipeline against in-memory batches."
SECTION = "## Input pipeline"
TASKS = {"causal_lm": "gpt_bench", "bert_pretraining": "bert_bench"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=comma_list(tuple(TASKS)), default=list(TASKS))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")


def step_timer(trainer: Trainer, dataset_fn, steps: int):
    """Seconds per training step, drawing batches from one persistent iterator."""
    inputs = ReplicaInput(trainer.strategy, dataset_fn)
    iterator = iter(inputs.dataset)

    def timer():
        start = time.perf_counter()
        # `steps` steps in one graph call, read once at the end, as in `Trainer.fit`.
        float(trainer._train_function(inputs.layout, iterator, tf.constant(steps))[1]["loss"])
        return (time.perf_counter() - start) / steps

    return timer


def timers_for(task: str, tokenizer, files, steps: int) -> dict:
    config = RunConfig(task=task, model=TASKS[task], sequence_length=128, batch_size=16)
    real = pretraining_dataset_fn(config, build_preprocessor(config, tokenizer), files)
    first = next(iter(real(tf.distribute.InputContext())))

    def memory(_):
        return tf.data.Dataset.from_tensors(first).repeat()

    model = build_model(config, tokenizer.vocabulary_size())
    trainer = Trainer(model, tf.distribute.get_strategy(), "unused", steps=1, verbose=False)
    trainer._build(real)
    return {
        (task, "real"): step_timer(trainer, real, steps),
        (task, "memory"): step_timer(trainer, memory, steps),
    }


def run(args: argparse.Namespace, command: str) -> None:
    files, _ = default_corpus()
    started = time.perf_counter()
    tokenizer = train_wordpiece([Path(f) for f in files], 8192)
    print(f"WordPiece vocabulary trained in {time.perf_counter() - started:.1f} s")
    timers = {}
    for task in args.tasks:
        timers.update(timers_for(task, tokenizer, files, args.steps))
    times = bench.interleaved_times(timers, args.rounds, warmup=1)
    rows = []
    for task in args.tasks:
        real, memory = times[(task, "real")], times[(task, "memory")]
        ratio = statistics.median(m / r for r, m in zip(real, memory, strict=True))
        rows.append([
            task, TASKS[task], f"{1 / statistics.median(real):.2f}",
            f"{1 / statistics.median(memory):.2f}", f"**{ratio:.2f}×**",
        ])  # fmt: skip
    header = ["task", "model", "real steps/s", "in-memory steps/s", "real / in-memory"]
    table = bench.markdown_table(header, rows)
    print(table)
    if args.write:
        write_section(SECTION, body(command, args, table))


def body(command, args, table) -> str:
    return f"""
{header(command)}

`gpt_bench` / `bert_bench` (4 layers, d 256, vocab 8192), T 128, batch 16, fp32, trained
with `Trainer`'s distributed step. Real: `pretraining_dataset_fn` over Shakespeare's plays
(a WordPiece vocabulary of 8192 trained on them; causal LM packs documents, MLM + NSP
builds sentence pairs and masks dynamically), prefetched. In-memory: the first real batch,
repeated. {args.rounds} interleaved rounds of {args.steps} steps, medians.

{table}
"""
