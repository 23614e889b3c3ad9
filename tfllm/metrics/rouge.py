"""ROUGE-1, ROUGE-2 and ROUGE-L F-measures equal to Google's `rouge-score` package.

Reproduced from `rouge_score.rouge_scorer.RougeScorer` with its default tokenizer:
lowercase, every run of characters other than ASCII `a-z0-9` becomes a space (so letters
such as `ä`, `é` or any CJK character split words and vanish), optional Porter stemming
(NLTK's rules, see `tfllm.metrics.porter`) of tokens longer than 3 characters. N-gram
precision and recall divide by `max(count, 1)`; ROUGE-L is 0 when either side has no token.
"""

import re
from collections import Counter
from collections.abc import Sequence

from tfllm.metrics._segments import check_segments, reference_streams
from tfllm.metrics.porter import porter_stem

_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def rouge_tokenize(text: str, use_stemmer: bool = False) -> list[str]:
    """Tokens as `rouge_score.tokenize.tokenize(text, PorterStemmer() or None)`.

    Example:
    >>> rouge_tokenize("The cats' café-bar, running!", use_stemmer=True)
    ['the', 'cat', 'caf', 'bar', 'run']
    """
    tokens = _NON_ALPHANUMERIC.sub(" ", text.lower()).split()
    if use_stemmer:
        tokens = [porter_stem(t) if len(t) > 3 else t for t in tokens]
    return tokens


def _fmeasure(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _ngram_f(hyp: Counter, ref: Counter) -> float:
    overlap = sum(min(count, hyp[ngram]) for ngram, count in ref.items())
    precision = overlap / max(sum(hyp.values()), 1)
    recall = overlap / max(sum(ref.values()), 1)
    return _fmeasure(precision, recall)


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of `a` and `b`.

    Bit-parallel (Allison & Dix 1986, Hyyrö 2004): one Python-integer bit per item of `a`,
    so each item of `b` costs a few big-integer operations instead of `len(a)` steps.

    Example:
    >>> lcs_length("the cat sat on the mat".split(), "the mat sat on a cat".split())
    3
    """
    positions: dict = {}
    for i, item in enumerate(a):
        positions[item] = positions.get(item, 0) | (1 << i)
    mask = (1 << len(a)) - 1
    v = mask  # zero bits of v mark LCS positions in `a`
    for item in b:
        u = v & positions.get(item, 0)
        v = ((v + u) | (v - u)) & mask
    return len(a) - v.bit_count()


def _lcs_f(hyp: list[str], ref: list[str]) -> float:
    if not hyp or not ref:
        return 0.0
    lcs = lcs_length(ref, hyp)
    return _fmeasure(lcs / len(hyp), lcs / len(ref))


def _pair_scores(hyp: list[str], ref: list[str]) -> tuple[float, float, float]:
    unigrams = (Counter(hyp), Counter(ref))
    bigrams = (Counter(zip(hyp, hyp[1:], strict=False)), Counter(zip(ref, ref[1:], strict=False)))
    return _ngram_f(*unigrams), _ngram_f(*bigrams), _lcs_f(hyp, ref)


def rouge(hypotheses: Sequence[str], references, use_stemmer: bool = False) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (0-1) over hypothesis/reference pairs.

    Each pair's scores equal `RougeScorer(["rouge1", "rouge2", "rougeL"],
    use_stemmer=use_stemmer).score(reference, hypothesis)[...].fmeasure`; with several
    references, `score_multi`: the best F-measure per ROUGE type.

    Args:
        hypotheses: one generated text per example.
        references: one reference stream (a list of strings aligned with `hypotheses`) or
            several (a list of such lists), as in `corpus_bleu`.
        use_stemmer: Porter-stem tokens longer than 3 characters (`rouge-score`'s option).

    Returns:
        `{"rouge1": float, "rouge2": float, "rougeL": float}`, each the mean F-measure.

    Example:
    >>> scores = rouge(["the cat sat on the mat"], ["the cat is on the mat"])
    >>> {name: round(value, 4) for name, value in scores.items()}
    {'rouge1': 0.8333, 'rouge2': 0.6, 'rougeL': 0.8333}
    """
    check_segments(hypotheses, "hypotheses")
    streams = reference_streams(references, len(hypotheses))
    if not isinstance(use_stemmer, bool):
        raise TypeError(f"`use_stemmer` must be a bool. Received: {use_stemmer!r}")

    totals = [0.0, 0.0, 0.0]
    for i, hypothesis in enumerate(hypotheses):
        hyp = rouge_tokenize(hypothesis, use_stemmer)
        pairs = [_pair_scores(hyp, rouge_tokenize(s[i], use_stemmer)) for s in streams]
        for k in range(3):
            totals[k] += max(scores[k] for scores in pairs)
    n = len(hypotheses)
    return {"rouge1": totals[0] / n, "rouge2": totals[1] / n, "rougeL": totals[2] / n}
