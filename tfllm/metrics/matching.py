"""Exact match, accuracy and macro F1 of generated answers, after whitespace normalization.

Normalization (`normalize_whitespace`): `" ".join(text.split())`, i.e. leading and
trailing whitespace removed and every inner run of whitespace (any Unicode whitespace that
`str.split()` knows: spaces, tabs, newlines, no-break spaces, ...) made one space. Case,
punctuation and articles are kept (unlike SQuAD's answer normalization).
"""

from collections import Counter
from collections.abc import Sequence

from tfllm.metrics._segments import check_segments, reference_streams


def normalize_whitespace(text: str) -> str:
    """Strip `text` and collapse each inner run of whitespace to one space.

    Example:
    >>> normalize_whitespace("  Paris\\n is\\tnice ")
    'Paris is nice'
    """
    return " ".join(text.split())


def exact_match(hypotheses: Sequence[str], references) -> float:
    """Fraction (0-1) of hypotheses equal to a reference after whitespace normalization.

    Args:
        hypotheses: one generated text per example.
        references: one reference stream (a list of strings aligned with `hypotheses`) or
            several (a list of such lists), as in `corpus_bleu`: a hypothesis matches if it
            equals any of its references.

    Returns:
        The exact-match rate as a Python float in `[0, 1]`.

    Example:
    >>> exact_match(["Paris ", "berlin", "Rome\\n"], ["Paris", "Berlin", "Rome"])
    0.6666666666666666
    """
    check_segments(hypotheses, "hypotheses")
    streams = reference_streams(references, len(hypotheses))
    matches = sum(
        any(normalize_whitespace(hypothesis) == normalize_whitespace(s[i]) for s in streams)
        for i, hypothesis in enumerate(hypotheses)
    )
    return matches / len(hypotheses)


def classification_scores(
    hypotheses: Sequence[str], references: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, float]:
    """Accuracy and macro F1 of label-like answers, after whitespace normalization.

    Equal to scikit-learn's `accuracy_score` and `f1_score(average="macro",
    zero_division=0, labels=labels)` on the normalized strings. Without `labels`, the macro
    mean runs over every label seen in `references` or `hypotheses`, so each distinct
    off-label answer ("I think positive") is a class of its own with F1 0. With `labels`,
    only those classes are averaged; an off-label answer still counts as a miss (a false
    negative of the true class).

    Args:
        hypotheses: one generated answer per example.
        references: the true label of each example (one string each).
        labels: optional list of the valid labels, the classes of the macro mean.

    Returns:
        `{"accuracy": float, "macro_f1": float}`, both in `[0, 1]`.

    Example:
    >>> classification_scores(["pos", "neg ", "pos", "meh"], ["pos", "neg", "neg", "neg"],
    ...                       labels=["pos", "neg"])
    {'accuracy': 0.5, 'macro_f1': 0.5833333333333333}
    """
    check_segments(hypotheses, "hypotheses")
    check_segments(references, "references")
    if len(references) != len(hypotheses):
        raise ValueError(
            f"`references` must have one label per hypothesis ({len(hypotheses)}). "
            f"Received: {len(references)} labels"
        )
    predicted = [normalize_whitespace(h) for h in hypotheses]
    true = [normalize_whitespace(r) for r in references]
    if labels is None:
        classes = sorted(set(true) | set(predicted))
    else:
        check_segments(labels, "labels")
        classes = list(dict.fromkeys(normalize_whitespace(label) for label in labels))

    hits = Counter(t for t, p in zip(true, predicted, strict=True) if t == p)
    true_counts, predicted_counts = Counter(true), Counter(predicted)
    f1 = 0.0
    for c in classes:
        # F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (predicted + true); 0 when the class is absent.
        denominator = predicted_counts[c] + true_counts[c]
        f1 += 2 * hits[c] / denominator if denominator else 0.0
    return {"accuracy": sum(hits.values()) / len(true), "macro_f1": f1 / len(classes)}
