"""Shards: records -> train/validation JSONL or TFRecord files for `pipelines/datasets.py`.

A record goes to validation when the BLAKE2b hash of its `id` falls below
`validation_fraction`, so the split is stable across runs, runners and worker counts.
JSONL shards hold the records (`{"id", "text", "source", ...}`, read with
`data_format="jsonl"`); TFRecord shards hold `tf.train.Example`s with a `text` bytes
feature, as `pipelines.datasets.write_tfrecords` writes them (`data_format="tfrecord"`).

Example:
    >>> records = [{"id": str(i), "text": f"document {i}"} for i in range(100)]
    >>> write_shards(records, "data/shards", validation_fraction=0.05, num_shards=2)
    {'train': ['data/shards/train-00000-of-00002.jsonl', 'data/shards/train-00001-of-00002.jsonl'],
     'validation': ['data/shards/validation-00000-of-00002.jsonl', ...]}
    >>> [split_of(r["id"], 0.05) for r in records].count("validation")  # the same every run
    4
"""

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import apache_beam as beam

SHARD_FORMATS = ("jsonl", "tfrecord")


def split_of(record_id: str, validation_fraction: float) -> str:
    """`"validation"` or `"train"`, decided by the hash of `record_id`."""
    digest = hashlib.blake2b(record_id.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "big") / 2**64
    return "validation" if value < validation_fraction else "train"


def _check(validation_fraction: float, num_shards: int, data_format: str) -> None:
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(
            f"`validation_fraction` must be in [0, 1). Received: {validation_fraction}"
        )
    if num_shards < 1:
        raise ValueError(f"`num_shards` must be a positive integer. Received: {num_shards}")
    if data_format not in SHARD_FORMATS:
        raise ValueError(f"`data_format` must be one of {SHARD_FORMATS}. Received: {data_format!r}")


def serialize_example(text: str) -> bytes:
    """A `tf.train.Example` with one `text` bytes feature, serialized."""
    import tensorflow as tf

    feature = {"text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shards(
    records: Iterable[dict],
    folder,
    validation_fraction: float = 0.01,
    num_shards: int = 4,
    data_format: str = "jsonl",
) -> dict[str, list[str]]:
    """Writes records round robin into `<split>-0000i-of-0000n.<jsonl|tfrecord>`, atomically.

    Returns:
        `{"train": paths, "validation": paths}` (a split without records has no files).
    """
    _check(validation_fraction, num_shards, data_format)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "jsonl" if data_format == "jsonl" else "tfrecord"
    written: dict[str, list] = {"train": [], "validation": []}
    counts = {"train": 0, "validation": 0}
    handles: dict[tuple[str, int], object] = {}
    try:
        with contextlib.ExitStack() as stack:  # Closes every shard, also on failure.

            def handle(split: str, index: int):
                if (split, index) not in handles:
                    path = folder / f"{split}-{index:05d}-of-{num_shards:05d}.{suffix}"
                    temporary = str(path) + ".tmp"
                    written[split].append((temporary, str(path)))
                    if data_format == "jsonl":
                        writer = open(temporary, "w", encoding="utf-8")  # noqa: SIM115 (ExitStack)
                    else:
                        import tensorflow as tf

                        writer = tf.io.TFRecordWriter(temporary)
                    handles[split, index] = stack.enter_context(writer)
                return handles[split, index]

            for record in records:
                split = split_of(record["id"], validation_fraction)
                writer = handle(split, counts[split] % num_shards)
                counts[split] += 1
                if data_format == "jsonl":
                    writer.write(json.dumps(record, ensure_ascii=False) + "\n")
                else:
                    writer.write(serialize_example(record["text"]))
    except BaseException:
        for temporary, _ in written["train"] + written["validation"]:
            if os.path.exists(temporary):
                os.remove(temporary)
        raise
    for pairs in written.values():
        for temporary, path in pairs:
            os.replace(temporary, path)  # Never a half-written shard under the final name.
    return {split: sorted(path for _, path in pairs) for split, pairs in written.items()}


class WriteShards(beam.PTransform):
    """Beam sink: `<folder>/<split>-SSSSS-of-NNNNN.<jsonl|tfrecord>` (Beam renames on finish)."""

    def __init__(
        self,
        folder: str,
        validation_fraction: float = 0.01,
        num_shards: int = 4,
        data_format: str = "jsonl",
    ):
        super().__init__()
        _check(validation_fraction, num_shards, data_format)
        self.folder, self.fraction = folder, validation_fraction
        self.num_shards, self.data_format = num_shards, data_format

    def expand(self, records):
        fraction = self.fraction
        train, validation = records | beam.Partition(
            lambda r, _: int(split_of(r["id"], fraction) == "validation"), 2
        )
        results = {}
        for split, pcoll in (("train", train), ("validation", validation)):
            prefix = os.path.join(self.folder, split)
            if self.data_format == "jsonl":
                results[split] = (
                    pcoll
                    | f"{split}ToJson" >> beam.Map(lambda r: json.dumps(r, ensure_ascii=False))
                    | f"Write{split}"
                    >> beam.io.WriteToText(
                        prefix, file_name_suffix=".jsonl", num_shards=self.num_shards
                    )
                )
            else:
                results[split] = (
                    pcoll
                    | f"{split}ToExample" >> beam.Map(lambda r: serialize_example(r["text"]))
                    | f"Write{split}"
                    >> beam.io.WriteToTFRecord(
                        prefix, file_name_suffix=".tfrecord", num_shards=self.num_shards
                    )
                )
        return results  # the written file names, per split
