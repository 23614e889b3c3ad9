"""Scores of generated text against their reference packages: sacrebleu's chrF / chrF++,
Google's `rouge-score` (and NLTK's Porter stemmer under it), scikit-learn's accuracy / F1.

Real text: the 16 WMT17 English->German system outputs and their references that
sacrebleu's sdist ships for its own tests, and the Lee news corpus (English) in gensim.
"""

import bz2
import pickle

import numpy as np
import pytest
import sacrebleu
from nltk.stem.porter import PorterStemmer
from rouge_score import tokenize as rouge_score_tokenize
from rouge_score.rouge_scorer import RougeScorer
from sklearn.metrics import accuracy_score, f1_score

from tfllm import assets
from tfllm.metrics import classification_scores, corpus_chrf, exact_match, rouge
from tfllm.metrics.porter import porter_stem
from tfllm.metrics.rouge import lcs_length, rouge_tokenize

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class _DataOnlyUnpickler(pickle.Unpickler):
    """The WMT17 pickle holds only lists, tuples and strings: refuse anything importable."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"Refusing to load {module}.{name} from a data file.")


@pytest.fixture(scope="module")
def wmt17():
    """`(systems, references)`: 16 `name -> 3004 German segments`, one reference stream."""
    member = "test/wmt17_en_de_systems.pkl.bz2"
    path = assets.fetch_package_files("sacrebleu", "2.6.0", member, sdist=True)
    with bz2.open(path, "rb") as f:
        named = _DataOnlyUnpickler(f).load()
    (ref_name, ref_streams), systems = named[-1], dict(named[:-1])
    assert ref_name == "reference" and len(systems) == 16
    return systems, ref_streams[0]


@pytest.fixture(scope="module")
def lee_news():
    """`(leads, rests)`: each Lee news article's first sentence and the rest of it."""
    path = assets.gensim_test_data_path() / "lee_background.cor"
    articles = path.read_text(encoding="utf-8").splitlines()
    pairs = [a.split(". ", 1) for a in articles if ". " in a]
    return [p[0] + "." for p in pairs], [p[1] for p in pairs]


def reference_rouge(hypotheses, streams, use_stemmer):
    """Mean F-measures from `RougeScorer.score` (one stream) or `score_multi` (several)."""
    scorer = RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    scores = [
        scorer.score_multi([s[i] for s in streams], h) if len(streams) > 1 else
        scorer.score(streams[0][i], h)
        for i, h in enumerate(hypotheses)
    ]  # fmt: skip
    return {t: float(np.mean([s[t].fmeasure for s in scores])) for t in ROUGE_TYPES}


def assert_rouge_matches(hypotheses, streams, use_stemmer):
    references = streams[0] if len(streams) == 1 else streams
    ours = rouge(hypotheses, references, use_stemmer=use_stemmer)
    expected = reference_rouge(hypotheses, streams, use_stemmer)
    assert ours == pytest.approx(expected, abs=1e-12, rel=0)


# --- chrF / chrF++ vs sacrebleu --------------------------------------------------------------

# online-A starts with a byte-order mark, online-G capitalises nouns, PROMT is rule-based.
SYSTEMS = ("newstest2017.online-A.0.en-de", "newstest2017.online-G.0.en-de",
           "newstest2017.PROMT-Rule-based.4735.en-de")  # fmt: skip


@pytest.mark.assets
@pytest.mark.parametrize("word_order", [0, 2])
@pytest.mark.parametrize("system", SYSTEMS)
def test_corpus_chrf_matches_sacrebleu_on_wmt17(wmt17, system, word_order):
    systems, references = wmt17
    expected = sacrebleu.corpus_chrf(systems[system], [references], word_order=word_order)
    ours = corpus_chrf(systems[system], references, word_order=word_order)
    assert ours == pytest.approx(expected.score, abs=1e-9, rel=0)


@pytest.mark.assets
def test_corpus_chrf_several_references_match_sacrebleu_on_wmt17(wmt17):
    """Three streams (the reference, two other systems): each segment takes its best one."""
    systems, references = wmt17
    names = sorted(systems)
    n = 1000
    hypotheses = systems[names[0]][:n]
    streams = [systems[names[1]][:n], references[:n], systems[names[2]][:n]]
    for word_order, beta in [(0, 2), (2, 2), (2, 1)]:
        expected = sacrebleu.corpus_chrf(hypotheses, streams, word_order=word_order, beta=beta)
        ours = corpus_chrf(hypotheses, streams, word_order=word_order, beta=beta)
        assert ours == pytest.approx(expected.score, abs=1e-9, rel=0)


CHRF_CASES = [
    (["", "the cat sat"], ["a reference", "the cat sat on the mat"]),  # empty hypothesis
    ([""], ["abc"]),  # every hypothesis empty: no effective order
    (["abc def"], [""]),  # empty reference: its hypothesis n-grams are not counted
    (["   \t\n"], [" "]),  # whitespace only on both sides
    (["我爱北京天安门。", "naïve café 🙂"], ["我爱北京。", "naive cafe\u0301 🙂"]),
    (["the the the the the", "ab ab ab"], ["the cat", "ab"]),  # repeated n-grams, clipped
    (["(hi) ... a.b 'quoted' x,", "\ufeffDer Koch"], ["(hi ) .. a . b 'quoted x", "Der Koch"]),
    (["a"], ["a b c d e f g h"]),  # orders beyond the segment length
]


@pytest.mark.parametrize("hypotheses, references", CHRF_CASES)
@pytest.mark.parametrize("char_order, word_order", [(6, 0), (6, 2), (3, 1)])
def test_corpus_chrf_hand_cases_match_sacrebleu(hypotheses, references, char_order, word_order):
    expected = sacrebleu.corpus_chrf(
        hypotheses, [references], char_order=char_order, word_order=word_order
    ).score
    ours = corpus_chrf(hypotheses, references, char_order=char_order, word_order=word_order)
    assert ours == pytest.approx(expected, abs=1e-9, rel=0)


@pytest.mark.parametrize("streams", [[["aabb", "b"], ["aba", "b"]], [["aba", "b"], ["aabb", "b"]]])
def test_corpus_chrf_reference_tie_keeps_the_first_like_sacrebleu(streams):
    """The references "aabb" and "aba" give "aaaa" the same sentence chrF, different counts."""
    expected = sacrebleu.corpus_chrf(["aaaa", "ab"], streams).score
    assert corpus_chrf(["aaaa", "ab"], streams) == pytest.approx(expected, abs=1e-9, rel=0)


def test_corpus_chrf_identical_is_100_and_disjoint_is_0():
    assert corpus_chrf(["Der Koch", "tot"], ["Der Koch", "tot"], word_order=2) == 100.0
    assert corpus_chrf(["xyz"], ["abc"]) == 0.0


# --- ROUGE vs rouge-score --------------------------------------------------------------------


@pytest.mark.assets
@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_matches_rouge_score_on_wmt17(wmt17, use_stemmer):
    """German: rouge-score's tokenizer drops every non-ASCII letter ("jähriger" -> j, hriger)."""
    systems, references = wmt17
    for system in SYSTEMS:
        assert_rouge_matches(systems[system], [references], use_stemmer)


@pytest.mark.assets
@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_matches_rouge_score_on_english_news(lee_news, use_stemmer):
    """Lead sentence of each Lee news article as the summary of the rest (long references)."""
    leads, rests = lee_news
    assert len(leads) > 250
    assert_rouge_matches(leads, [rests], use_stemmer)
    # Several references: rouge-score's `score_multi` keeps the best F-measure per type.
    assert_rouge_matches(leads, [rests, leads[1:] + leads[:1]], use_stemmer)


@pytest.mark.assets
def test_porter_stem_matches_nltk_on_real_vocabulary(wmt17, lee_news):
    systems, references = wmt17
    text = " ".join(references + systems[SYSTEMS[0]] + lee_news[0] + lee_news[1])
    words = set(rouge_tokenize(text))
    assert len(words) > 15_000
    stemmer = PorterStemmer()
    mismatches = [(w, stemmer.stem(w), porter_stem(w)) for w in words]
    assert [m for m in mismatches if m[1] != m[2]] == []


# Irregular forms, NLTK's extensions and the rules' corner cases.
WORDS = ["skies", "dying", "news", "innings", "proceed", "ties", "dies", "spied", "died",
         "happy", "enjoy", "sky", "yyyy", "agreed", "feed", "hopping", "falling", "filing",
         "conflated", "generalization", "radicalli", "hopefulli", "geologi", "controlling",
         "adoption", "cease", "1990s", "ing", "ed", "a", "Running", "CATS"]  # fmt: skip


def test_porter_stem_matches_nltk_on_corner_cases():
    stemmer = PorterStemmer()
    assert [porter_stem(w) for w in WORDS] == [stemmer.stem(w) for w in WORDS]


ROUGE_CASES = [
    (["", "the cat"], ["the cat sat", ""]),  # empty hypothesis, empty reference
    (["¿Qué pasó? 日本語 naïve", "İstanbul \u212aelvin x² ½"], ["que paso naive", "istanbul k"]),
    (["the the the the", "cat cat dog"], ["the cat the", "dog cat cat cat"]),  # repeats
    (["Running runners ran; flies fly.", "The generalizations"], ["runs run fly", "generally"]),
    (["a b c d e f g", "1,000 people in 2019"], ["g f e d c b a", "1000 people 2019"]),
]


@pytest.mark.parametrize("hypotheses, references", ROUGE_CASES)
@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_hand_cases_match_rouge_score(hypotheses, references, use_stemmer):
    assert_rouge_matches(hypotheses, [references], use_stemmer)
    stemmer = PorterStemmer() if use_stemmer else None
    for text in hypotheses + references:
        expected = rouge_score_tokenize.tokenize(text, stemmer)
        assert rouge_tokenize(text, use_stemmer) == expected


def test_lcs_length_matches_dynamic_programming():
    rng = np.random.default_rng(0)
    for _ in range(300):
        a = list(rng.integers(0, 4, size=rng.integers(0, 70)))
        b = list(rng.integers(0, 5, size=rng.integers(0, 70)))
        table = np.zeros((len(a) + 1, len(b) + 1), dtype=int)
        for i in range(len(a)):
            for j in range(len(b)):
                table[i + 1, j + 1] = (
                    table[i, j] + 1 if a[i] == b[j] else max(table[i, j + 1], table[i + 1, j])
                )
        assert lcs_length(a, b) == table[-1, -1] == lcs_length(b, a)


# --- exact match, accuracy and macro F1 ------------------------------------------------------


def test_exact_match_normalizes_whitespace_only():
    hypotheses = [" Paris\n", "paris", "New\u00a0 York", "Rome.", "Bonn"]
    references = ["Paris", "Paris", "New York", "Rome", "Bonn"]
    assert exact_match(hypotheses, references) == pytest.approx(3 / 5)
    # Several streams: a hypothesis matches if it equals any of its references.
    second = ["x", "paris", "x", "Rome.", "x"]
    assert exact_match(hypotheses, [references, second]) == pytest.approx(1.0)


@pytest.mark.parametrize("with_labels", [False, True])
def test_classification_scores_match_sklearn(with_labels):
    rng = np.random.default_rng(0)
    labels = ["positive", "negative", "neutral"]
    true = list(rng.choice(labels, size=200))
    answers = labels + ["I think positive", "", "mixed"]  # off-label answers too
    predicted = [str(a) for a in rng.choice(answers, size=200, p=[0.3, 0.3, 0.2, 0.1, 0.05, 0.05])]
    padded = [f"  {p}\n" if i % 3 == 0 else p for i, p in enumerate(predicted)]
    kwargs = {"labels": labels} if with_labels else {}
    ours = classification_scores(padded, true, **kwargs)
    assert ours["accuracy"] == pytest.approx(accuracy_score(true, predicted), abs=1e-12)
    expected_f1 = f1_score(true, predicted, average="macro", zero_division=0, **kwargs)
    assert ours["macro_f1"] == pytest.approx(expected_f1, abs=1e-12)


def test_classification_scores_label_never_seen_counts_as_zero():
    ours = classification_scores(["a", "a"], ["a", "a"], labels=["a", "b"])
    expected = f1_score(["a", "a"], ["a", "a"], labels=["a", "b"], average="macro", zero_division=0)
    assert ours == {"accuracy": 1.0, "macro_f1": pytest.approx(expected)}


# --- errors ---------------------------------------------------------------------------------

SCORERS = [corpus_chrf, rouge, exact_match, classification_scores]


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize(
    "hypotheses, references, error, match",
    [
        (["a", "b", "c"], ["a", "b"], ValueError, r"one \w+ per hypothesis \(3\)\. Received: 2"),
        ([], [], ValueError, r"`hypotheses` must hold at least one segment"),
        ("a b", ["a b"], TypeError, r"`hypotheses` must be a list of strings. Received: str"),
        (["a", None], ["a", "b"], TypeError, r"`hypotheses\[1\]` must be a string.*NoneType"),
        (["a", "b"], ["a", 3], TypeError, r"`references\[1\]` must be a string.*int"),
    ],
)
def test_errors(scorer, hypotheses, references, error, match):
    with pytest.raises(error, match=match):
        scorer(hypotheses, references)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"char_order": 0}, r"`char_order` must be an integer >= 1. Received: 0"),
        ({"word_order": -1}, r"`word_order` must be an integer >= 0. Received: -1"),
        ({"word_order": 2.0}, r"`word_order` must be an integer >= 0. Received: 2.0"),
        ({"beta": 0}, r"`beta` must be a positive number. Received: 0"),
    ],
)
def test_corpus_chrf_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        corpus_chrf(["a"], ["a"], **kwargs)


def test_other_argument_errors():
    with pytest.raises(ValueError, match=r"`references\[1\]` must have one segment per hyp"):
        rouge(["a"], [["a"], ["a", "b"]])
    with pytest.raises(TypeError, match=r"`use_stemmer` must be a bool. Received: 'yes'"):
        rouge(["a"], ["a"], use_stemmer="yes")
    with pytest.raises(TypeError, match=r"`labels\[0\]` must be a string. Received: int"):
        classification_scores(["a"], ["a"], labels=[1])
