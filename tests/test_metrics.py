"""tfllm.metrics against independent references: sacrebleu, seqeval, scikit-learn, numpy."""

import itertools

import keras
import numpy as np
import pytest
import sacrebleu
import seqeval.metrics as sq
import tensorflow as tf
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from seqeval.metrics.sequence_labeling import get_entities as seqeval_entities
from seqeval.metrics.sequence_labeling import precision_recall_fscore_support as seqeval_prfs
from seqeval.scheme import IOBES
from sklearn.metrics import precision_recall_fscore_support

from tfllm.metrics import (
    EntityF1,
    Perplexity,
    PrecisionRecallF1,
    corpus_bleu,
    entity_f1,
    get_entities,
    tokenize_13a,
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def assert_config_round_trip(metric):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert type(restored) is type(metric)
    assert restored.get_config() == metric.get_config()
    return restored


# --- corpus_bleu vs sacrebleu --------------------------------------------------------------

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "It costs $3.50, or roughly 1,000 yen (give or take).",
    "She said: \"I'll be there at 5-6 p.m., don't wait!\"",
    "Prices rose 2.5% in 2019-2020; analysts weren't surprised.",
    "The U.S. economy grew faster than expected, officials said on Monday.",
    "Tom &amp; Jerry met at the café &lt;downtown&gt; last night.",
    "A well-known author wrote the e-mail in under 10 minutes.",
    "Is this the real life? Is this just fantasy?",
    "The committee approved the budget, but the vote was close: 7-5.",
    "Researchers at the university published their findings in Nature.",
    "He bought three apples, two pears and a melon for the picnic.",
    "Don't count your chickens before they hatch.",
    "The train to Berlin leaves at 08:45 from platform 3/4.",
    "Heavy rain is expected across the north-east over the weekend.",
    "Can you send me the report by Friday?",
    "The cat sat on the mat.",
    "Scores: 98.6 vs. 97,5 -- a narrow win for the home team.",
    "Visit https://example.com/path?q=1 for details.",
]
WORDS = sorted({w for s in SENTENCES for w in s.split()})


def perturb(sentence, rng, strength):
    """A noisy copy at the word level; 13a tokenization still has punctuation to split."""
    words = sentence.split()
    out = []
    for word in words:
        roll = rng.random()
        if roll < strength / 3:
            continue  # drop
        if roll < 2 * strength / 3:
            word = WORDS[rng.integers(len(WORDS))]  # substitute
        elif roll < strength:
            out.append(word)  # duplicate
        out.append(word)
    if len(out) > 1 and rng.random() < strength:
        i = rng.integers(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    if rng.random() < 0.15:
        out = out[: rng.integers(1, 4)]  # short hypothesis: brevity penalty
    return " ".join(out)


def random_corpus(rng):
    num_segments, num_streams = int(rng.integers(1, 7)), int(rng.integers(1, 4))
    hypotheses, streams = [], [[] for _ in range(num_streams)]
    for _ in range(num_segments):
        source = SENTENCES[rng.integers(len(SENTENCES))]
        kind = rng.random()
        if kind < 0.08:
            hypotheses.append("")
        elif kind < 0.16:  # unrelated words only: few or no n-gram matches
            hypotheses.append(" ".join(rng.choice(WORDS, size=rng.integers(1, 8))))
        else:
            hypotheses.append(perturb(source, rng, strength=rng.uniform(0.0, 0.8)))
        for stream in streams:
            stream.append(perturb(source, rng, strength=rng.uniform(0.0, 0.3)))
    return hypotheses, streams


def test_tokenize_13a_matches_sacrebleu(rng):
    tokenizer = Tokenizer13a()
    alphabet = list("abcXYZ019 .,-/&;:$%'\"()[]{}<>!?@#^_`~|+=*\\\n\t") + [
        "&amp;", "&quot;", "&lt;", "&gt;", "<skipped>", "-\n", "é", "—", "“", "3.5", "1,0", " ",
    ]  # fmt: skip
    for _ in range(2000):
        line = "".join(rng.choice(alphabet, size=rng.integers(0, 25)))
        assert tokenize_13a(line) == tokenizer(line.rstrip()).split(), repr(line)
    for sentence in SENTENCES:
        assert tokenize_13a(sentence) == tokenizer(sentence).split()


def test_corpus_bleu_matches_sacrebleu_on_random_corpora(rng):
    seen = {"bp<1": 0, "smoothed": 0, "zero": 0, "multi_ref": 0}
    for _ in range(400):
        hypotheses, streams = random_corpus(rng)
        expected = sacrebleu.corpus_bleu(hypotheses, streams)
        assert corpus_bleu(hypotheses, streams) == pytest.approx(expected.score, abs=1e-9)
        if len(streams) == 1:
            ours = corpus_bleu(hypotheses, streams[0])  # one stream as a list of strings
            assert ours == pytest.approx(expected.score, abs=1e-9)
        seen["bp<1"] += expected.bp < 1
        seen["smoothed"] += expected.score > 0 and 0 in expected.counts
        seen["zero"] += expected.score == 0
        seen["multi_ref"] += len(streams) > 1
    assert min(seen.values()) >= 10, seen  # every branch was exercised


@pytest.mark.parametrize(
    "hypotheses, references",
    [
        (["The cat sat on the mat."], ["The cat sat on the mat."]),  # 100
        (["", ""], ["The cat sat on the mat.", "A dog."]),  # empty hypotheses
        (["", "the"], ["", "the cat"]),  # matches but no 2-grams at all
        (["dog dog dog dog"], ["The cat sat on the mat."]),  # no match at all
        (["the cat the cat the cat"], ["the cat sat on the mat"]),  # clipped counts
        (["the cat sat on a rug"], ["the cat sat on the mat"]),  # 4-gram count 0: smoothed
        (["a b c d"], [["a b c d e f"], ["a b"]]),  # 6 and 2 tie for closest: 2, no penalty
        (["a b c d e"], [["a b c"], ["a b c d e f g"]]),  # same, other stream order
    ],
)
def test_corpus_bleu_known_cases(hypotheses, references):
    streams = references if isinstance(references[0], list) else [references]
    expected = sacrebleu.corpus_bleu(hypotheses, streams).score
    assert corpus_bleu(hypotheses, references) == pytest.approx(expected, abs=1e-9)


def test_corpus_bleu_identical_is_100():
    assert corpus_bleu(SENTENCES, [SENTENCES, SENTENCES[::-1]]) == pytest.approx(100.0)


@pytest.mark.parametrize(
    "hypotheses, references, error, match",
    [
        (["a", "b"], ["a"], ValueError, r"`references` must have one segment per hypothesis"),
        (["a"], [["a"], ["a", "b"]], ValueError, r"`references\[1\]` must have one segment"),
        ([], [], ValueError, r"`hypotheses` must hold at least one segment"),
        (["a"], [], ValueError, r"`references` must have one segment per hypothesis \(1\)"),
        ("a b", ["a b"], TypeError, r"`hypotheses` must be a list of strings"),
        (["a"], "a", TypeError, r"`references` must be a list of strings"),
        (["a"], ["a", ["a"]], TypeError, r"not a mix"),
        ([None], ["a"], TypeError, r"`hypotheses\[0\]` must be a string"),
    ],
)
def test_corpus_bleu_errors(hypotheses, references, error, match):
    with pytest.raises(error, match=match):
        corpus_bleu(hypotheses, references)


# --- entity_f1 vs seqeval --------------------------------------------------------------------

TYPES = ("PER", "LOC", "ORG")


def random_tags(rng, prefixes, length):
    tags = [f"{rng.choice(list(prefixes))}-{rng.choice(TYPES)}" for _ in range(length)]
    return [t if rng.random() > 0.4 else "O" for t in tags]


def well_formed_iobes(rng, length):
    tags = []
    while len(tags) < length:
        size, type_ = int(rng.integers(0, min(4, length - len(tags) + 1))), rng.choice(TYPES)
        if size == 0:
            tags.append("O")
        elif size == 1:
            tags.append(f"S-{type_}")
        else:
            tags += [f"B-{type_}"] + [f"I-{type_}"] * (size - 2) + [f"E-{type_}"]
    return tags


def random_corpus_tags(rng, prefixes):
    true, pred = [], []
    for _ in range(rng.integers(1, 6)):
        gold = random_tags(rng, prefixes, int(rng.integers(0, 12)))
        guess = [t if rng.random() < 0.7 else random_tags(rng, prefixes, 1)[0] for t in gold]
        true.append(gold)
        pred.append(guess)
    return true, pred


def assert_matches_seqeval(ours, true, pred, **seqeval_kwargs):
    kwargs = {"zero_division": 0, **seqeval_kwargs}
    assert ours["precision"] == pytest.approx(sq.precision_score(true, pred, **kwargs), abs=1e-12)
    assert ours["recall"] == pytest.approx(sq.recall_score(true, pred, **kwargs), abs=1e-12)
    assert ours["f1"] == pytest.approx(sq.f1_score(true, pred, **kwargs), abs=1e-12)


def test_get_entities_matches_seqeval_exhaustively():
    # Every sequence of up to 4 tags over two types and all IOBES prefixes: the span
    # reading rules agree with seqeval's (= conlleval's) in every case, ill-formed included.
    tags = ["O"] + [f"{p}-{t}" for p in "BIES" for t in "XY"]
    for length in range(5):
        for seq in itertools.product(tags, repeat=length):
            assert get_entities(list(seq), "IOBES") == seqeval_entities(list(seq)), seq


def test_entity_f1_known_answer():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "I-ORG"]]
    scores = entity_f1(true, pred)
    assert scores["precision"] == scores["recall"] == scores["f1"] == pytest.approx(1 / 3)
    assert scores["per_type"] == {
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "ORG": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
    }


@pytest.mark.parametrize("scheme, prefixes", [("IOB2", "BI"), ("IOB1", "IIIB"), ("IOBES", "BIES")])
def test_entity_f1_matches_seqeval_default_mode(scheme, prefixes, rng):
    # seqeval's default mode is its port of conlleval; random tags are often ill formed
    # (I- after O, type changes inside a span), which exercises conlleval's leniency.
    # IOB1 data is mostly I- (B- only splits adjacent spans), read by the same rules.
    for _ in range(300):
        true, pred = random_corpus_tags(rng, prefixes)
        ours = entity_f1(true, pred, scheme=scheme)
        assert_matches_seqeval(ours, true, pred)
        p, r, f, support = seqeval_prfs(true, pred, average=None, zero_division=0)
        names = sorted({e[0] for e in seqeval_entities(true) + seqeval_entities(pred)})
        assert list(ours["per_type"]) == names
        for k, name in enumerate(names):
            got = ours["per_type"][name]
            expected = {"precision": p[k], "recall": r[k], "f1": f[k], "support": support[k]}
            assert got == pytest.approx(expected, abs=1e-12)


def test_entity_f1_iobes_strict_mode_agrees_only_on_well_formed_tags(rng):
    # seqeval's `mode="strict", scheme=IOBES` drops ill-formed spans (e.g. I- E- without a
    # B-), while conlleval reads them leniently; so conlleval == seqeval *default* mode for
    # IOBES, and strict mode agrees with both only when every sequence is well formed.
    for _ in range(200):
        length = int(rng.integers(1, 12))
        true, pred = well_formed_iobes(rng, length), well_formed_iobes(rng, length)
        ours = entity_f1([true], [pred], scheme="IOBES")
        assert_matches_seqeval(ours, [true], [pred], mode="strict", scheme=IOBES)
        assert_matches_seqeval(ours, [true], [pred])
    true, pred = [["B-PER", "E-PER", "O"]], [["I-PER", "E-PER", "O"]]
    assert entity_f1(true, pred, scheme="IOBES")["f1"] == 1.0  # conlleval: same span
    assert sq.f1_score(true, pred, mode="strict", scheme=IOBES) == 0.0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"scheme": "BILOU"}, ValueError, r"`scheme` must be one of .*'BILOU'"),
        ({"pred_tags": [["B-PER", "X-PER"]]}, ValueError, r"`pred_tags` holds 'X-PER'"),
        ({"true_tags": [["S-PER", "O"]]}, ValueError, r"`true_tags` holds 'S-PER'.*IOB2"),
        ({"pred_tags": [["B-", "O"]]}, ValueError, r"`pred_tags` holds 'B-'"),
        ({"pred_tags": [["PER", "O"]]}, ValueError, r"`pred_tags` holds 'PER'"),
        ({"pred_tags": [["B-PER"]]}, ValueError, r"Sentence 0 has 2 tags in `true_tags`"),
        ({"pred_tags": []}, ValueError, r"same number of sentences. Received: 1 and 0"),
        ({"pred_tags": ["B-PER", "O"]}, TypeError, r"`pred_tags` must be a list of tag seq"),
    ],
)
def test_entity_f1_errors(kwargs, error, match):
    arguments = {"true_tags": [["B-PER", "O"]], "pred_tags": [["B-PER", "O"]], **kwargs}
    with pytest.raises(error, match=match):
        entity_f1(**arguments)


# --- Perplexity ------------------------------------------------------------------------------


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def perplexity_batches(rng, num_batches=3, batch=3, length=5, vocab=7):
    batches = []
    for _ in range(num_batches):
        logits = rng.normal(size=(batch, length, vocab)) * 2
        labels = rng.integers(0, vocab, size=(batch, length))
        weights = rng.choice([0.0, 0.5, 1.0, 2.0], size=(batch, length))
        labels[weights == 0] = -100  # ignored positions may hold any label
        batches.append((labels, logits.astype("float32"), weights))
    return batches


def numpy_perplexity(batches):
    nll = weight = 0.0
    for labels, logits, weights in batches:
        logp = log_softmax(logits.astype("float64"))
        kept = weights > 0
        picked = np.take_along_axis(logp, np.where(kept, labels, 0)[..., None], -1)[..., 0]
        nll -= (picked * weights)[kept].sum()
        weight += weights.sum()
    return np.exp(nll / weight)


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("from_logits", [True, False])
def test_perplexity_matches_numpy(graph, from_logits, rng):
    batches = perplexity_batches(rng)
    metric = Perplexity(from_logits=from_logits)
    update = tf.function(metric.update_state) if graph else metric.update_state
    for labels, logits, weights in batches:
        y_pred = logits if from_logits else keras.ops.softmax(logits)
        update(labels, y_pred, sample_weight=weights)
    assert float(metric.result()) == pytest.approx(numpy_perplexity(batches), rel=1e-5)
    # Not the mean of per-batch perplexities.
    per_batch = np.mean([numpy_perplexity([b]) for b in batches])
    assert abs(float(metric.result()) - per_batch) > 1e-3
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_perplexity_without_weights_and_config(rng):
    labels, logits, _ = perplexity_batches(rng, num_batches=1)[0]
    labels = np.abs(labels) % logits.shape[-1]
    metric = assert_config_round_trip(Perplexity(name="ppl"))
    metric.update_state(labels, logits)
    expected = numpy_perplexity([(labels, logits, np.ones(labels.shape))])
    assert float(metric.result()) == pytest.approx(expected, rel=1e-5)
    assert metric.name == "ppl" and metric.from_logits


# --- PrecisionRecallF1 vs scikit-learn -------------------------------------------------------


@pytest.mark.parametrize("average", ["micro", "macro", "weighted", None])
@pytest.mark.parametrize("graph", [False, True])
def test_precision_recall_f1_matches_sklearn(average, graph, rng):
    num_classes = 6
    metric = PrecisionRecallF1(num_classes, average=average)
    update = tf.function(metric.update_state) if graph else metric.update_state
    labels, predictions, weights = [], [], []
    for step in range(3):
        # Class 5 never occurs and class 4 only in predictions: macro must skip class 5.
        y_true = rng.choice(4, size=(4, 7), p=[0.5, 0.3, 0.15, 0.05])
        y_pred = np.where(rng.random((4, 7)) < 0.6, y_true, rng.integers(0, 5, size=(4, 7)))
        weight = rng.choice([0.0, 1.0, 0.5, 3.0], size=(4, 7))
        y_true[weight == 0] = -100  # ignored labels count for nothing
        scores = np.eye(num_classes)[y_pred] + rng.normal(size=(4, 7, num_classes)) * 0.1
        update(y_true, scores if step % 2 else y_pred, sample_weight=weight)
        kept = weight > 0
        labels.append(y_true[kept])
        predictions.append(y_pred[kept])
        weights.append(weight[kept])
    p, r, f, _ = precision_recall_fscore_support(
        np.concatenate(labels),
        np.concatenate(predictions),
        average=average,
        labels=range(num_classes) if average is None else None,
        sample_weight=np.concatenate(weights),
        zero_division=0,
    )
    ours = {k: keras.ops.convert_to_numpy(v) for k, v in metric.scores().items()}
    np.testing.assert_allclose(ours["precision"], p, atol=1e-6)
    np.testing.assert_allclose(ours["recall"], r, atol=1e-6)
    np.testing.assert_allclose(ours["f1"], f, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(metric.result()), f, atol=1e-6)


def test_precision_recall_f1_score_choice_and_config():
    metric = assert_config_round_trip(PrecisionRecallF1(3, average="macro", score="recall"))
    assert metric.name == "recall"
    metric.update_state([0, 1, 2, 2], [0, 2, 2, 2])
    assert float(metric.result()) == pytest.approx((1 + 0 + 1) / 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 0}, r"`num_classes` must be a positive int. Received: 0"),
        ({"num_classes": -2}, r"Received: -2"),
        ({"num_classes": 2.0}, r"Received: 2.0"),
        ({"num_classes": True}, r"Received: True"),
        ({"num_classes": 3, "average": "samples"}, r"`average` must be one of"),
        ({"num_classes": 3, "score": "accuracy"}, r"`score` must be one of"),
    ],
)
def test_precision_recall_f1_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrecisionRecallF1(**kwargs)


# --- EntityF1 --------------------------------------------------------------------------------

LABELS = {
    "IOB2": ["O"] + [f"{p}-{t}" for t in TYPES for p in "BI"],
    "IOBES": ["O"] + [f"{p}-{t}" for t in TYPES for p in "BIES"],
}


def masked_tag_batches(rng, label_names, num_batches=4, batch=4, length=9):
    """Id batches, weights (0 inside and at the end) and the tag strings left after masking."""
    batches, true_tags, pred_tags = [], [], []
    ids = np.arange(len(label_names))
    for _ in range(num_batches):
        y_true = rng.choice(ids, size=(batch, length), p=_tag_probs(len(ids)))
        y_pred = np.where(
            rng.random((batch, length)) < 0.7, y_true, rng.choice(ids, (batch, length))
        )
        weight = (rng.random((batch, length)) > 0.25).astype("float32")  # ignored pieces
        weight[np.arange(length)[None] >= rng.integers(0, length + 1, (batch, 1))] = 0  # padding
        y_true[weight == 0] = -100
        for row in range(batch):
            kept = weight[row] > 0
            true_tags.append([label_names[i] for i in y_true[row][kept]])
            pred_tags.append([label_names[i] for i in y_pred[row][kept]])
        batches.append((y_true, y_pred, weight))
    return batches, true_tags, pred_tags


def _tag_probs(n):
    p = np.ones(n)
    p[0] = n / 2  # plenty of O
    return p / p.sum()


@pytest.mark.parametrize(
    "scheme, mode", [("IOB2", "eager"), ("IOBES", "eager"), ("IOB2", "graph"), ("IOBES", "xla")]
)
def test_entity_f1_metric_matches_entity_f1(scheme, mode, rng):
    label_names = LABELS[scheme]
    batches, true_tags, pred_tags = masked_tag_batches(rng, label_names)
    metric = EntityF1(label_names, scheme)
    update = metric.update_state
    graph = mode != "eager"
    if graph:  # dynamic batch and time: spans are read with symbolic shapes
        spec = tf.TensorSpec((None, None), tf.int64)
        update = tf.function(update, input_signature=[spec] * 3, jit_compile=mode == "xla")
    for k, (y_true, y_pred, weight) in enumerate(batches):
        if k % 2 and not graph:  # scores instead of ids
            y_pred = np.eye(len(label_names))[y_pred].astype("float32")
        update(y_true, y_pred, weight.astype("int64") if graph else weight)
    expected = entity_f1(true_tags, pred_tags, scheme=scheme)
    assert 0 < expected["f1"] < 1
    for score, value in metric.scores().items():
        assert float(value) == pytest.approx(expected[score], abs=1e-6)
    assert float(metric.result()) == float(metric.scores()["f1"])


@pytest.mark.parametrize("score", ["precision", "recall"])
def test_entity_f1_metric_score_choice(score):
    metric = EntityF1(LABELS["IOB2"], score=score)
    assert metric.name == f"entity_{score}"
    metric.update_state([[1, 2, 0, 3, 0]], [[1, 2, 0, 0, 0]])  # PER found, LOC missed
    assert float(metric.result()) == {"precision": 1.0, "recall": 0.5}[score]


def test_entity_f1_metric_config_and_errors():
    metric = assert_config_round_trip(EntityF1(LABELS["IOBES"], scheme="IOBES"))
    assert float(metric.result()) == 0.0  # nothing seen yet
    metric.update_state([[0, 1, 2, 0]], [[0, 1, 2, 0]])
    assert float(metric.result()) == 1.0
    with pytest.raises(ValueError, match=r"`label_names` holds 'E-PER', which is not a IOB2"):
        EntityF1(LABELS["IOBES"])
    with pytest.raises(ValueError, match=r"`scheme` must be one of"):
        EntityF1(LABELS["IOB2"], scheme="iob2")


def test_per_sequence_weights_broadcast_over_tokens(rng):
    labels, logits, _ = perplexity_batches(rng, num_batches=1)[0]
    labels = np.abs(labels) % logits.shape[-1]
    per_sequence = np.array([0.0, 1.0, 2.0])
    per_token = np.repeat(per_sequence[:, None], labels.shape[1], axis=1)
    for metric_class in (Perplexity, lambda: EntityF1(LABELS["IOB2"])):
        a, b = metric_class(), metric_class()
        a.update_state(labels, logits, sample_weight=per_sequence)
        b.update_state(labels, logits, sample_weight=per_token)
        assert float(a.result()) == pytest.approx(float(b.result()), rel=1e-6)


def tiny_tagger(num_labels, vocab=20, length=9):
    inputs = keras.Input((length,), dtype="int32")
    hidden = keras.layers.Embedding(vocab, 8)(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_labels)(hidden))


def compile_tagger(model, label_names):
    # `weighted_metrics`, not `metrics`: Keras hands `sample_weight` only to the former.
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100),
        weighted_metrics=[
            EntityF1(label_names),
            PrecisionRecallF1(len(label_names), average="macro", name="macro_f1"),
            Perplexity(),
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        ],
    )


def tagger_data(rng, label_names, batch):
    batches, _, _ = masked_tag_batches(rng, label_names, num_batches=1, batch=batch)
    y, _, weight = batches[0]
    return rng.integers(0, 20, size=y.shape), y, weight


def assert_logs_match_references(logs, model, x, y, weight, label_names):
    logits = keras.ops.convert_to_numpy(model(x))  # eager call: no extra tracing
    pred, kept = logits.argmax(-1), weight > 0
    true_tags = [[label_names[i] for i in row[m]] for row, m in zip(y, kept, strict=True)]
    pred_tags = [[label_names[i] for i in row[m]] for row, m in zip(pred, kept, strict=True)]
    assert logs["entity_f1"] == pytest.approx(entity_f1(true_tags, pred_tags)["f1"], abs=1e-6)
    _, _, macro_f1, _ = precision_recall_fscore_support(
        y[kept], pred[kept], average="macro", zero_division=0
    )
    assert logs["macro_f1"] == pytest.approx(macro_f1, abs=1e-6)
    assert logs["perplexity"] == pytest.approx(numpy_perplexity([(y, logits, weight)]), rel=1e-5)


def test_metrics_in_fit_and_evaluate(rng):
    label_names = LABELS["IOB2"]
    x, y, weight = tagger_data(rng, label_names, batch=12)
    model = tiny_tagger(len(label_names))
    compile_tagger(model, label_names)
    history = model.fit(x, y, sample_weight=weight, batch_size=4, epochs=1, verbose=0)
    assert {"entity_f1", "macro_f1", "perplexity"} <= set(history.history)
    logs = model.evaluate(x, y, sample_weight=weight, batch_size=5, verbose=0, return_dict=True)
    assert_logs_match_references(logs, model, x, y, weight, label_names)


def test_metrics_sum_across_replicas(mirrored_strategy, rng):
    label_names = LABELS["IOB2"]
    x, y, weight = tagger_data(rng, label_names, batch=8)
    with mirrored_strategy.scope():
        model = tiny_tagger(len(label_names))
        compile_tagger(model, label_names)
    logs = model.evaluate(x, y, sample_weight=weight, batch_size=8, verbose=0, return_dict=True)
    assert_logs_match_references(logs, model, x, y, weight, label_names)


def test_public_names():
    import tfllm.metrics

    for name in ("corpus_bleu", "entity_f1", "Perplexity", "PrecisionRecallF1", "EntityF1"):
        assert hasattr(tfllm.metrics, name)
