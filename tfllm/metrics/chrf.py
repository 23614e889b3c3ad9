"""Corpus chrF and chrF++ with sacrebleu's defaults, in plain Python (no sacrebleu import).

Reproduced from sacrebleu 2.x (`sacrebleu.corpus_chrf`, `eps_smoothing=False`):
- character n-grams of orders `1..char_order` after deleting all whitespace; word n-grams
  (chrF++) of orders `1..word_order` after splitting one punctuation character off the end
  (or else the start) of each whitespace-separated word;
- per segment, the reference with the best sentence-level score gives the statistics
  (the first one on a tie); hypothesis n-grams of an order the reference has none of are
  not counted;
- corpus statistics are summed per order; precision and recall are averaged over the
  orders where both the hypothesis and the reference have n-grams ("effective order"),
  then combined into an F-beta score.
"""

from collections import Counter
from collections.abc import Sequence

from tfllm.metrics._segments import check_segments, reference_streams

_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _words(segment: str) -> list[str]:
    """Whitespace split, one ASCII punctuation mark split off the end (else the start)."""
    words = []
    for word in segment.split():
        if len(word) > 1 and word[-1] in _PUNCTUATION:
            words += [word[:-1], word[-1]]
        elif len(word) > 1 and word[0] in _PUNCTUATION:
            words += [word[0], word[1:]]
        else:
            words.append(word)
    return words


def _ngram_counts(segment: str, char_order: int, word_order: int) -> list[Counter]:
    """One Counter per order: characters `1..char_order`, then words `1..word_order`."""
    chars = "".join(segment.split())
    counts = [
        Counter(chars[i : i + n] for i in range(len(chars) - n + 1))
        for n in range(1, char_order + 1)
    ]
    if word_order:
        words = _words(segment)
        counts += [
            Counter(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
            for n in range(1, word_order + 1)
        ]
    return counts


def _statistics(hyp_counts: list[Counter], ref_counts: list[Counter]) -> list[int]:
    """`[hyp, ref, match]` n-gram counts for each order, flattened."""
    stats = []
    for hyp, ref in zip(hyp_counts, ref_counts, strict=True):
        matches = sum(min(count, ref[ngram]) for ngram, count in hyp.items() if ngram in ref)
        # sacrebleu: hypothesis n-grams count only if the reference has n-grams of this order.
        stats += [sum(hyp.values()) if ref else 0, sum(ref.values()), matches]
    return stats


def _f_score(stats: list[int], beta: float) -> float:
    """chrF (0-100) from flattened `[hyp, ref, match]` counts, effective-order averaging."""
    factor = beta**2
    mean_precision = mean_recall = 0.0
    effective_order = 0
    for i in range(0, len(stats), 3):
        n_hyp, n_ref, n_match = stats[i : i + 3]
        if n_hyp > 0 and n_ref > 0:
            mean_precision += n_match / n_hyp
            mean_recall += n_match / n_ref
            effective_order += 1
    if effective_order == 0:
        return 0.0
    mean_precision /= effective_order
    mean_recall /= effective_order
    if not mean_precision + mean_recall:
        return 0.0
    score = (1 + factor) * mean_precision * mean_recall
    return 100 * score / (factor * mean_precision + mean_recall)


def corpus_chrf(
    hypotheses: Sequence[str],
    references,
    char_order: int = 6,
    word_order: int = 0,
    beta: int = 2,
) -> float:
    """Corpus-level chrF (0-100), equal to `sacrebleu.corpus_chrf(...).score`.

    Args:
        hypotheses: one detokenized system output per segment.
        references: one reference stream (a list of strings aligned with `hypotheses`) or
            several (a list of such lists), as in `corpus_bleu`. With several, each segment
            is scored against its best reference.
        char_order: longest character n-gram (sacrebleu's default 6).
        word_order: longest word n-gram; 0 is chrF, 2 is chrF++.
        beta: weight of recall relative to precision (2: recall counts twice as much).

    Returns:
        The chrF score as a Python float in `[0, 100]`.

    Example:
    >>> corpus_chrf(["the cat sat"], ["the cat sat"])
    100.0
    >>> round(corpus_chrf(["the cat sat"], ["the cat sat down"], word_order=2), 2)
    68.36
    """
    check_segments(hypotheses, "hypotheses")
    streams = reference_streams(references, len(hypotheses))
    for name, value, low in (("char_order", char_order, 1), ("word_order", word_order, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}. Received: {value!r}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"`beta` must be a positive number. Received: {beta!r}")

    totals = [0] * (3 * (char_order + word_order))
    for i, hypothesis in enumerate(hypotheses):
        hyp_counts = _ngram_counts(hypothesis, char_order, word_order)
        best_stats, best_score = None, -1.0
        for stream in streams:
            stats = _statistics(hyp_counts, _ngram_counts(stream[i], char_order, word_order))
            score = _f_score(stats, beta)
            if score > best_score:  # strictly better: the first reference wins a tie
                best_stats, best_score = stats, score
        totals = [t + s for t, s in zip(totals, best_stats, strict=True)]
    return _f_score(totals, beta)
