"""Demonstration selection: selectors against numpy / hand-computed answers, prompts, cache.

Most tests use a lookup-table encoder (text -> fixed vector); one test uses the real
all-MiniLM-L6-v2 checkpoint.
"""

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf

from tfllm.demonstrations import (
    BalancedSelector,
    BM25Selector,
    KNNSelector,
    MMRSelector,
    PromptBuilder,
    RandomSelector,
    SentenceEncoder,
    VoteKSelector,
    causal_lm_generator,
    embed_pool,
    evaluate_demonstrations,
    few_shot,
    selection_metrics,
    signature_generator,
    top_k_similar,
    vote_k,
)
from tfllm.tokenizers import WordPieceTokenizer


class TableEncoder:
    """`texts -> rows of a fixed table` (text `"t<i>"` is row i); counts its calls."""

    def __init__(self, table):
        self.table = np.asarray(table, np.float32)
        self.calls = 0

    def __call__(self, texts):
        self.calls += 1
        return self.table[[int(t[1:]) for t in texts]]

    def fingerprint(self):
        return str(hash(self.table.tobytes()))


def unit_rows(n, d=8, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def names(n, start=0):
    return [f"t{i}" for i in range(start, start + n)]


def angles(*degrees):
    radians = np.deg2rad(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], 1).astype(np.float32)


@pytest.fixture
def table():  # pool rows 0..39, query rows 40..44
    return TableEncoder(unit_rows(45))


def test_knn_equals_brute_force_numpy(table):
    pool = table.table[:40]
    queries = table.table[40:]
    want = np.argsort(-(queries @ pool.T), axis=1, kind="stable")[:, :6]
    retrieved = KNNSelector(table, names(40), order="retrieved", cache=False)
    assert retrieved.select(names(5, 40), 6) == want.tolist()
    similar_last = KNNSelector(table, names(40), cache=False).select(names(5, 40), 6)
    assert similar_last == want[:, ::-1].tolist()  # most similar next to the query


def test_top_k_similar_in_chunks_equals_numpy():
    pool, queries = unit_rows(300, seed=1), unit_rows(7, seed=2)
    scores = queries @ pool.T
    want = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    indices, values = top_k_similar(queries, pool, 5, chunk_size=600)  # 2 queries a chunk
    np.testing.assert_array_equal(indices, want)
    np.testing.assert_allclose(values, np.take_along_axis(scores, want, 1), rtol=1e-5)


def test_random_selector_is_seeded_and_distinct():
    pool = names(30)
    first = RandomSelector(pool, seed=3).select(["a", "b", "c"], 10)
    assert first == RandomSelector(pool, seed=3).select(["a", "b", "c"], 10)
    assert first != RandomSelector(pool, seed=4).select(["a", "b", "c"], 10)
    assert first[0] != first[1]  # each query draws anew
    assert all(len(set(row)) == 10 and all(0 <= i < 30 for i in row) for row in first)


def test_balanced_selector_label_counts():
    labels = ["a"] * 10 + ["b"] * 10 + ["c"] * 10
    rows = BalancedSelector(names(30), labels, seed=0).select(["q"] * 20, 7)
    for row in rows:
        counts = sorted(np.unique([labels[i] for i in row], return_counts=True)[1].tolist())
        assert counts == [2, 2, 3] and len(set(row)) == 7
    # A label with one example gives the rest of its share to the others.
    scarce = ["a"] + ["b"] * 10 + ["c"] * 10
    for row in BalancedSelector(names(21), scarce, seed=1).select(["q"] * 10, 7):
        assert sorted(scarce[i] for i in row) == ["a"] + ["b"] * 3 + ["c"] * 3


def test_mmr_lambda_one_is_knn_and_lambda_zero_diversifies():
    # Pool at 0, 5, 10, 90 and 180 degrees; the query at 1 degree.
    encoder = TableEncoder(angles(0, 5, 10, 90, 180, 1))
    pool, query = names(5), ["t5"]
    knn = KNNSelector(encoder, pool, order="retrieved", cache=False).select(query, 3)
    assert knn == [[0, 1, 2]]
    mmr = MMRSelector(encoder, pool, lambda_=1.0, order="retrieved", cache=False)
    assert mmr.select(query, 3) == knn
    # lambda 0: the nearest, then the one least like it (180), then least like both (90).
    diverse = MMRSelector(encoder, pool, lambda_=0.0, order="retrieved", cache=False)
    assert diverse.select(query, 3) == [[0, 4, 3]]
    # similar_last orders the same picks by similarity to the query, ascending.
    assert MMRSelector(encoder, pool, lambda_=0.0, cache=False).select(query, 3) == [[4, 3, 0]]


def test_bm25_scores_equal_hand_computed_values():
    pool = ["the cat sat on the mat", "dog sat down", "cat and dog", "cat cat"]
    selector = BM25Selector(pool, stopwords=None, order="retrieved")
    indices, scores = selector.select_scored(["cat dog"], 4)
    # Lucene BM25, k1=1.5, b=0.75, avgdl=3.5: idf(cat)=ln(1+1.5/3.5), idf(dog)=ln 2.
    assert indices == [[2, 1, 3, 0]]
    np.testing.assert_allclose(scores[0], [0.448779, 0.296307, 0.236376, 0.107966], rtol=1e-4)
    assert BM25Selector(pool, stopwords=None).select(["cat dog"], 2) == [[1, 2]]  # best last


def reference_vote_k(embeddings, budget, neighbors, rho):
    """Su et al. (2022), Algorithm 1, scores recomputed from scratch at every step."""
    n = len(embeddings)
    sims = embeddings @ embeddings.T
    np.fill_diagonal(sims, -np.inf)
    links = [set(np.argsort(-row, kind="stable")[:neighbors].tolist()) for row in sims]
    selected = []
    while len(selected) < budget:  # exact fractions, so ties are ties
        score = [Fraction(0)] * n
        for v in set(range(n)) - set(selected):
            for u in links[v]:
                score[u] += Fraction(1, rho ** len(links[v] & set(selected)))
        candidates = [u for u in range(n) if u not in selected]
        selected.append(max(candidates, key=lambda u: (score[u], -u)))
    return selected


def test_vote_k_equals_the_published_algorithm():
    embeddings = unit_rows(40, d=4, seed=5)
    assert vote_k(embeddings, 25, 6, 10.0) == reference_vote_k(embeddings, 25, 6, 10)
    # Two clusters: the densest point first, then the other cluster, not a 2nd neighbour.
    clusters = angles(0, 1, 2, 3, 4, 90, 91, 92)
    assert vote_k(clusters, 2, num_neighbors=2) == [2, 5]


def test_vote_k_selector_picks_from_the_annotated_set(table):
    selector = VoteKSelector(table, names(40), budget=10, num_neighbors=5, cache=False)
    assert len(set(selector.annotated)) == 10
    rows = selector.select(names(5, 40), 4)
    assert all(set(row) <= set(selector.annotated) for row in rows)
    with pytest.raises(ValueError, match="annotated budget 10"):
        selector.select(["t40"], 11)


def test_errors(table):
    with pytest.raises(ValueError, match="empty pool"):
        KNNSelector(table, [], cache=False)
    with pytest.raises(ValueError, match="pool size 3"):
        RandomSelector(names(3)).select(["q"], 4)
    with pytest.raises(ValueError, match="`k` must be an int >= 1"):
        BM25Selector(["a cat"]).select(["q"], 0)
    with pytest.raises(ValueError, match="no words BM25 can index"):
        BM25Selector(["a", "the"])
    with pytest.raises(TypeError, match="list of strings"):
        RandomSelector(names(3)).select("a query", 1)
    with pytest.raises(ValueError, match="one label per text"):
        RandomSelector(names(3), [0, 1])
    with pytest.raises(ValueError, match="pool_labels"):
        BalancedSelector(names(3), None)
    with pytest.raises(ValueError, match="lambda_"):
        MMRSelector(table, names(3), lambda_=1.5, cache=False)
    with pytest.raises(ValueError, match="order"):
        KNNSelector(table, names(3), order="best_first", cache=False)
    with pytest.raises(ValueError, match="2-D array"):
        KNNSelector(lambda texts: np.zeros(len(texts)), names(3), cache=False)


@pytest.fixture
def word_tokenizer():
    words = [
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "good",
        "bad",
        "film",
        "plot",
        "fine",
        "acting",
        "great",
        "story",
        "is",
        "neg",
        "pos",
        ".",
    ]
    return WordPieceTokenizer(words)


def test_prompt_builder_drops_least_useful_within_budget(word_tokenizer):
    examples = [("good film", 1), ("bad plot", 0), ("fine acting", 1)]

    def builder(max_tokens):
        return PromptBuilder(
            word_tokenizer, max_tokens, "{text} is {label} . ", "{text} is", "", ["neg", "pos"]
        )

    assert builder(100).count_tokens(["good film is pos . ", "great story is"]) == [5, 3]
    full = "good film is pos . bad plot is neg . fine acting is pos . great story is"
    assert builder(18).build("great story", examples, [0.5, 0.9, 0.1]) == full
    one_gone = "good film is pos . bad plot is neg . great story is"
    assert builder(17).build("great story", examples, [0.5, 0.9, 0.1]) == one_gone
    assert (
        builder(8).build("great story", examples, [0.5, 0.9, 0.1])
        == "bad plot is neg . great story is"
    )
    # Without scores the earliest (farthest from the query) goes first.
    assert (
        builder(13).build("great story", examples)
        == "bad plot is neg . fine acting is pos . great story is"
    )
    assert builder(3).build("great story", examples) == "great story is"
    with pytest.raises(ValueError, match="alone needs more than `max_tokens`=2"):
        builder(2).build("great story", examples)
    with pytest.raises(ValueError, match="example_template"):
        PromptBuilder(word_tokenizer, 10, example_template="{text}")


def test_few_shot_with_a_causal_lm_and_a_saved_model(word_tokenizer, tmp_path):
    from tfllm.generation import generate
    from tfllm.models import CausalLM, GPTBackbone

    pool, labels = ["good film", "bad plot", "fine acting"], [1, 0, 1]
    selector = BM25Selector(pool, labels, stopwords=None)
    builder = PromptBuilder(
        word_tokenizer, 64, "{text} is {label} . ", "{text} is", "", ["neg", "pos"]
    )
    backbone = GPTBackbone.from_preset(
        "gpt_tiny", dropout=0.0, vocabulary_size=word_tokenizer.vocabulary_size()
    )
    lm = CausalLM(backbone)
    queries = ["great film", "bad acting"]
    got = few_shot(
        causal_lm_generator(lm, word_tokenizer, 3, stop_token_ids=()), selector, builder, queries, 2
    )
    prompts = [
        "bad plot is neg . good film is pos . great film is",  # only 0 matches; 1 wins the tie
        "bad plot is neg . fine acting is pos . bad acting is",  # equal scores: pool order
    ]
    assert got == generate(lm, prompts, 3, tokenizer=word_tokenizer, stop_token_ids=())

    class Upper(tf.Module):  # stands in for an exported model's `generate` signature
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def generate(self, text):
            return {"text": tf.strings.upper(text), "num_tokens": tf.strings.length(text)}

    module = Upper()
    tf.saved_model.save(module, str(tmp_path), signatures={"generate": module.generate})
    loaded = tf.saved_model.load(str(tmp_path))
    answer = few_shot(
        signature_generator(loaded.signatures["generate"]), selector, builder, queries, 2
    )
    assert answer == [p.upper() for p in prompts]


def test_pool_embeddings_are_cached_on_disk(table, tmp_path):
    first = embed_pool(table, names(40), cache_dir=tmp_path)
    assert table.calls == 1 and len(list(tmp_path.glob("*.npy"))) == 1
    np.testing.assert_array_equal(embed_pool(table, names(40), cache_dir=tmp_path), first)
    assert table.calls == 1  # read back, not recomputed
    embed_pool(table, names(39), cache_dir=tmp_path)  # other texts: another entry
    assert table.calls == 2 and len(list(tmp_path.glob("*.npy"))) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_selection_metrics_known_answer():
    pool = angles(0, 90, 180)
    queries = angles(0, 0)
    metrics = selection_metrics([[0, 1], [0, 2]], [0, 1], [0, 1, 0], queries, pool)
    assert metrics["label_agreement"] == 0.25  # query 0: 1 of 2; query 1: 0 of 2
    assert metrics["vote_accuracy"] == 0.25  # a tie (half), then a miss
    assert math.isclose(metrics["pairwise_distance"], 1.5, abs_tol=1e-6)  # 1 and 2
    assert math.isclose(metrics["query_similarity"], 0.25, abs_tol=1e-6)  # (1+0+1-1)/4
    assert metrics["distinct_labels"] == 1.5 and metrics["coverage"] == 0.75


@pytest.mark.assets
def test_evaluate_demonstrations_report(tmp_path):
    def letters(texts):  # a cheap stand-in for MiniLM: letter frequencies
        counts = np.array([[t.lower().count(c) + 1e-3 for c in "etaoinshrdlu"] for t in texts])
        return counts / np.linalg.norm(counts, axis=1, keepdims=True)

    report = evaluate_demonstrations(
        "rotten_tomatoes",
        pool_size=60,
        num_queries=12,
        k=4,
        budget=10,
        output_dir=tmp_path,
        encoder=letters,
    )
    assert set(report["selectors"]) == {"random", "balanced", "bm25", "knn", "mmr", "vote_k"}
    assert report["selectors"]["balanced"]["distinct_labels"] == 2.0
    assert json.loads((tmp_path / "demos.json").read_text()) == report


@pytest.mark.assets
def test_minilm_encoder_equals_numpy_mean_pooling(tmp_path):
    from tfllm import assets
    from tfllm.models import BertBackbone
    from tfllm.preprocessing import BertPreprocessor

    path = assets.minilm_path()
    backbone = BertBackbone.from_huggingface(path)
    tokenizer = WordPieceTokenizer(path / "vocab.txt")
    texts = [
        "A man is playing a guitar on stage.",
        "The central bank raised interest rates again.",
        "Someone performs a song on the guitar in front of an audience.",
        "Rates went up.",
    ]
    encoder = SentenceEncoder(backbone, tokenizer, sequence_length=32, batch_size=3)
    got = encoder(texts)  # sorted by length, 2 batches, each cut to its longest row
    x = {k: v.numpy() for k, v in BertPreprocessor(tokenizer, 32)(tf.constant(texts)).items()}
    sequence = backbone(x)["sequence_output"].numpy()
    mask = x["padding_mask"][:, :, None]
    want = (sequence * mask).sum(1) / mask.sum(1)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=2e-5)
    selector = KNNSelector(backbone, texts[2:], tokenizer=tokenizer, cache_dir=tmp_path)
    assert selector.select(texts[:2], 1) == [[0], [1]]  # the paraphrase of each


def test_bm25s_records_follow_the_users_logging_levels():
    import logging

    import tfllm.demonstrations.selectors  # noqa: F401  (imports bm25s)

    assert logging.getLogger("bm25s").getEffectiveLevel() == logging.getLogger().level
