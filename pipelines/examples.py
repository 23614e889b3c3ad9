"""Preprocessed examples as TFRecord shards: tokenize once, train from them many times.

`write_example_shards(dataset, directory)` stores every element of a finite dataset (a
nest of dicts and tuples of numeric tensors, e.g. the `(x, y, sample_weight)` batches or
windows a preprocessor makes) as one TFRecord record: the serialized tensors of its
components, serialized together, all in-graph. `element_spec.json` beside the shards keeps
the structure, dtypes and shapes, so `read_example_shards(directory)` gives the same
elements back, the shards read interleaved.

Masks drawn by a `MaskedLMPreprocessor` are frozen when written (static masking, as BERT's
original `create_pretraining_data.py`); causal-LM packing is deterministic anyway.

Example:
>>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b"])
>>> documents = tf.data.Dataset.from_tensor_slices(["a b a", "b b", "a"])
>>> windows = tfllm.preprocessing.CausalLMPreprocessor(tokenizer, 4).pack(documents)
>>> write_example_shards(windows, "data/windows", num_shards=2)
['data/windows/examples-00000-of-00002.tfrecord', 'data/windows/examples-00001-of-00002.tfrecord']
>>> read_example_shards("data/windows").element_spec == windows.element_spec
True
>>> dataset = read_example_shards("data/windows").shuffle(10_000).repeat().batch(32)
"""

import json
from pathlib import Path

import tensorflow as tf

from tfllm.io import atomic_path

SPEC_FILE = "element_spec.json"


def _encode_spec(spec):
    if isinstance(spec, dict):
        return {"dict": {key: _encode_spec(value) for key, value in spec.items()}}
    if isinstance(spec, (tuple, list)):
        return {"tuple": [_encode_spec(value) for value in spec]}
    if isinstance(spec, tf.TensorSpec) and (spec.dtype.is_integer or spec.dtype.is_floating):
        return {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
    raise TypeError(
        f"`dataset` elements must be nests of dicts / tuples of numeric tensors (pad ragged "
        f"ones first). Received a component with spec {spec}"
    )


def _decode_spec(encoded):
    if "dict" in encoded:
        return {key: _decode_spec(value) for key, value in encoded["dict"].items()}
    if "tuple" in encoded:
        return tuple(_decode_spec(value) for value in encoded["tuple"])
    return tf.TensorSpec(encoded["shape"], encoded["dtype"])


def write_example_shards(dataset: tf.data.Dataset, directory, num_shards: int = 4) -> list[str]:
    """Writes the finite `dataset` round robin into `num_shards` TFRecord files.

    `directory` must not exist or be empty; it appears complete or not at all.
    Returns the shard paths.
    """
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"`num_shards` must be an int >= 1. Received: {num_shards!r}")
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError("`dataset` is infinite (`.repeat()`ed): write a finite one.")
    folder = Path(directory)
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"`directory` {str(folder)!r} exists and is not empty.")
    spec = _encode_spec(dataset.element_spec)  # checks the element types first

    def serialize(*element):
        parts = [tf.io.serialize_tensor(t) for t in tf.nest.flatten(element)]
        return tf.io.serialize_tensor(tf.stack(parts))

    names = [f"examples-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    with atomic_path(folder) as staging:  # replaces an empty `folder` whole
        staging.mkdir()
        writers = [tf.io.TFRecordWriter(str(staging / name)) for name in names]
        records = dataset.map(serialize, num_parallel_calls=tf.data.AUTOTUNE)
        for i, record in enumerate(records.as_numpy_iterator()):
            writers[i % num_shards].write(record)
        for writer in writers:
            writer.close()
        (staging / SPEC_FILE).write_text(json.dumps(spec))
    return [str(folder / name) for name in names]


def read_example_shards(directory) -> tf.data.Dataset:
    """The elements `write_example_shards` wrote into `directory`, shards interleaved."""
    folder = Path(directory)
    if not (folder / SPEC_FILE).is_file():
        raise ValueError(f"`directory` {str(folder)!r} holds no example shards ({SPEC_FILE}).")
    spec = _decode_spec(json.loads((folder / SPEC_FILE).read_text()))
    flat_spec = tf.nest.flatten(spec)
    files = sorted(str(p) for p in folder.glob("examples-*.tfrecord"))

    def parse(record):
        parts = tf.io.parse_tensor(record, tf.string)
        tensors = [
            tf.ensure_shape(tf.io.parse_tensor(parts[i], s.dtype), s.shape)
            for i, s in enumerate(flat_spec)
        ]
        return tf.nest.pack_sequence_as(spec, tensors)

    records = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
