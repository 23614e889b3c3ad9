"""Input pipelines: file formats, sharding, determinism, tf.data service."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipelines.datasets import (
    expand_files,
    pretraining_dataset_fn,
    read_documents,
    shuffled_epochs,
    write_tfrecords,
)
from pipelines.examples import read_example_shards, write_example_shards
from tfllm.config import RunConfig
from tfllm.preprocessing import CausalLMPreprocessor, MaskedLMPreprocessor
from tfllm.pretraining import tf_data_service_servers
from tfllm.tokenizers import WordPieceTokenizer

WORDS = [
    "the",
    "king",
    "queen",
    "said",
    "to",
    "a",
    "and",
    "of",
    "love",
    "night",
    "day",
    "sword",
    "crown",
    "is",
    "was",
    "my",
]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *WORDS]
DOCUMENTS = [
    "the king said to the queen .\nthe queen said , my love .",
    "a sword and a crown .\nthe night was day .",
    "my love is the night .\nthe king was a sword .\nthe crown is my day .",
    "to the queen , the king said .",
]


@pytest.fixture
def tokenizer():
    return WordPieceTokenizer(VOCAB)


@pytest.fixture
def text_files(tmp_path):
    paths = []
    for i in range(2):
        path = tmp_path / f"part{i}.txt"
        path.write_text("\n\n".join(DOCUMENTS[2 * i : 2 * i + 2]) + "\n")
        paths.append(str(path))
    return paths


def _texts(dataset):
    return [t.decode() for t in dataset.as_numpy_iterator()]


def test_text_jsonl_and_tfrecord_give_the_same_documents(tmp_path, text_files):
    interleaved = [DOCUMENTS[i] for i in (0, 2, 1, 3)]  # one from each file in turn
    assert _texts(read_documents(text_files, "text")) == interleaved
    jsonl = tmp_path / "docs.jsonl"
    records = [{"id": str(i), "text": d, "source": "test"} for i, d in enumerate(DOCUMENTS)]
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert _texts(read_documents([str(jsonl)], "jsonl")) == DOCUMENTS
    shards = write_tfrecords(DOCUMENTS, tmp_path / "shards", num_shards=2)
    assert len(shards) == 2 and not list((tmp_path / "shards").glob("*.tmp"))
    assert sorted(_texts(read_documents(shards, "tfrecord"))) == sorted(DOCUMENTS)


def test_expand_files_errors(tmp_path):
    with pytest.raises(ValueError, match="matches no files"):
        expand_files([str(tmp_path / "*.txt")])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty files"):
        expand_files([str(tmp_path / "*.txt")])


def test_jsonl_without_text_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"id": "2"}\n')
    with pytest.raises(Exception, match="bad.jsonl:2"):
        _texts(read_documents([str(path)], "jsonl"))


def _first_batches(dataset_fn, count, context=None):
    dataset = dataset_fn(context or tf.distribute.InputContext())
    return [tf.nest.map_structure(np.asarray, b) for b in dataset.take(count)]


def _equal(a, b):
    return all(
        np.array_equal(x, y) for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b), strict=True)
    )


@pytest.mark.parametrize("global_seed", [None, 0])
def test_shuffled_epochs_are_permutations_that_parallel_readers_agree_on(global_seed):
    if global_seed is not None:
        tf.random.set_seed(global_seed)
    epochs = shuffled_epochs(tf.data.Dataset.range(6), 6, seed=4)
    # Two readers that pull from parallel threads: with a shared seed generator their
    # epochs would be permuted in whatever order the threads happened to start them.
    readers = [epochs.map(lambda x: x, num_parallel_calls=4).batch(6) for _ in range(2)]
    together = tf.data.Dataset.zip(*readers).take(5)
    for a, b in together.as_numpy_iterator():
        np.testing.assert_array_equal(a, b)
        assert sorted(a) == list(range(6))
    orders = [tuple(a) for a, _ in together.as_numpy_iterator()]
    assert len(set(orders)) > 1 and orders == [tuple(a) for a, _ in together.as_numpy_iterator()]


@pytest.mark.parametrize("task", ["causal_lm", "masked_lm", "bert_pretraining"])
def test_pipelines_are_deterministic_and_batched(task, tokenizer, text_files):
    config = RunConfig(task=task, batch_size=4, sequence_length=8, seed=3, shuffle_buffer=10)
    make = CausalLMPreprocessor if task == "causal_lm" else MaskedLMPreprocessor
    kwargs = {} if task == "causal_lm" else {"seed": 3, "max_predictions_per_seq": 3}
    runs = [
        _first_batches(pretraining_dataset_fn(config, make(tokenizer, 8, **kwargs), text_files), 6)
        for _ in range(2)
    ]
    assert all(_equal(a, b) for a, b in zip(*runs, strict=True))
    x, y, weights = runs[0][0]
    assert x["token_ids"].shape == (4, 8)
    if task == "causal_lm":
        assert x["segment_ids"].shape == (4, 8)  # packed documents
    if task == "bert_pretraining":
        assert set(y) == {"mlm", "nsp"} and y["nsp"].shape == (4,)


def test_workers_read_disjoint_shards(tokenizer, text_files):
    config = RunConfig(task="causal_lm", batch_size=4, sequence_length=6)
    dataset_fn = pretraining_dataset_fn(
        config, CausalLMPreprocessor(tokenizer, 6), text_files, training=False
    )
    seen = []
    for index in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=index, num_replicas_in_sync=2
        )
        batches = _first_batches(dataset_fn, 10, context)
        assert batches[0][0]["token_ids"].shape == (2, 6)  # per-replica batch
        seen.append({int(t) for b in batches for t in b[0]["token_ids"].ravel()} - {0, 2, 3})
    words_of = [{tokenizer.token_to_id(w) for w in d.split()} for d in DOCUMENTS]
    assert seen[0] <= words_of[0] | words_of[1] and seen[1] <= words_of[2] | words_of[3]


def test_wrong_preprocessor_for_the_task(tokenizer, text_files):
    with pytest.raises(TypeError, match="MaskedLMPreprocessor"):
        pretraining_dataset_fn(
            RunConfig(task="masked_lm"), CausalLMPreprocessor(tokenizer, 8), text_files
        )


def test_tf_data_service_serves_the_same_batches(tokenizer, text_files):
    target, servers = tf_data_service_servers()
    local = RunConfig(task="causal_lm", batch_size=2, sequence_length=6)
    remote = local.replace(tf_data_service=target, name="service-test")
    preprocessor = CausalLMPreprocessor(tokenizer, 6)
    expected = _first_batches(pretraining_dataset_fn(local, preprocessor, text_files, False), 3)
    served = _first_batches(pretraining_dataset_fn(remote, preprocessor, text_files, False), 3)
    assert all(_equal(a, b) for a, b in zip(expected, served, strict=True))
    del servers


def test_example_shards_round_trip_preprocessed_windows(tmp_path, tokenizer, text_files):
    windows = CausalLMPreprocessor(tokenizer, 6).pack(read_documents(text_files, "text"))
    paths = write_example_shards(windows, tmp_path / "windows", num_shards=3)
    assert len(paths) == 3 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    reread = read_example_shards(tmp_path / "windows")
    assert reread.element_spec == windows.element_spec
    expected, got = list(windows.as_numpy_iterator()), list(reread.as_numpy_iterator())
    # Round robin over 3 shards, read back interleaved: the same order.
    assert len(got) == len(expected) > 3
    assert all(_equal(a, b) for a, b in zip(got, expected, strict=True))


def test_example_shards_errors(tmp_path, tokenizer):
    strings = tf.data.Dataset.from_tensor_slices(["a", "b"])
    with pytest.raises(TypeError, match="numeric tensors"):
        write_example_shards(strings, tmp_path / "s")
    with pytest.raises(ValueError, match="infinite"):
        write_example_shards(tf.data.Dataset.range(3).repeat(), tmp_path / "s")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        write_example_shards(tf.data.Dataset.range(3), tmp_path / "full")
    with pytest.raises(ValueError, match="no example shards"):
        read_example_shards(tmp_path / "full")
    assert not (tmp_path / "s").exists()


def _jsonl_files(tmp_path, text_files):
    paths = []
    for path in map(Path, text_files):
        documents = path.read_text().strip().split("\n\n")
        jsonl = tmp_path / (path.name + ".jsonl")
        jsonl.write_text("".join(json.dumps({"text": d}) + "\n\n" for d in documents))
        paths.append(str(jsonl))
    return paths


@pytest.mark.parametrize(
    "task, data_format",
    [("causal_lm", "text"), ("causal_lm", "jsonl"), ("masked_lm", "text"),
     ("bert_pretraining", "jsonl")],
)  # fmt: skip
def test_a_checkpointed_iterator_resumes_with_the_same_batches(
    task, data_format, tmp_path, tokenizer, text_files
):
    """Shuffled epochs, packing, NSP pairs and masks: a restored iterator goes on exactly
    as the one that was saved (before: the pipeline could not be checkpointed at all)."""
    files = _jsonl_files(tmp_path, text_files) if data_format == "jsonl" else text_files
    config = RunConfig(task=task, batch_size=2, sequence_length=8, seed=3, shuffle_buffer=3,
                       data_format=data_format)  # fmt: skip
    make = CausalLMPreprocessor if task == "causal_lm" else MaskedLMPreprocessor
    kwargs = {} if task == "causal_lm" else {"seed": 3, "max_predictions_per_seq": 3}
    dataset_fn = pretraining_dataset_fn(config, make(tokenizer, 8, **kwargs), files)
    iterator = iter(dataset_fn(tf.distribute.InputContext()))
    for _ in range(5):  # into the second epoch
        next(iterator)
    path = tf.train.Checkpoint(data=iterator).save(str(tmp_path / "ckpt" / "input"))
    expected = [tf.nest.map_structure(np.asarray, next(iterator)) for _ in range(6)]
    # A new pipeline (a new process, in effect): a new preprocessor and its generator.
    resumed = iter(pretraining_dataset_fn(config, make(tokenizer, 8, **kwargs), files)(
        tf.distribute.InputContext()))  # fmt: skip
    tf.train.Checkpoint(data=resumed).restore(path).assert_consumed()
    got = [tf.nest.map_structure(np.asarray, next(resumed)) for _ in range(6)]
    assert all(_equal(a, b) for a, b in zip(expected, got, strict=True))


def test_restarted_masks_depend_on_the_index_only(tokenizer):
    preprocessor = MaskedLMPreprocessor(tokenizer, 16, seed=3, max_predictions_per_seq=3)
    texts = [" ".join(WORDS)] * 4

    def masks(index):
        preprocessor.restart_masks(index)
        return preprocessor(texts)[0]["mask_positions"].numpy()

    first = masks(7)
    preprocessor(texts)  # draws in between do not matter
    np.testing.assert_array_equal(masks(7), first)
    assert not np.array_equal(masks(8), first)
