"""pipelines.dedup: MinHash against exact Jaccard, near-dedup precision/recall on planted
near-copies of real documents (Lee news corpus, Shakespeare), exact dedup, decontamination."""

import itertools
import re

import numpy as np
import pytest

from pipelines import dedup
from tfllm import assets

pytestmark = pytest.mark.assets


def _words(text):
    """Independent tokenizer for ASCII text: lowercase letter/digit runs."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _jaccard(a, b, n=5):
    sa = {" ".join(w[i : i + n]) for w in [_words(a)] for i in range(len(w) - n + 1)}
    sb = {" ".join(w[i : i + n]) for w in [_words(b)] for i in range(len(w) - n + 1)}
    return len(sa & sb) / len(sa | sb)


def _edit(text, rng, fraction):
    """Replaces a `fraction` of the words with random tokens (a planted near-copy)."""
    words = text.split()
    for i in rng.choice(len(words), size=max(1, int(fraction * len(words))), replace=False):
        words[i] = f"zq{rng.integers(10**9)}"
    return " ".join(words)


@pytest.fixture(scope="module")
def documents():
    lee = (assets.gensim_test_data_path() / "lee_background.cor").read_text().splitlines()
    lines = (assets.shakespeare_path() / "tragedies" / "hamlet.md").read_text().splitlines()
    verse = [ln.strip() for ln in lines if ln.strip() and not ln.startswith(("#", "**", "_"))]
    hamlet = [" ".join(verse[i : i + 12]) for i in range(0, 1200, 12)]
    return [d for d in lee if len(d.split()) >= 40] + hamlet


def test_word_hashes_count_words_and_cjk_characters():
    text = "The cat's 3 toys, e.g. a ball-2!"
    assert dedup.word_hashes(text).size == len(_words(text))
    assert dedup.word_hashes("人民日报 report").size == 5
    hashes = dedup.word_hashes("b a b")
    assert hashes[0] == hashes[2] != hashes[1]


def test_minhash_estimates_exact_jaccard_without_bias(documents):
    rng = np.random.default_rng(0)
    pairs = [(d, _edit(d, rng, rng.uniform(0.02, 0.2))) for d in documents[:150]]
    signatures = dedup.minhash_signatures([t for pair in pairs for t in pair])
    estimates = (signatures[0::2] == signatures[1::2]).mean(axis=1)
    exact = np.array([_jaccard(a, b) for a, b in pairs])
    error = estimates - exact
    assert abs(error.mean()) < 0.015  # Unbiased ...
    assert error.std() < 1.25 * np.sqrt(0.25 / 112)  # ... and as precise as 112 perms allow.


def test_near_dedup_precision_recall_on_planted_copies(documents):
    rng = np.random.default_rng(1)
    texts = list(documents)
    planted = set()
    for i in rng.choice(len(documents), size=60, replace=False):
        texts.append(_edit(documents[i], rng, 0.02))  # near-copy: Jaccard 0.8-0.9
        planted.add((int(i), len(texts) - 1))
    for i in rng.choice(len(documents), size=20, replace=False):
        texts.append(_edit(documents[i], rng, 0.4))  # heavy rewrite: Jaccard < 0.1
    clusters = dedup.near_duplicate_clusters(texts, threshold=0.7)
    found = {
        (i, j)
        for i, j in itertools.combinations(range(len(texts)), 2)
        if clusters[i] == clusters[j]
    }
    truth = planted | {  # plus any pair of the real corpus that really is a near-duplicate
        (i, j) for (i, j) in found if (i, j) not in planted and _jaccard(texts[i], texts[j]) >= 0.7
    }
    precision = len(found & truth) / max(len(found), 1)
    recall = len(found & planted) / len(planted)
    assert precision >= 0.95, precision
    assert recall >= 0.95, recall


def test_near_duplicate_clusters_ids_and_empty_texts():
    text = "one two three four five six seven eight nine ten"
    assert dedup.near_duplicate_clusters([text, "", text.upper(), "", "other words"]) == [
        0,
        1,
        0,
        2,
        3,
    ]


def test_candidate_pairs_and_components_against_brute_force():
    rng = np.random.default_rng(2)
    signatures = rng.integers(0, 3, size=(40, 8), dtype=np.uint32)
    pairs = {tuple(p) for p in dedup.candidate_pairs(signatures, bands=4).tolist()}
    brute = {
        (i, j)
        for i, j in itertools.combinations(range(40), 2)
        if any((signatures[i, 2 * b : 2 * b + 2] == signatures[j, 2 * b : 2 * b + 2]).all()
               for b in range(4))
    }  # fmt: skip
    # Stars per bucket: the same components as all pairs, with fewer edges.
    assert pairs <= brute
    labels = dedup.connected_components(40, np.array(sorted(pairs)))
    brute_labels = dedup.connected_components(40, np.array(sorted(brute)))
    assert labels.tolist() == brute_labels.tolist()
    chain = dedup.connected_components(5, np.array([[3, 4], [2, 3], [0, 1]]))
    assert chain.tolist() == [0, 0, 2, 2, 2]


def test_exact_hash_ignores_case_punctuation_and_spacing():
    assert dedup.exact_hash("Hello,  World!") == dedup.exact_hash("hello world")
    assert dedup.exact_hash("hello world") != dedup.exact_hash("hello word")


def test_decontamination_finds_shared_13grams(documents):
    eval_ngrams = dedup.ngram_set([documents[3]])
    words = documents[3].split()
    leaked = documents[10] + " " + " ".join(words[5:20])
    assert dedup.contaminated(leaked, eval_ngrams)
    assert not dedup.contaminated(documents[10], eval_ngrams)


def _random_text(rng, count, letters):
    """`count` random 7-letter words, space-separated, each starting with one of `letters`."""
    first = rng.choice(np.frombuffer(letters.encode(), np.uint8), size=(count, 1))
    rest = rng.integers(ord("a"), ord("z") + 1, size=(count, 6), dtype=np.uint8)
    space = np.full((count, 1), ord(" "), np.uint8)
    return np.concatenate([first, rest, space], axis=1).tobytes().decode()[:-1]


def test_decontamination_has_no_false_positives_against_a_million_ngrams():
    rng = np.random.default_rng(0)
    eval_text = _random_text(rng, 10**6 + 12, "abcdefghijklm")
    eval_ngrams = dedup.ngram_set([eval_text])
    assert eval_ngrams.size >= 10**6
    # Disjoint vocabularies (first letters a-m vs n-z): no document shares a real 13-gram.
    # 200 x 400 shingles against 10^6 keys: 32-bit keys would match ~19 times by chance.
    documents = [_random_text(rng, 400, "nopqrstuvwxyz") for _ in range(200)]
    assert [i for i, d in enumerate(documents) if dedup.contaminated(d, eval_ngrams)] == []

    eval_words = eval_text.split()
    leaked = documents[0] + " " + " ".join(eval_words[5000:5013]) + " " + documents[1]
    assert dedup.contaminated(leaked, eval_ngrams)
    near_miss = documents[0] + " " + " ".join(eval_words[5000:5012]) + " " + documents[1]
    assert not dedup.contaminated(near_miss, eval_ngrams)
    with pytest.raises(TypeError, match="eval_ngrams"):
        dedup.contaminated(leaked, eval_ngrams.astype(np.int64))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_perm": 0}, "num_perm"), ({"bands": 5}, "bands"), ({"threshold": 0.0}, "threshold")],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dedup.near_duplicate_clusters(["a b c"], **kwargs)
