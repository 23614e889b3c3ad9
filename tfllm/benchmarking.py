"""Benchmark pieces: models under test, synthetic batches, timing, MFU, decoding bound.

`tools/benchmark.py` is the command line; everything it measures with lives here so a
notebook or a test can reuse it. Figures are only comparable inside one run: time the
models interleaved (A B A B ...) and compare medians, as `interleaved_times` does.
"""

import concurrent.futures
import os
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

# The benchmark size of BENCHMARKS.md; tfllm's `gpt_bench` / `bert_bench` presets.
BENCH = dict(
    vocabulary_size=8192,
    num_layers=4,
    num_heads=4,
    hidden_dim=256,
    intermediate_dim=1024,
    max_sequence_length=128,
)
PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16"}


def masked_count(sequence_length):
    """Positions a masked LM predicts: 15%, rounded up (20 of 128)."""
    return -(-15 * sequence_length // 100)


def flops_per_token(backbone, sequence_length, predicted_positions=None):
    """Training FLOPs per token (forward + backward), as nanoGPT's `estimate_mfu` counts,
    with the matrix sizes read off the backbone's built kernels.

    `6 * matmul weights`: every kernel (weight of rank >= 2) in `backbone.transformer_layers`,
    so grouped-query attention's narrower key/value projections and SwiGLU's third matrix
    count as built, plus the `V x d` output projection; plus attention scores and values,
    `12 * T * (heads * head size)` per block. Embedding lookups, norms and biases are left
    out, and so is the masked LM's saving of computing the last block at `P` rows only.

    Args:
        backbone: a built `GPTBackbone` or `BertBackbone`.
        sequence_length: tokens per sequence `T`.
        predicted_positions: `None` when every position reaches the output projection
            (causal LM); a masked LM's `P`: `P` rows per sequence go through its `d x d`
            transform and the output projection.

    Example:
    >>> from tfllm.models import GPTBackbone
    >>> round(flops_per_token(GPTBackbone.from_preset("gpt_bench"), 128) / 1e6, 1)
    33.0
    """
    if not hasattr(backbone, "transformer_layers"):
        raise TypeError(f"`backbone` must be a tfllm backbone. Received: {type(backbone).__name__}")
    if not isinstance(sequence_length, int) or sequence_length < 1:
        raise ValueError(f"`sequence_length` must be a positive int. Received: {sequence_length!r}")
    body = attention = 0
    for block in backbone.transformer_layers:
        body += sum(np.prod(w.shape) for w in block.weights if len(w.shape) >= 2)
        attention += 12 * sequence_length * block.attention.output_dense.kernel.shape[0]
    vocabulary_size, d = backbone.token_embedding.embeddings.shape
    if predicted_positions is None:
        head = vocabulary_size * d
    else:
        head = (vocabulary_size * d + d * d) * predicted_positions / sequence_length
    return float(6 * (body + head) + attention)


def task_flops_per_token(task, sequence_length=128):
    """`flops_per_token` of the `BENCH` size for "gpt" (all positions predicted) or
    "bert" (masked LM: `masked_count` positions reach the head)."""
    from tfllm.models import BertBackbone, GPTBackbone

    if task not in ("gpt", "bert"):
        raise ValueError(f"`task` must be 'gpt' or 'bert'. Received: {task!r}")
    if task == "gpt":
        return flops_per_token(GPTBackbone.from_preset("gpt_bench"), sequence_length)
    backbone = BertBackbone.from_preset("bert_bench")
    return flops_per_token(backbone, sequence_length, masked_count(sequence_length))


def peak_flops(dtype="float32", size=2048):
    """The machine's measured matmul rate in FLOP/s for `dtype` (a run's compute dtype).

    Example:
    >>> peak_flops("bfloat16", size=256) > 0
    True
    """
    return 2 * size**3 / matmul_timer(dtype, size=size)()


def matmul_timer(dtype="float32", size=4096, repeats=3):
    """A callable timing a `size x size` `tf.matmul`: seconds per product (median of `repeats`).

    Traced and run once here; `2 * size**3 / seconds` is the machine's matmul rate.

    Example:
    >>> timer = matmul_timer("float32", size=256)
    >>> 2 * 256**3 / timer() / 1e9 > 0  # GFLOP/s
    True
    """
    a = tf.cast(tf.random.normal((size, size)), dtype)
    product = tf.function(lambda x: tf.reduce_sum(tf.cast(tf.matmul(x, x), tf.float32)))
    product(a).numpy()

    def timer():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            product(a).numpy()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return timer


def memory_bandwidth(megabytes=512, repeats=5):
    """The machine's memory bandwidth in bytes/s: a large float32 array copy.

    `megabytes` are copied into a preallocated array (no page faults timed), in one slice
    per CPU core on as many threads (numpy releases the GIL); bytes moved (read plus
    written) over the best of `repeats` times.

    Example:
    >>> memory_bandwidth(megabytes=8) > 0
    True
    """
    source = np.ones(megabytes * 2**20 // 4, np.float32)
    target = np.zeros_like(source)
    parts = np.array_split(np.arange(source.size), os.cpu_count() or 1)
    slices = [slice(part[0], part[-1] + 1) for part in parts if part.size]
    with concurrent.futures.ThreadPoolExecutor(len(slices)) as pool:
        times = []
        for _ in range(repeats + 1):  # the first one warms the threads up
            start = time.perf_counter()
            list(pool.map(lambda s: np.copyto(target[s], source[s]), slices))
            times.append(time.perf_counter() - start)
    return 2 * source.nbytes / min(times[1:])


def read_bandwidth(megabytes=512, repeats=5):
    """The machine's read-only memory bandwidth in bytes/s: a large float32 array read.

    What a decoding step does with its weights (reads, no writes), unlike the copy of
    `memory_bandwidth`, whose figure counts the written bytes too. One slice per CPU core
    on as many threads, each a dot product of its slice with itself (BLAS releases the
    GIL); bytes read over the best of `repeats` times.

    Example:
    >>> read_bandwidth(megabytes=8) > 0
    True
    """
    source = np.ones(megabytes * 2**20 // 4, np.float32)
    parts = np.array_split(np.arange(source.size), os.cpu_count() or 1)
    slices = [source[part[0] : part[-1] + 1] for part in parts if part.size]
    with concurrent.futures.ThreadPoolExecutor(len(slices)) as pool:
        times = []
        for _ in range(repeats + 1):  # the first one warms the threads up
            start = time.perf_counter()
            list(pool.map(lambda part: np.dot(part, part), slices))
            times.append(time.perf_counter() - start)
    return source.nbytes / min(times[1:])


def decode_bytes_per_step(backbone, batch_size, cache_length):
    """Bytes that one decoding step of a `GPTBackbone` must read from memory.

    Every weight once (the tied token embedding projects to the vocabulary), except the
    position table, of which each row reads one line; plus the whole KV cache (keys and
    values of `cache_length` positions in every layer), which attention reads every step.
    `bytes / memory_bandwidth()` is the step's lower bound in seconds.

    Example:
    >>> gpt = GPTBackbone.from_preset("gpt_tiny")
    >>> table = gpt.position_layer.embeddings.numpy().nbytes
    >>> weights = sum(w.numpy().nbytes for w in gpt.weights) - table
    >>> cache = 2 * 2 * 64 * 4 * 96  # k and v, 2 layers, d 64, float32, S 96
    >>> decode_bytes_per_step(gpt, 1, 96) == weights + cache
    True
    """
    positions = getattr(backbone.position_layer, "weights", [])
    skip = {id(w) for w in positions}
    weights = sum(
        int(np.prod(w.shape)) * tf.as_dtype(w.dtype).size
        for w in backbone.weights
        if id(w) not in skip
    )
    cache = backbone.init_cache(batch_size, cache_length)
    return weights + sum(int(tf.size(c)) * c.dtype.size for c in tf.nest.flatten(cache))


def synthetic_batch(task, batch_size=16, sequence_length=128, vocabulary_size=8192, seed=0):
    """In-memory `(x, y)` int32 tensors for `task` "gpt" (causal LM) or "bert" (masked LM).

    The masked LM predicts `masked_count` positions (20 of 128), sorted, distinct per row.
    """
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocabulary_size, (batch_size, sequence_length + 1), dtype=np.int32)
    ones = np.ones((batch_size, sequence_length), np.int32)
    if task == "gpt":
        x = {"token_ids": ids[:, :-1], "padding_mask": ones}
        y = ids[:, 1:]
    elif task == "bert":
        count = masked_count(sequence_length)
        positions = np.sort(
            np.stack([rng.permutation(sequence_length)[:count] for _ in range(batch_size)]), 1
        ).astype(np.int32)
        x = {
            "token_ids": ids[:, :-1],
            "segment_ids": 0 * ones,
            "padding_mask": ones,
            "mask_positions": positions,
        }
        y = np.take_along_axis(ids[:, :-1], positions, axis=1)
    else:
        raise ValueError(f"`task` must be 'gpt' or 'bert'. Received: {task!r}")
    return tf.nest.map_structure(tf.constant, x), tf.constant(y)


def build_models(task, precision="fp32", dropout=0.1):
    """`{"tfllm": model, "keras-hub": model}` of one size, compiled alike (AdamW, no
    metrics, no XLA), each with its library's sparse cross-entropy and AdamW (tfllm's
    `tfllm.training.AdamW`, Keras's for keras-hub).

    The global dtype policy is set for the build and restored afterwards.
    """
    import keras_hub

    from tfllm.losses import SparseCategoricalCrossentropy
    from tfllm.models import BertBackbone, CausalLM, GPTBackbone, MaskedLM
    from tfllm.training import AdamW

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISIONS[precision])
    try:
        if task == "gpt":
            ours = CausalLM(GPTBackbone.from_preset("gpt_bench", dropout=dropout))
            theirs = keras_hub.models.GPT2CausalLM(
                backbone=keras_hub.models.GPT2Backbone(**BENCH, dropout=dropout),
                preprocessor=None,
            )
        elif task == "bert":
            ours = MaskedLM(BertBackbone.from_preset("bert_bench", dropout=dropout))
            theirs = keras_hub.models.BertMaskedLM(
                backbone=keras_hub.models.BertBackbone(**BENCH, dropout=dropout),
                preprocessor=None,
            )
        else:
            raise ValueError(f"`task` must be 'gpt' or 'bert'. Received: {task!r}")
    finally:
        keras.config.set_dtype_policy(previous)
    # Each library's own loss and AdamW (the same values): tfllm's are faster.
    losses = (SparseCategoricalCrossentropy(), keras.losses.SparseCategoricalCrossentropy(True))
    optimizers = (AdamW(1e-4), keras.optimizers.AdamW(1e-4))
    for model, loss, optimizer in zip((ours, theirs), losses, optimizers, strict=True):
        model.compile(optimizer, loss, weighted_metrics=None, jit_compile=False)
    return {"tfllm": ours, "keras-hub": theirs}


def step_timer(model, batch, steps):
    """A callable timing `steps` consecutive `train_on_batch` calls: seconds per step."""
    x, y = batch

    def timer():
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)  # returns Python floats: each step is synchronous
        return (time.perf_counter() - start) / steps

    return timer


def interleaved_times(timers, rounds, warmup=1):
    """Calls every timer of the dict `timers` `rounds` times, interleaved (A B A B ...).

    Each timer first runs `warmup` times untimed. Each round visits the timers in turn,
    in reverse on odd rounds so that neither side of a pair always runs first; a noisy
    machine then slows both sides alike. Returns `{name: [one result per round]}`.
    """
    for timer in timers.values():
        for _ in range(warmup):
            timer()
    times = {name: [] for name in timers}
    for r in range(rounds):
        for name in list(timers)[:: -1 if r % 2 else 1]:
            times[name].append(timers[name]())
    return times


def markdown_table(header, rows):
    """A GitHub markdown table from a header and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(text, heading, body):
    """`text` with the markdown section `heading` (through the next `## `) set to `body`.

    The section is appended when absent.

    Example:
    >>> replace_section("# T\\n\\n## A\\nold\\n\\n## B\\nb\\n", "## A", "new")
    '# T\\n\\n## A\\nnew\\n\\n## B\\nb\\n'
    """
    section = f"{heading}\n{body.strip()}\n"
    start = text.find(heading + "\n")
    if start < 0:
        return text.rstrip("\n") + "\n\n" + section
    end = text.find("\n## ", start + len(heading))
    rest = "" if end < 0 else "\n" + text[end + 1 :]
    return text[:start] + section + rest
