"""Preprocessors: known answers on a tiny vocabulary, masking statistics, packing invariants."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfllm import assets
from tfllm.preprocessing import (
    BertPreprocessor,
    CausalLMPreprocessor,
    MaskedLMPreprocessor,
    TokenClassificationPreprocessor,
    nsp_pairs,
    pack_documents,
)
from tfllm.tokenizers import BytePairTokenizer, WordPieceTokenizer
from tfllm.tokenizers.byte_pair import bytes_to_unicode

# fmt: off
VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",                        # 0-4
    "the", "a", "cat", "dog", "sat", "on", "mat", "ran", "play",         # 5-13
    "##s", "##ing", "##ed", "big", "red", "empire", "state", "build",    # 14-21
    "new", "york", "@", "paul", "##walk", "view", "from", ".", ",",      # 22-30
    "is", "storm", "here",                                               # 31-33
]
# fmt: on
PAD, UNK, CLS, SEP, MASK = range(5)
SPECIALS = {PAD, CLS, SEP, MASK}
WORDS = ["the", "a", "cats", "dog", "sat", "on", "mat", "ran", "playing", "played", "big"]
WORDS += ["red", "dogs", "paulwalk", "view", "from", "storm", "here", "is", "new", "york"]
# WNUT 2017 label names, in the order of the Hugging Face `wnut_17` dataset.
WNUT_LABELS = ["O", "B-corporation", "I-corporation", "B-creative-work", "I-creative-work"]
WNUT_LABELS += ["B-group", "I-group", "B-location", "I-location", "B-person", "I-person"]
WNUT_LABELS += ["B-product", "I-product"]


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer(VOCAB)


def random_texts(count, words, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=words)) for _ in range(count)]


def numpy(structure):
    return tf.nest.map_structure(lambda t: t.numpy(), structure)


def original_ids(x, y, w):
    """Token ids before masking: masked positions get their labels back."""
    ids = x["token_ids"].copy()
    for row in range(ids.shape[0]):
        real = w[row] > 0
        ids[row, x["mask_positions"][row][real]] = y[row][real]
    return ids


# --- BertPreprocessor ------------------------------------------------------------------


def test_bert_single_text_known_answer(tokenizer):
    x = numpy(BertPreprocessor(tokenizer, 8)(["the cats sat", "a dog ran on the big red mat"]))
    np.testing.assert_array_equal(
        x["token_ids"], [[CLS, 5, 7, 14, 9, SEP, PAD, PAD], [CLS, 6, 8, 12, 10, 5, 17, SEP]]
    )
    np.testing.assert_array_equal(x["segment_ids"], np.zeros((2, 8)))
    np.testing.assert_array_equal(x["padding_mask"], [[1] * 6 + [0] * 2, [1] * 8])
    assert all(v.dtype == np.int32 for v in x.values())


def test_bert_pair_known_answer_and_labels_pass_through(tokenizer):
    preprocessor = BertPreprocessor(tokenizer, 9)
    x, y = preprocessor((tf.constant(["the cat sat on the mat"]), tf.constant(["a dog ran"])), [1])
    # 6 + 3 tokens into a budget of 9 - 3 = 6: round robin keeps 3 + 3.
    np.testing.assert_array_equal(x["token_ids"], [[CLS, 5, 7, 9, SEP, 6, 8, 12, SEP]])
    np.testing.assert_array_equal(x["segment_ids"], [[0, 0, 0, 0, 0, 1, 1, 1, 1]])
    assert y == [1]
    single = numpy(preprocessor(("the cat", "a dog")))  # unbatched in, unbatched out
    np.testing.assert_array_equal(single["token_ids"], [CLS, 5, 7, SEP, 6, 8, SEP, PAD, PAD])


def round_robin(lengths, budget):
    """Reference trimming: one token at a time to each segment that has tokens left."""
    kept = [0] * len(lengths)
    while sum(kept) < budget and kept != lengths:
        for i, length in enumerate(lengths):
            if kept[i] < length and sum(kept) < budget:
                kept[i] += 1
    return kept


@pytest.mark.parametrize("length_a, length_b", [(2, 20), (20, 2), (9, 9), (15, 6), (4, 3)])
def test_bert_pair_truncation_is_balanced(tokenizer, length_a, length_b):
    x = numpy(BertPreprocessor(tokenizer, 13)((" ".join(["cat"] * length_a), "dog " * length_b)))
    kept = [int(np.sum(x["token_ids"] == 7)), int(np.sum(x["token_ids"] == 8))]
    assert kept == round_robin([length_a, length_b], 13 - 3)
    np.testing.assert_array_equal(x["segment_ids"][: 2 + kept[0]], 0)  # [CLS] a [SEP]
    np.testing.assert_array_equal(x["segment_ids"][2 + kept[0] : 3 + sum(kept)], 1)  # b [SEP]


# --- MaskedLMPreprocessor --------------------------------------------------------------


def test_masked_lm_known_answer_with_full_masking(tokenizer):
    preprocessor = MaskedLMPreprocessor(
        tokenizer, 8, mask_rate=1.0, max_predictions_per_seq=6, mask_token_rate=1.0,
        random_token_rate=0.0,
    )  # fmt: skip
    x, y, w = numpy(preprocessor(["the cats sat", "dog"]))
    np.testing.assert_array_equal(
        x["token_ids"], [[CLS, MASK, MASK, MASK, MASK, SEP, PAD, PAD], [CLS, MASK, SEP] + [PAD] * 5]
    )
    np.testing.assert_array_equal(x["mask_positions"], [[1, 2, 3, 4, 0, 0], [1, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(y, [[5, 7, 14, 9, 0, 0], [8, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(w, [[1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(x["segment_ids"], np.zeros((2, 8)))
    assert (x["mask_positions"].dtype, y.dtype, w.dtype) == (np.int32, np.int32, np.float32)


def test_masked_lm_rates_and_specials(tokenizer):
    preprocessor = MaskedLMPreprocessor(tokenizer, 128, max_predictions_per_seq=40, seed=1)
    texts = random_texts(400, 100)
    x, y, w = numpy(preprocessor(tf.constant(texts)))
    real = w > 0
    lengths = x["padding_mask"].sum(axis=1)
    chosen_rate = real.sum() / (lengths - 2).sum()
    assert abs(chosen_rate - 0.15) < 0.02, chosen_rate
    positions = x["mask_positions"][real]
    rows = np.nonzero(real)[0]
    assert np.all(positions >= 1) and np.all(positions < lengths[rows] - 1)  # no [CLS]/[SEP]/pad
    assert not set(y[real].tolist()) & SPECIALS
    now = x["token_ids"][rows, positions]
    masked, kept = np.mean(now == MASK), np.mean(now == y[real])
    random_share = 1 - masked - kept
    assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.03 and abs(random_share - 0.1) < 0.03
    assert not set(now[now != MASK].tolist()) & SPECIALS  # random tokens are never specials
    untouched = np.ones_like(x["token_ids"], bool)
    untouched[rows, positions] = False
    reference = numpy(BertPreprocessor(tokenizer, 128)(tf.constant(texts)))["token_ids"]
    np.testing.assert_array_equal(x["token_ids"][untouched], reference[untouched])
    np.testing.assert_array_equal(original_ids(x, y, w), reference)


def word_spans(ids):
    """(start, end) piece spans of the words of one row (specials are their own words)."""
    spans, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or not VOCAB[ids[i]].startswith("##") or ids[i - 1] in SPECIALS:
            spans.append((start, i))
            start = i
    return spans


@pytest.mark.parametrize("max_predictions", [40, 3])
def test_whole_word_masking_masks_all_pieces_of_a_word(tokenizer, max_predictions):
    preprocessor = MaskedLMPreprocessor(
        tokenizer, 64, max_predictions_per_seq=max_predictions, whole_word_masking=True, seed=2
    )
    x, y, w = numpy(preprocessor(tf.constant(random_texts(300, 40, seed=3))))
    original = original_ids(x, y, w)
    masked_pieces = total_pieces = 0
    for row in range(len(original)):
        chosen = set(x["mask_positions"][row][w[row] > 0].tolist())
        assert len(chosen) <= max_predictions
        length = x["padding_mask"][row].sum()
        for start, end in word_spans(original[row][:length]):
            inside = {p in chosen for p in range(start, end)}
            assert len(inside) == 1, (row, start, end, chosen)  # all pieces or none
        masked_pieces += len(chosen)
        total_pieces += length - 2
    if max_predictions == 40:
        assert abs(masked_pieces / total_pieces - 0.15) < 0.03


def test_masking_is_dynamic_and_reproducible_with_seed(tokenizer):
    texts = random_texts(16, 30)
    preprocessor = MaskedLMPreprocessor(tokenizer, 48, seed=7)
    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(8)
    dataset = dataset.map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
    first = np.concatenate([x["mask_positions"] for x, _, _ in dataset.as_numpy_iterator()])
    second = np.concatenate([x["mask_positions"] for x, _, _ in dataset.as_numpy_iterator()])
    assert first.shape == (16, 20) and not np.array_equal(first, second)  # new masks per epoch
    again = MaskedLMPreprocessor(tokenizer, 48, seed=7)(tf.constant(texts[:8]))[0]
    same = MaskedLMPreprocessor(tokenizer, 48, seed=7)(tf.constant(texts[:8]))[0]
    np.testing.assert_array_equal(again["mask_positions"], same["mask_positions"])


def test_masked_lm_errors(tokenizer):
    with pytest.raises(ValueError, match="mask_token_id"):
        MaskedLMPreprocessor(WordPieceTokenizer([t for t in VOCAB if t != "[MASK]"]), 16)
    with pytest.raises(ValueError, match="`mask_rate`"):
        MaskedLMPreprocessor(tokenizer, 16, mask_rate=0.0)
    with pytest.raises(ValueError, match="sum to <= 1"):
        MaskedLMPreprocessor(tokenizer, 16, mask_token_rate=0.8, random_token_rate=0.3)
    with pytest.raises(ValueError, match="`sequence_length`"):
        BertPreprocessor(tokenizer, 2)
    with pytest.raises(TypeError, match="`tokenizer`"):
        BertPreprocessor(VOCAB, 16)


# --- next sentence prediction ----------------------------------------------------------


def sentence_documents(count=60, sentences=4):
    return [[f"d{d}s{s}" for s in range(sentences)] for d in range(count)]


@pytest.mark.parametrize("layout", ["documents", "sentence_lines"])
def test_nsp_pairs(layout):
    documents = sentence_documents()
    if layout == "documents":
        dataset = tf.data.Dataset.from_tensor_slices(documents)
    else:  # one sentence per element, an empty line after each document
        dataset = tf.data.Dataset.from_tensor_slices([s for d in documents for s in [*d, ""]])
    pairs = nsp_pairs(dataset, seed=0, buffer_size=300)
    first = [((a.decode(), b.decode()), int(label)) for (a, b), label in pairs.as_numpy_iterator()]
    assert [a for (a, _), _ in first] == [s for d in documents for s in d[:-1]]
    labels = np.array([label for _, label in first])
    assert abs(labels.mean() - 0.5) < 0.1
    for (a, b), label in first:
        doc, index = a[1:].split("s")
        if label == 0:
            assert b == f"d{doc}s{int(index) + 1}"
        else:
            assert not b.startswith(f"d{doc}s")  # random next from another document
    second = [int(label) for _, label in pairs.as_numpy_iterator()]
    assert second != labels.tolist()  # new pairs every epoch


def test_nsp_random_next_is_never_a_or_the_true_next():
    """One document: the random sentence comes from it, but is neither `a` nor the true
    `b`, nor a copy of them; with none such among the candidates, `b` is kept (label 0)."""
    documents = [["s0", "s1", "s2", "s1"]]
    pairs = nsp_pairs(tf.data.Dataset.from_tensor_slices(documents), seed=0, buffer_size=4)
    seen = set()
    for _ in range(30):  # new coins and candidates every epoch
        seen |= {(a.decode(), b.decode(), int(y)) for (a, b), y in pairs.as_numpy_iterator()}
    kept = {("s0", "s1", 0), ("s1", "s2", 0), ("s2", "s1", 0)}
    random = {("s0", "s2", 1), ("s1", "s0", 1), ("s2", "s0", 1)}
    assert seen == kept | random


def test_nsp_pairs_feed_masked_lm(tokenizer):
    documents = [["the cat sat", "on the mat"], ["a dog ran", "big red storm", "here"]]
    dataset = nsp_pairs(
        tf.data.Dataset.from_tensor_slices(tf.ragged.constant(documents)), buffer_size=8
    )
    x, y, w = next(iter(dataset.batch(3).map(MaskedLMPreprocessor(tokenizer, 16))))
    assert set(y) == {"mlm", "nsp"} and set(w) == {"mlm", "nsp"}
    assert y["mlm"].shape == w["mlm"].shape == (3, 20) and y["nsp"].shape == (3,)
    np.testing.assert_array_equal(w["nsp"], np.ones(3))
    segments = x["segment_ids"].numpy()
    assert np.all(segments.max(axis=1) == 1)  # both segments present


# --- causal LM and packing -------------------------------------------------------------


def test_causal_lm_known_answer(tokenizer):
    x, y, w = numpy(CausalLMPreprocessor(tokenizer, 6)(["the cats sat on the mat", "dog", ""]))
    np.testing.assert_array_equal(
        x["token_ids"], [[CLS, 5, 7, 14, 9, 10], [CLS, 8, SEP, 0, 0, 0], [CLS, SEP, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        y, [[5, 7, 14, 9, 10, SEP], [8, SEP, 0, 0, 0, 0], [SEP, 0, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(x["padding_mask"], [[1] * 6, [1] * 3 + [0] * 3, [1, 1] + [0] * 4])
    np.testing.assert_array_equal(w, [[1] * 6, [1, 1] + [0] * 4, [1] + [0] * 5])
    x, y, _ = CausalLMPreprocessor(tokenizer, 4, add_bos=False, add_eos=False)("the dog")
    np.testing.assert_array_equal(x["token_ids"], [5, 8, 0, 0])
    np.testing.assert_array_equal(y, [8, 0, 0, 0])


def test_causal_lm_with_byte_pair_tokenizer():
    chars = list(bytes_to_unicode().values())
    vocabulary = {c: i for i, c in enumerate([*chars, "hi", "<|endoftext|>"])}
    tokenizer = BytePairTokenizer(vocabulary, ["h i"])
    hi, eot, h = 256, 257, chars.index("h")
    x, y, w = CausalLMPreprocessor(tokenizer, 5)(["hi h"])
    space_h = chars.index("\u0120")  # " h" is two byte tokens: no merge for it
    np.testing.assert_array_equal(x["token_ids"], [[eot, hi, space_h, h, eot]])  # EOS pads
    np.testing.assert_array_equal(y, [[hi, space_h, h, eot, eot]])
    np.testing.assert_array_equal(w, [[1, 1, 1, 1, 0]])


def test_pack_documents_known_answer():
    documents = [[11, 12, 13], [21, 22], [31, 32, 33, 34, 35, 36], [41]]
    dataset = tf.data.Dataset.from_tensor_slices(tf.ragged.constant(documents, tf.int32))
    windows = list(pack_documents(dataset, 5, eos_token_id=9).as_numpy_iterator())
    tokens = [x["token_ids"].tolist() for x, _, _ in windows]
    assert tokens == [
        [11, 12, 13, 9, 21],
        [22, 9, 31, 32, 33],
        [34, 35, 36, 9, 41],
        [9, 0, 0, 0, 0],
    ]
    assert [x["segment_ids"].tolist() for x, _, _ in windows] == [
        [1, 1, 1, 1, 2], [1, 1, 2, 2, 2], [1, 1, 1, 1, 2], [1, 0, 0, 0, 0]
    ]  # fmt: skip
    assert [y.tolist() for _, y, _ in windows] == [
        [12, 13, 9, 21, 22], [9, 31, 32, 33, 34], [35, 36, 9, 41, 9], [0, 0, 0, 0, 0]
    ]  # fmt: skip
    assert [w.tolist() for _, _, w in windows] == [
        [1, 1, 1, 0, 1], [1, 0, 1, 1, 1], [1, 1, 1, 0, 1], [0, 0, 0, 0, 0]
    ]  # fmt: skip


def test_packing_keeps_every_token_and_restarts_segments():
    rng = np.random.default_rng(0)
    documents = [rng.integers(5, 100, size=rng.integers(0, 40)).tolist() for _ in range(50)]
    dataset = tf.data.Dataset.from_tensor_slices(tf.ragged.constant(documents, tf.int32))
    windows = list(pack_documents(dataset, 16, eos_token_id=2).as_numpy_iterator())
    stream = [t for d in documents for t in [*d, 2]]
    document_of = [i for i, d in enumerate(documents) for _ in range(len(d) + 1)]
    inputs, labels, position = [], [], 0
    for x, y, w in windows:
        real = x["padding_mask"] == 1
        assert x["token_ids"].shape == (16,) and real[0] and np.all(real[:-1] >= real[1:])
        ids, segments = x["token_ids"][real], x["segment_ids"][real]
        assert np.all(x["segment_ids"][~real] == 0) and segments[0] == 1
        here = document_of[position : position + len(ids)]
        expected_segments = np.cumsum(
            [True] + [a != b for a, b in zip(here[:-1], here[1:], strict=True)]
        )
        np.testing.assert_array_equal(segments, expected_segments)
        following = document_of[position + 1 : position + len(ids) + 1]
        expected_weights = [a == b for a, b in zip(here[: len(following)], following, strict=True)]
        np.testing.assert_array_equal(w[: len(expected_weights)], expected_weights)
        assert np.all(w[len(expected_weights) :] == 0)
        inputs += ids.tolist()
        labels += y[: len(following)].tolist()
        position += len(ids)
    assert inputs == stream and labels == stream[1:]


def test_causal_lm_pack_strings(tokenizer):
    texts = tf.data.Dataset.from_tensor_slices(["the cat sat", "a dog", "the mat"])
    windows = list(CausalLMPreprocessor(tokenizer, 6).pack(texts).as_numpy_iterator())
    assert [x["token_ids"].tolist() for x, _, _ in windows] == [
        [CLS, 5, 7, 9, SEP, CLS], [6, 8, SEP, CLS, 5, 11], [SEP, 0, 0, 0, 0, 0]
    ]  # fmt: skip
    assert windows[1][0]["segment_ids"].tolist() == [1, 1, 1, 2, 2, 2]


# --- token classification --------------------------------------------------------------


def test_token_classification_wnut_style_alignment(tokenizer):
    words = ["@paulwalk", "the", "view", "from", "the", "empire", "state", "building", "."]
    tags = ["O", "O", "O", "O", "O", "B-location", "I-location", "I-location", "O"]
    preprocessor = TokenClassificationPreprocessor(tokenizer, 16, WNUT_LABELS)
    x, y, w = numpy(preprocessor(tf.ragged.constant([words]), tf.ragged.constant([tags])))
    # "@paulwalk" -> "@", "paul", "##walk"; "building" -> "build", "##ing".
    expected = [CLS, 24, 25, 26, 5, 27, 28, 5, 19, 20, 21, 15, 29, SEP, PAD, PAD]
    np.testing.assert_array_equal(x["token_ids"], [expected])
    np.testing.assert_array_equal(y, [[0, 0, 0, 0, 0, 0, 0, 0, 7, 8, 8, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(w, [[0, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0]])
    ids = [WNUT_LABELS.index(t) for t in tags]  # int ids and unbatched input work alike
    _, y_ids, w_ids = numpy(preprocessor(tf.constant(words), tf.constant(ids)))
    np.testing.assert_array_equal(y_ids, y[0])
    np.testing.assert_array_equal(w_ids, w[0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="unknown label"):
        preprocessor(tf.ragged.constant([["the"]]), tf.ragged.constant([["B-nothing"]]))


def test_token_classification_truncates_words(tokenizer):
    preprocessor = TokenClassificationPreprocessor(tokenizer, 5, ["O", "B", "I"])
    x, y, w = numpy(
        preprocessor(tf.ragged.constant([["cats", "dogs"]]), tf.ragged.constant([[1, 2]]))
    )
    np.testing.assert_array_equal(x["token_ids"], [[CLS, 7, 14, 8, SEP]])
    np.testing.assert_array_equal(y, [[0, 1, 0, 2, 0]])
    np.testing.assert_array_equal(w, [[0, 1, 0, 1, 0]])


# --- graph use, config, export ---------------------------------------------------------


def make_preprocessors(tokenizer):
    return [
        BertPreprocessor(tokenizer, 12),
        MaskedLMPreprocessor(tokenizer, 12, whole_word_masking=True, seed=5),
        CausalLMPreprocessor(tokenizer, 12, add_bos=False),
        TokenClassificationPreprocessor(tokenizer, 12, ["O", "B", "I"]),
    ]


def test_config_round_trip(tokenizer):
    for preprocessor in make_preprocessors(tokenizer):
        restored = keras.layers.deserialize(keras.layers.serialize(preprocessor))
        assert type(restored) is type(preprocessor)
        assert restored.get_config() == preprocessor.get_config()
        assert restored.tokenizer.get_vocabulary() == VOCAB
    texts = tf.constant(["the cats sat", "a dog"])
    for preprocessor in make_preprocessors(tokenizer)[:3]:  # same seed, same masks
        restored = type(preprocessor).from_config(preprocessor.get_config())
        tf.nest.map_structure(np.testing.assert_array_equal, preprocessor(texts), restored(texts))


def test_dataset_map_parallel_and_tf_function_agree(tokenizer):
    texts = random_texts(12, 8)
    preprocessor = BertPreprocessor(tokenizer, 12)
    labels = tf.data.Dataset.from_tensor_slices(np.arange(12))
    dataset = tf.data.Dataset.zip(tf.data.Dataset.from_tensor_slices(texts), labels).batch(4)
    mapped = dataset.map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
    xs, ys = zip(*mapped.as_numpy_iterator(), strict=True)
    assert xs[0]["token_ids"].shape == (4, 12) and list(np.concatenate(ys)) == list(range(12))
    traced = tf.function(preprocessor)(tf.constant(texts[:4]))
    tf.nest.map_structure(np.testing.assert_array_equal, numpy(traced), xs[0])
    causal = dataset.map(lambda t, _: CausalLMPreprocessor(tokenizer, 12)(t))
    words = tf.data.Dataset.from_tensor_slices(tf.ragged.constant([["the", "cats"], ["dog"]]))
    tags = tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[0, 1], [2]]))
    ner = tf.data.Dataset.zip(words, tags).ragged_batch(2)
    ner = ner.map(make_preprocessors(tokenizer)[3], num_parallel_calls=tf.data.AUTOTUNE)
    assert next(iter(causal))[1].shape == (4, 12) and next(iter(ner))[1].shape == (2, 12)


def test_masked_lm_feeds_a_distributed_dataset(tokenizer, mirrored_strategy):
    with mirrored_strategy.scope():  # the generator must still be capturable by tf.data
        preprocessor = MaskedLMPreprocessor(tokenizer, 16, whole_word_masking=True)
    dataset = tf.data.Dataset.from_tensor_slices(random_texts(8, 10)).batch(8).map(preprocessor)
    x, y, w = next(iter(mirrored_strategy.experimental_distribute_dataset(dataset)))
    assert [t.shape for t in x["token_ids"].values] == [(4, 16), (4, 16)]


def test_saved_model_runs_preprocessors(tokenizer, tmp_path):
    bert, masked_lm, _, ner = make_preprocessors(tokenizer)
    module = tf.Module()
    module.layers = [bert, masked_lm, ner]
    signature = [tf.TensorSpec([None], tf.string)]
    module.bert = tf.function(lambda t: bert(t), input_signature=signature)
    module.mlm = tf.function(lambda t: masked_lm(t)[0], input_signature=signature)
    ragged = [tf.RaggedTensorSpec([None, None], tf.string)]
    module.ner = tf.function(lambda words: ner(words), input_signature=ragged)
    tf.saved_model.save(module, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    texts = tf.constant(["the cats sat on the mat", "a dog"])
    tf.nest.map_structure(np.testing.assert_array_equal, loaded.bert(texts), bert(texts))
    words = tf.ragged.constant([["the", "cats"], ["dog"]])
    tf.nest.map_structure(np.testing.assert_array_equal, loaded.ner(words), ner(words))
    masked = [loaded.mlm(texts)["mask_positions"].numpy() for _ in range(6)]
    assert any(not np.array_equal(masked[0], m) for m in masked[1:])  # still dynamic


# --- the real MiniLM vocabulary --------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return WordPieceTokenizer(assets.minilm_path() / "vocab.txt")


@pytest.mark.assets
def test_minilm_ner_alignment_matches_hugging_face(minilm_tokenizer):
    from tokenizers import BertWordPieceTokenizer

    # A WNUT 2017 training sentence (Hugging Face `wnut_17`, train[0]).
    words = "@paulwalk It 's the view from where I 'm living for two weeks . Empire State "
    words = (words + "Building = ESB . Pretty bad storm here last evening .").split()
    tags = [0] * 14 + [7, 8, 8, 0, 7] + [0] * 8
    preprocessor = TokenClassificationPreprocessor(minilm_tokenizer, 40, WNUT_LABELS)
    x, y, w = numpy(preprocessor(tf.ragged.constant([words]), tf.ragged.constant([tags])))
    reference = BertWordPieceTokenizer(str(assets.minilm_path() / "vocab.txt"), lowercase=True)
    encoding = reference.encode(words, is_pretokenized=True)
    length = len(encoding.ids)
    np.testing.assert_array_equal(x["token_ids"][0, :length], encoding.ids)
    word_ids = encoding.word_ids
    firsts = [i for i, k in enumerate(word_ids) if k is not None and k != word_ids[i - 1]]
    assert np.flatnonzero(w[0]).tolist() == firsts
    assert y[0, firsts].tolist() == tags
    decoded = [minilm_tokenizer.id_to_token(int(t)) for t in x["token_ids"][0, firsts[14:17]]]
    assert decoded == ["empire", "state", "building"]


@pytest.mark.assets
def test_minilm_whole_word_masking(minilm_tokenizer):
    text = "Unbelievably, the tokenization of hyperparameters is straightforward nowadays."
    preprocessor = MaskedLMPreprocessor(
        minilm_tokenizer, 32, mask_rate=0.3, whole_word_masking=True, seed=0
    )
    vocabulary = minilm_tokenizer.get_vocabulary()
    for _ in range(5):
        x, y, w = numpy(preprocessor(tf.constant([text] * 16)))
        for row in range(16):
            chosen = set(x["mask_positions"][row][w[row] > 0].tolist())
            ids = original_ids(x, y, w)[row][: x["padding_mask"][row].sum()]
            for position in range(1, len(ids)):
                if vocabulary[ids[position]].startswith("##"):
                    assert (position in chosen) == (position - 1 in chosen)
