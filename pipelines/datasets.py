r"""tf.data input pipelines: text, JSONL and TFRecord files -> preprocessed global batches.

Documents come from plain text files (paragraphs separated by blank lines; lines are
sentences), JSONL records `{"id", "text", "source"}` (one document each; lines of `text`
are sentences) or TFRecord shards of `tf.train.Example`s with a `text` feature (see
`write_tfrecords`). Every pipeline is deterministic for a given seed, and its iterator
can be checkpointed (except on a tf.data service), so a run resumes at the batch it
stopped at.

Example:
>>> from tfllm.config import RunConfig
>>> from tfllm.preprocessing import CausalLMPreprocessor
>>> from tfllm.tokenizers import WordPieceTokenizer
>>> _ = Path("corpus.txt").write_text("the cat sat.\nthe dog ran.\n\na cat ran.\n")
>>> [document.numpy() for document in read_documents(["corpus.txt"], "text")]
[b'the cat sat.\nthe dog ran.', b'a cat ran.']
>>> tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a",
...                                 "cat", "dog", "sat", "ran", "."])
>>> config = RunConfig(task="causal_lm", model="gpt_tiny", sequence_length=8, batch_size=2)
>>> preprocessor = CausalLMPreprocessor(tokenizer, sequence_length=8)
>>> dataset_fn = pretraining_dataset_fn(config, preprocessor, ["corpus.txt"])
>>> x, y, weights = next(iter(dataset_fn(tf.distribute.InputContext())))
>>> x["token_ids"].shape, y.shape  # documents packed into windows; `y` is shifted by one
(TensorShape([2, 8]), TensorShape([2, 8]))

`dataset_fn` is what `tfllm.trainer.Trainer.fit` takes.
"""

import contextlib
import glob
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from tfllm.io import atomic_path
from tfllm.preprocessing import CausalLMPreprocessor, MaskedLMPreprocessor, nsp_pairs

PARAGRAPH_BREAK = r"\n[ \t\r]*\n"


def expand_files(patterns: Iterable[str], argument: str = "train_files") -> list[str]:
    """Sorted files matching the glob `patterns`; `ValueError` if none, or one is empty."""
    files = sorted({f for p in patterns for f in glob.glob(os.path.expanduser(p), recursive=True)})
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        raise ValueError(f"`{argument}` matches no files. Received: {list(patterns)}")
    empty = [f for f in files if os.path.getsize(f) == 0]
    if empty:
        raise ValueError(f"`{argument}` has empty files: {empty[:5]}")
    return files


def write_tfrecords(texts: Iterable[str], directory, num_shards: int = 4) -> list[str]:
    """Writes texts round robin into `num_shards` TFRecord files of `tf.train.Example`s."""
    folder = Path(directory)
    paths = [str(folder / f"shard-{i:05d}-of-{num_shards:05d}.tfrecord") for i in range(num_shards)]
    # Writers close before the temporaries are renamed (the stack unwinds in reverse).
    with contextlib.ExitStack() as stack:
        temps = [stack.enter_context(atomic_path(p)) for p in paths]
        writers = [stack.enter_context(tf.io.TFRecordWriter(str(t))) for t in temps]
        for i, text in enumerate(texts):
            feature = {
                "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()]))
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writers[i % num_shards].write(example.SerializeToString())
    return paths


def _jsonl_texts(path, numbers, lines) -> np.ndarray:
    """The `text` fields of JSON lines (eager tensors, in a `tf.py_function`)."""
    texts = []
    for number, line in zip(numbers.numpy(), lines.numpy(), strict=True):
        where = f"{path.numpy().decode()}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where} is not valid JSON: {error}") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f"{where} has no string `text` field.")
        texts.append(record["text"].encode())
    return np.array(texts, dtype=object)


def _jsonl_file(path) -> tf.data.Dataset:
    """The `text` of every non-blank line of a JSONL file.

    `TextLineDataset` rather than a Python generator: its position can be checkpointed.
    Lines are parsed in batches of 256 in Python (TensorFlow has no JSON op).
    """
    lines = tf.data.TextLineDataset(path).enumerate(start=1)
    lines = lines.filter(lambda _, line: tf.strings.length(tf.strings.strip(line)) > 0)

    def parse(numbers, lines):
        texts = tf.py_function(_jsonl_texts, [path, numbers, lines], tf.string)
        return tf.ensure_shape(texts, [None])

    return lines.batch(256).map(parse).unbatch()


def _interleave(files: list[str], read_file) -> tf.data.Dataset:
    """Records of up to 8 files at a time, read in parallel, in a deterministic order."""
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        read_file,
        cycle_length=min(len(files), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def read_documents(files: list[str], data_format: str) -> tf.data.Dataset:
    """A dataset of documents, each a scalar string, from files of one format.

    Files are interleaved (one record from each of up to 8 open files in turn).
    """
    if data_format == "text":

        def paragraphs(path):
            text = tf.strings.regex_replace(tf.io.read_file(path), "\r\n", "\n")
            parts = tf.strings.strip(tf_text.regex_split([text], PARAGRAPH_BREAK).flat_values)
            return tf.data.Dataset.from_tensor_slices(tf.boolean_mask(parts, parts != ""))

        return _interleave(files, paragraphs)
    if data_format == "jsonl":
        return _interleave(files, _jsonl_file)
    if data_format == "tfrecord":
        spec = {"text": tf.io.FixedLenFeature([], tf.string)}
        records = _interleave(files, tf.data.TFRecordDataset)
        return records.map(lambda r: tf.io.parse_single_example(r, spec)["text"])
    raise ValueError(f"`data_format` must be text, jsonl or tfrecord. Received: {data_format!r}")


def _sentences(document):
    lines = tf.strings.strip(tf.strings.split(document, "\n"))
    return tf.boolean_mask(lines, lines != "")


def shuffled_epochs(
    dataset: tf.data.Dataset, buffer_size: int, seed: int | None
) -> tf.data.Dataset:
    """`dataset` repeated forever, each epoch shuffled with a seed derived from `(seed, epoch)`.

    Unlike `shuffle(seed=...).repeat()`, whose iterators draw their orders from one shared
    seed generator, every iterator over the result sees the same order however many
    iterate it at once (NSP pairs read the documents three times, from parallel threads).
    """
    if seed is None:
        return dataset.shuffle(buffer_size).repeat()

    def epoch(index):
        # Pins this function graph's global seed only: TF's `get_seed` cannot take a
        # tensor op seed when the caller's global seed is 0.
        tf.random.set_seed(1)
        key = tf.stack([tf.constant(seed, tf.int64), index])
        epoch_seed = tf.random.stateless_uniform(
            [], seed=key, minval=None, maxval=None, dtype=tf.int64
        )
        return dataset.shuffle(buffer_size, seed=epoch_seed)

    return tf.data.Dataset.counter().flat_map(epoch)


def pretraining_dataset_fn(
    config, preprocessor, files: list[str], training: bool = True
) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """`InputContext -> Dataset` of per-replica batches for `config.task`.

    Each input pipeline (one per worker) reads its own files (its own records when there
    are fewer files than workers), shuffles documents with `config.seed` when `training`,
    repeats, preprocesses (causal LM: documents packed into windows) and batches with
    `config.batch_size / replicas`. With `config.tf_data_service` set, the pipeline runs
    on that tf.data service (dispatcher address) instead of locally.
    """
    if config.task == "causal_lm" and not isinstance(preprocessor, CausalLMPreprocessor):
        raise TypeError("`causal_lm` needs a CausalLMPreprocessor.")
    if config.task != "causal_lm" and not isinstance(preprocessor, MaskedLMPreprocessor):
        raise TypeError(f"`{config.task}` needs a MaskedLMPreprocessor.")

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch_size = context.get_per_replica_batch_size(config.batch_size)
        pipelines, index = context.num_input_pipelines, context.input_pipeline_id
        if len(files) >= pipelines:
            documents = read_documents(files[index::pipelines], config.data_format)
        else:
            documents = read_documents(files, config.data_format).shard(pipelines, index)
        if training:
            documents = shuffled_epochs(documents, config.shuffle_buffer, config.seed)
        if config.task == "causal_lm":
            examples = preprocessor.pack(documents).batch(batch_size, drop_remainder=True)
        else:
            if config.task == "bert_pretraining":
                documents = nsp_pairs(documents.map(_sentences), seed=config.seed)
            batches = documents.batch(batch_size, drop_remainder=True).enumerate()

            def mask(number, batch):
                # Batch `number`'s masks depend on the seed, that number and this pipeline
                # only: a resumed iterator replays them, and workers draw different ones.
                preprocessor.restart_masks(number * pipelines + index)
                return preprocessor(*batch) if isinstance(batch, tuple) else preprocessor(batch)

            # Sequential map: the batches take turns on the preprocessor's generator.
            examples = batches.map(mask)
        # The iterator can be checkpointed (`tfllm.trainer.Trainer` saves its position)
        # once the state outside it is known to be safe to leave out: the seed generators
        # of the per-epoch shuffles (each epoch's dataset is read once, seeded by its
        # number), the mask generator (restarted at every batch), `py_function` (parses
        # JSON only). The default policy refuses to save a pipeline with such state.
        options, policy = tf.data.Options(), tf.data.experimental.ExternalStatePolicy
        options.experimental_external_state_policy = policy.IGNORE
        examples = examples.with_options(options)
        if config.tf_data_service:
            examples = examples.apply(
                tf.data.experimental.service.distribute(
                    processing_mode=tf.data.experimental.service.ShardingPolicy.OFF,
                    service=config.tf_data_service,
                    job_name=f"{config.name}-{'train' if training else 'validation'}-{index}",
                )
            )
        return examples.prefetch(tf.data.AUTOTUNE)

    return dataset_fn
