"""Resuming the input pipeline at step N: skipping N batches against restoring a checkpoint.

    python -m tools.benchmark resume [--tasks causal_lm,bert_pretraining]
        [--at 10,1000,10000] [--write]

The main job's pretraining pipelines (`pipelines.datasets.pretraining_dataset_fn` over
Shakespeare's plays: `gpt_tiny` / `bert_tiny` settings, T 64, batch 16, a 4,000-piece
WordPiece vocabulary) are resumed at step N two ways, each timed to its first batch:
reading and dropping N batches (`dataset.skip(N)`, what a resume did before) and
restoring the iterator from a `tf.train.Checkpoint` saved at step N (what `Trainer` does
now). The restored batch is checked to be the skipped one. Restoring the weights and
optimizer costs the same either way and is not timed.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipelines.datasets import pretraining_dataset_fn
from tfllm import benchmarking as bench
from tfllm.config import RunConfig
from tfllm.pretraining import build_preprocessor, default_corpus
from tfllm.tokenizers import train_wordpiece
from tools.benchmarks import header, write_section
from tools.benchmarks.train import comma_list

DESCRIPTION = "Resuming the input pipeline at step N: skip N batches vs restore a checkpoint."
SECTION = "## Resuming the input pipeline"
TASKS = {"causal_lm": "gpt_tiny", "bert_pretraining": "bert_tiny"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=comma_list(tuple(TASKS)), default=list(TASKS))
    parser.add_argument(
        "--at", type=lambda s: [int(v) for v in s.split(",")], default=[10, 1000, 10000]
    )


def resume_times(dataset_fn, step: int, folder: str) -> dict:
    """Seconds to the first batch after `step` by skipping and by restoring, and the
    checkpoint's size."""
    context = tf.distribute.InputContext()
    started = time.perf_counter()
    skipped = iter(dataset_fn(context).skip(step))
    expected = next(skipped)
    skip_seconds = time.perf_counter() - started
    saved = iter(dataset_fn(context))  # read to `step` as a training run does, then saved
    for _ in range(step):
        next(saved)
    path = tf.train.Checkpoint(data=saved).save(os.path.join(folder, f"input-{step}"))
    started = time.perf_counter()
    restored = iter(dataset_fn(context))
    tf.train.Checkpoint(data=restored).restore(path).assert_consumed()
    got = next(restored)
    restore_seconds = time.perf_counter() - started
    for a, b in zip(tf.nest.flatten(expected), tf.nest.flatten(got), strict=True):
        np.testing.assert_array_equal(a, b)
    size = sum(p.stat().st_size for p in Path(folder).glob(f"input-{step}*"))
    return {"skip": skip_seconds, "restore": restore_seconds, "megabytes": size / 1e6}


def run(args: argparse.Namespace, command: str) -> None:
    files, _ = default_corpus()
    tokenizer = train_wordpiece([Path(f) for f in files], 4000)
    rows = []
    for task in args.tasks:
        config = RunConfig(task=task, model=TASKS[task], sequence_length=64, batch_size=16)
        dataset_fn = pretraining_dataset_fn(config, build_preprocessor(config, tokenizer), files)
        with tempfile.TemporaryDirectory() as folder:
            for step in args.at:
                times = resume_times(dataset_fn, step, folder)
                print(task, step, times, flush=True)
                rows.append([
                    task, f"{step:,}", f"{times['skip']:.2f} s", f"{times['restore']:.2f} s",
                    f"{times['megabytes']:.1f} MB",
                ])  # fmt: skip
    head = ["task", "resumed at step", "skip N batches", "restore checkpoint", "input checkpoint"]
    table = bench.markdown_table(head, rows)
    print(table)
    if args.write:
        write_section(SECTION, body(command, table))


def body(command, table) -> str:
    return f"""
{header(command)}

The main job's pretraining pipelines (`gpt_tiny` / `bert_tiny` settings: T 64, batch 16,
Shakespeare's plays, a 4,000-piece WordPiece vocabulary, shuffle buffer 10,000 documents)
resumed at step N, timed to the first batch. Skip: `dataset.skip(N)`, reading, tokenizing,
packing or masking N batches (how a resume worked before). Restore: the iterator saved at
step N by `tf.train.Checkpoint` (how `Trainer` resumes now; the shuffle buffer and NSP
candidate buffer are in the checkpoint, hence its size). The restored batch equals the
skipped one. Weights and optimizer restore the same way in both and are not timed.

{table}
"""
