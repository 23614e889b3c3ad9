"""In-context classification scored by a causal LM, against a hand computation: one
unpadded forward pass per (prompt, label word) and a float64 numpy log-softmax."""

import numpy as np
import pytest

from tests.helpers import randomize_weights
from tfllm.demonstrations import BM25Selector, PromptBuilder, evaluate_icl, icl_markdown
from tfllm.demonstrations.scoring import few_shot_label_scores, score_label_words
from tfllm.models import CausalLM, GPTBackbone
from tfllm.preprocessing import CausalLMPreprocessor
from tfllm.tokenizers import BytePairTokenizer, WordPieceTokenizer
from tfllm.tokenizers.byte_pair import bytes_to_unicode

WORDS = ["[UNK]", "[CLS]", "[SEP]", "good", "bad", "film", "plot", "fine", "acting", "great",
         "story", "is", "neg", "pos", "."]  # fmt: skip
MERGES = ["h e", "l l", "he ll", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "hell o"]


@pytest.fixture(scope="module")
def word_tokenizer():
    return WordPieceTokenizer(WORDS)


@pytest.fixture(scope="module")
def byte_tokenizer():
    vocabulary = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for merge in MERGES:
        vocabulary["".join(merge.split())] = len(vocabulary)
    vocabulary["<|endoftext|>"] = len(vocabulary)
    return BytePairTokenizer(vocabulary, MERGES)


def causal_lm(vocabulary_size, **kwargs):
    backbone = GPTBackbone.from_preset(
        "gpt_tiny", dropout=0.0, vocabulary_size=vocabulary_size, **kwargs
    )
    randomize_weights(backbone, scale=0.3)  # peaked next-token distributions, not uniform
    return CausalLM(backbone)


def hand_log_likelihood(lm, tokenizer, prompt, label, bos, label_prefix=" "):
    context = bos + tokenizer.tokenize(prompt).numpy().tolist()
    label_ids = tokenizer.tokenize(label_prefix + label).numpy().tolist()
    ids = np.array([context + label_ids], np.int32)
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    if lm.backbone.packed_sequences:
        inputs["segment_ids"] = np.ones_like(ids)  # one document
    logits = np.asarray(lm(inputs), np.float64)[0]  # (T, V), unpadded
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    # Position t predicts token t + 1: label token j is predicted at len(context) + j - 1.
    return sum(log_probs[len(context) + j - 1, t] for j, t in enumerate(label_ids)), len(label_ids)


def assert_matches_hand(scores, lm, tokenizer, prompts, labels, bos, normalize=False, **kw):
    table = [[hand_log_likelihood(lm, tokenizer, p, w, bos, **kw) for w in labels] for p in prompts]
    expected = np.array([[s for s, _ in row] for row in table])
    ranked = np.array([[s / n if normalize else s for s, n in row] for row in table])
    probabilities = np.exp(ranked) / np.exp(ranked).sum(1, keepdims=True)
    np.testing.assert_allclose(scores["log_likelihoods"], expected, rtol=0, atol=2e-5)
    np.testing.assert_allclose(scores["probabilities"], probabilities, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(scores["predictions"], probabilities.argmax(1))
    assert np.ptp(probabilities) > 0.05  # the check is not vacuous: labels differ


@pytest.mark.parametrize("batch_size", [1, 4])
def test_word_piece_label_probabilities_equal_hand_computation(word_tokenizer, batch_size):
    lm = causal_lm(word_tokenizer.vocabulary_size())
    prompts = ["good film is", "bad plot is neg . great story is", "fine acting is"]
    labels = ["neg", "pos", "good film"]  # one label of two tokens
    bos = word_tokenizer.token_to_id("[CLS]")
    scores = score_label_words(
        lm, word_tokenizer, prompts, labels, bos_token_id=bos, batch_size=batch_size
    )
    assert scores["log_likelihoods"].shape == (3, 3) and scores["predictions"].shape == (3,)
    assert_matches_hand(scores, lm, word_tokenizer, prompts, labels, [bos])


@pytest.mark.parametrize("normalize_length", [False, True])
def test_byte_pair_multi_token_labels_equal_hand_computation(byte_tokenizer, normalize_length):
    """Byte-level BPE: " world" is one token, " hi there" five; no BOS, a packed backbone."""
    lm = causal_lm(byte_tokenizer.vocabulary_size(), packed_sequences=True)
    prompts = ["hello world. Say:", "héllo! Say:"]
    labels = ["world", "hi there", "hello"]
    scores = score_label_words(
        lm, byte_tokenizer, prompts, labels, normalize_length, bos_token_id=None, batch_size=4
    )
    assert_matches_hand(scores, lm, byte_tokenizer, prompts, labels, [], normalize_length)


def test_bos_auto_comes_from_the_preprocessor(word_tokenizer):
    lm = causal_lm(word_tokenizer.vocabulary_size())
    lm.preprocessor = CausalLMPreprocessor(word_tokenizer, sequence_length=16)
    scores = score_label_words(lm, word_tokenizer, ["good film is"], ["neg", "pos"])
    cls = word_tokenizer.token_to_id("[CLS]")
    assert_matches_hand(scores, lm, word_tokenizer, ["good film is"], ["neg", "pos"], [cls])


def test_few_shot_label_scores_score_the_built_prompts(word_tokenizer):
    lm = causal_lm(word_tokenizer.vocabulary_size())
    selector = BM25Selector(["good film", "bad plot", "fine acting"], [1, 0, 1], stopwords=None)
    builder = PromptBuilder(
        word_tokenizer, 64, "{text} is {label} . ", "{text} is", "", ["neg", "pos"]
    )
    queries = ["great film", "bad acting"]
    two_shot = few_shot_label_scores(lm, word_tokenizer, selector, builder, queries, 2)
    prompts = [
        "bad plot is neg . good film is pos . great film is",
        "bad plot is neg . fine acting is pos . bad acting is",
    ]
    assert_matches_hand(two_shot, lm, word_tokenizer, prompts, ["neg", "pos"], [])
    zero_shot = few_shot_label_scores(lm, word_tokenizer, None, builder, queries, 0)
    assert_matches_hand(zero_shot, lm, word_tokenizer, ["great film is", "bad acting is"],
                        ["neg", "pos"], [])  # fmt: skip


@pytest.mark.parametrize(
    "prompts, labels, kwargs, error, match",
    [
        (["good film is"], ["pos", "  "], {}, ValueError, r"Label word '  ' \(`label_words\[1"),
        (["good film is"], ["pos", ""], {}, ValueError, r"Label word '' .*tokenizes to no token"),
        (["good film is"], ["pos", "pos"], {}, ValueError, r"distinct.*\['pos'\]"),
        (["good film is"], [], {}, ValueError, r"at least one label word"),
        (["good film is"], "pos", {}, TypeError, r"`label_words` must be a list of strings"),
        ([""], ["pos"], {"bos_token_id": None}, ValueError, r"Prompt 0 has no token and no BOS"),
        (["good " * 127], ["pos"], {}, ValueError, r"needs 129 tokens.*`max_sequence_length`=128"),
        (["good"], ["pos"], {"bos_token_id": "[CLS]"}, TypeError, r"`bos_token_id` must be"),
        (["good"], ["pos"], {"batch_size": 0}, ValueError, r"`batch_size` must be an int >= 1"),
    ],
)
def test_errors(word_tokenizer, prompts, labels, kwargs, error, match):
    lm = CausalLM(GPTBackbone.from_preset("gpt_tiny", vocabulary_size=len(WORDS)))
    kwargs = {"bos_token_id": 1, **kwargs}
    with pytest.raises(error, match=match):
        score_label_words(lm, word_tokenizer, prompts, labels, **kwargs)


# --- the ICL table: accuracy per selector and k -----------------------------------------------


def test_icl_table_accuracy_is_the_hand_scored_answers(word_tokenizer):
    """Each cell: the label word of highest hand log-likelihood, compared with the labels."""
    lm = causal_lm(word_tokenizer.vocabulary_size())
    pool = [("good film", 1), ("bad plot", 0), ("fine acting", 1), ("bad story", 0)]
    queries = [("great film", 1), ("bad acting", 0), ("good story", 1), ("bad film", 0)]
    templates = dict(example_template="{text} is {label} . ", query_template="{text} is")
    report = evaluate_icl(lm, word_tokenizer, pool, queries, ["neg", "pos"], shots=(0, 1),
                          selectors=("random", "bm25"), bos_token_id=None, **templates)  # fmt: skip
    assert report["query_majority"] == 0.5 and report["shots"] == [0, 1]
    builder = PromptBuilder(word_tokenizer, 64, label_names=["neg", "pos"], **templates)
    bm25 = BM25Selector([t for t, _ in pool], [y for _, y in pool])
    shown = [[pool[i] for i in row] for row in bm25.select([t for t, _ in queries], 1)]
    for k, examples in ((0, [[] for _ in queries]), (1, shown)):
        prompts = builder.build_batch([t for t, _ in queries], examples)
        answers = [
            np.argmax(
                [hand_log_likelihood(lm, word_tokenizer, p, w, [])[0] for w in ("neg", "pos")]
            )
            for p in prompts
        ]
        accuracy = np.mean([a == y for a, (_, y) in zip(answers, queries, strict=True)])
        assert report["accuracy"]["bm25"][str(k)] == pytest.approx(accuracy)
    # Zero-shot prompts are the same whatever the selector.
    assert report["accuracy"]["random"]["0"] == report["accuracy"]["bm25"]["0"]
    assert "| bm25 |" in icl_markdown(report, "gpt_tiny", "cmd")


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(selectors=("knn",)), r"\['knn'\] need an `encoder`"),
        (dict(selectors=("nearest",)), r"`selectors` must be names of"),
        (dict(shots=(0, -1)), r"`shots` must be non-negative ints"),
        (dict(queries=[("good", 2)]), r"`queries\[0\]`'s label must be an id in \[0, 2\)"),
        (dict(pool=[]), r"`pool` must be a non-empty list"),
    ],
)
def test_icl_table_errors(word_tokenizer, changes, match):
    lm = causal_lm(word_tokenizer.vocabulary_size())
    arguments = dict(pool=[("good film", 1)], queries=[("bad", 0)], shots=(0,),
                     selectors=("random",))  # fmt: skip
    arguments.update(changes)
    with pytest.raises(ValueError, match=match):
        evaluate_icl(lm, word_tokenizer, label_words=["neg", "pos"], **arguments)
