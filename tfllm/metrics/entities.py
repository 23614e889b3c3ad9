"""Entity-level precision / recall / F1 for IOB1, IOB2 (BIO) and IOBES tags, as conlleval.

An entity is a `(type, start, end)` span. Spans are read with conlleval's lenient rules
(`end_of_chunk` / `start_of_chunk`): an `I-` after `O` or after another type starts a span,
a change of type ends one. For IOBES the `E-`/`S-` rules are those of the Python port of
conlleval (and seqeval's default mode); the 2004 Perl script has no `S-` rule. IOB1 and IOB2
are read by the same rules, as conlleval does; the scheme only decides which prefixes are
valid. Scores are micro-averaged over entities: `precision = correct / predicted`,
`recall = correct / true`, `f1 = 2pr / (p + r)`, 0 where undefined.

The same rules run on numpy arrays (`entity_f1`) and on `(B, T)` tensors (`EntityF1`): they
only use `==`, `!=`, `&` and `|`, which both support elementwise.
"""

from collections import Counter

import keras
import numpy as np
from keras import ops

from tfllm.metrics._common import SCORES, check_choice, labels_and_predictions, token_weights

SCHEMES = {"IOB1": "BI", "IOB2": "BI", "BIO": "BI", "IOBES": "BIES"}
O, B, I, E, S = range(5)  # prefix codes  # noqa: E741
_PREFIX_CODES = {"B": B, "I": I, "E": E, "S": S}


def parse_tag(tag, scheme: str, argument: str) -> tuple[int, str]:
    """`"B-PER"` -> `(B, "PER")`, `"O"` -> `(O, "")`; anything else is a `ValueError`."""
    if tag == "O":
        return O, ""
    prefix, sep, type_ = tag.partition("-") if isinstance(tag, str) else ("", "", "")
    if not sep or len(prefix) != 1 or prefix not in SCHEMES[scheme] or not type_:
        allowed = ", ".join(f"{p}-" for p in SCHEMES[scheme])
        raise ValueError(
            f"`{argument}` holds {tag!r}, which is not a {scheme} tag: expected 'O' or a "
            f"type after one of {allowed} (e.g. 'B-PER')."
        )
    return _PREFIX_CODES[prefix], type_


def _any_of(x, *codes):
    out = x == codes[0]
    for code in codes[1:]:
        out = out | (x == code)
    return out


def chunk_starts(prev_prefix, prev_type, prefix, type_):
    """Whether a span starts at a token (conlleval `start_of_chunk`), elementwise."""
    return (
        _any_of(prefix, B, S)
        | (_any_of(prev_prefix, O, E, S) & _any_of(prefix, I, E))
        | ((prefix != O) & (prev_type != type_))
    )


def chunk_ends(prefix, type_, next_prefix, next_type):
    """Whether a span ends at a token (conlleval `end_of_chunk` seen from the next token)."""
    return (
        _any_of(prefix, E, S)
        | (_any_of(prefix, B, I) & _any_of(next_prefix, O, B, S))
        | ((prefix != O) & (type_ != next_type))
    )


def get_entities(tags, scheme: str = "IOB2", argument: str = "tags") -> list[tuple[str, int, int]]:
    """The `(type, start, end)` spans (inclusive `end`) of one tag sequence.

    Example:
    >>> get_entities(["B-PER", "I-PER", "O", "I-LOC"])
    [('PER', 0, 1), ('LOC', 3, 3)]
    """
    check_choice("scheme", scheme, SCHEMES)
    if not len(tags):
        return []
    parsed = [parse_tag(tag, scheme, argument) for tag in tags]
    prefix = np.array([p for p, _ in parsed] + [O])  # a trailing O closes the last span
    type_ = np.array([t for _, t in parsed] + [""])
    prev_prefix, prev_type = np.roll(prefix, 1), np.roll(type_, 1)  # position 0 sees the O
    starts = np.flatnonzero(chunk_starts(prev_prefix, prev_type, prefix, type_))
    ends = np.flatnonzero(chunk_ends(prefix[:-1], type_[:-1], prefix[1:], type_[1:]))
    # Every non-O token lies in exactly one span, so the k-th start pairs with the k-th end.
    return [(str(type_[s]), int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def _prf(correct: float, predicted: float, true: float) -> tuple[float, float, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_f1(true_tags, pred_tags, scheme: str = "IOB2") -> dict:
    """Entity-level precision, recall and F1 (0-1) as conlleval computes them.

    Args:
        true_tags: list of sentences, each a list of gold tag strings.
        pred_tags: list of sentences of predicted tags, aligned with `true_tags`.
        scheme: `"IOB1"`, `"IOB2"` (alias `"BIO"`) or `"IOBES"`.

    Returns:
        `{"precision", "recall", "f1", "per_type"}`; `per_type` maps each entity type seen
        in either argument to `{"precision", "recall", "f1", "support"}` (support = number
        of true entities).

    Example:
    >>> scores = entity_f1([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])
    >>> scores["f1"]
    0.0
    """
    check_choice("scheme", scheme, SCHEMES)
    for argument, value in (("true_tags", true_tags), ("pred_tags", pred_tags)):
        if isinstance(value, str) or any(isinstance(sentence, str) for sentence in value):
            raise TypeError(
                f"`{argument}` must be a list of tag sequences (lists of strings); wrap a "
                f"single sentence in a list. Received: {value!r:.80}"
            )
    if len(true_tags) != len(pred_tags):
        raise ValueError(
            "`true_tags` and `pred_tags` must hold the same number of sentences. "
            f"Received: {len(true_tags)} and {len(pred_tags)}"
        )
    true_entities, pred_entities = set(), set()
    for i, (gold, pred) in enumerate(zip(true_tags, pred_tags, strict=True)):
        if len(gold) != len(pred):
            raise ValueError(
                f"Sentence {i} has {len(gold)} tags in `true_tags` but {len(pred)} in `pred_tags`."
            )
        true_entities.update((i, *e) for e in get_entities(gold, scheme, "true_tags"))
        pred_entities.update((i, *e) for e in get_entities(pred, scheme, "pred_tags"))

    correct = true_entities & pred_entities
    precision, recall, f1 = _prf(len(correct), len(pred_entities), len(true_entities))
    by_type = [Counter(e[1] for e in ents) for ents in (correct, pred_entities, true_entities)]
    per_type = {}
    for type_ in sorted(set(by_type[1]) | set(by_type[2])):
        counts = [c[type_] for c in by_type]
        p, r, f = _prf(*counts)
        per_type[type_] = {"precision": p, "recall": r, "f1": f, "support": counts[2]}
    return {"precision": precision, "recall": recall, "f1": f1, "per_type": per_type}


def _shift(x, step: int):
    """`(B, T)` -> `(B, T)` shifted right (`step=1`) or left (`-1`), filled with 0 (= O)."""
    if step == 1:
        return ops.pad(x[:, :-1], [[0, 0], [1, 0]])
    return ops.pad(x[:, 1:], [[0, 0], [0, 1]])


@keras.saving.register_keras_serializable(package="tfllm")
class EntityF1(keras.metrics.Metric):
    """Entity-level F1 (or precision / recall) from tag ids, computed in graph.

    Counts of correct, predicted and true entities accumulate over batches, so the result
    equals `entity_f1` on all sequences seen since the last reset. Positions whose
    `sample_weight` is 0 (padding, ignored word pieces) are removed before spans are read,
    as if the sequence had never held them; other weights count as 1.

    Args:
        label_names: tag string of each class id, e.g. `["O", "B-PER", "I-PER"]`.
        scheme: `"IOB1"`, `"IOB2"` (alias `"BIO"`) or `"IOBES"`.
        score: what `result()` returns: `"f1"`, `"precision"` or `"recall"`.
        name: metric name; defaults to `"entity_<score>"`.

    Call (update_state) arguments:
        y_true: `(B, T)` int tag ids; ids outside `label_names` need a weight of 0.
        y_pred: `(B, T)` int tag ids or `(B, T, num_labels)` scores (argmax is taken).
        sample_weight: optional `(B, T)` or `(B,)`; 0 removes a position.

    Example:
    >>> metric = EntityF1(["O", "B-PER", "I-PER"])
    >>> metric.update_state([[1, 2, 0]], [[1, 2, 0]])
    >>> float(metric.result())
    1.0
    """

    def __init__(self, label_names, scheme="IOB2", score="f1", name=None, **kwargs):
        check_choice("scheme", scheme, SCHEMES)
        check_choice("score", score, SCORES)
        super().__init__(name=name or f"entity_{score}", **kwargs)
        self.label_names = list(label_names)
        self.scheme = scheme
        self.score = score
        parsed = [parse_tag(tag, scheme, "label_names") for tag in self.label_names]
        type_ids = {t: k for k, t in enumerate(sorted({t for _, t in parsed} - {""}), 1)}
        self._prefix_table = np.array([p for p, _ in parsed], "int32")
        self._type_table = np.array([type_ids.get(t, 0) for _, t in parsed], "int32")
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.predicted = self.add_variable(shape=(), initializer="zeros", name="predicted")
        self.true = self.add_variable(shape=(), initializer="zeros", name="true")

    def _spans(self, ids, kept):
        """Tag ids `(B, T)` with removed positions last -> start flags, end position per token."""
        ids = ops.clip(ids, 0, len(self.label_names) - 1)
        prefix = ops.take(self._prefix_table, ids) * kept  # removed positions read as O
        type_ = ops.take(self._type_table, ids) * kept
        starts = chunk_starts(_shift(prefix, 1), _shift(type_, 1), prefix, type_)
        ends = chunk_ends(prefix, type_, _shift(prefix, -1), _shift(type_, -1))
        # End position of the span starting at t: the first end at or after t, i.e. the
        # (number of ends before t)-th entry of the sorted end positions.
        length = ops.shape(ids)[1]
        positions = ops.arange(length, dtype="int32")[None, :]
        sorted_ends = ops.sort(ops.where(ends, positions, length), axis=-1)
        ends_before = ops.cumsum(ops.cast(ends, "int32"), axis=-1) - ops.cast(ends, "int32")
        return starts, ops.take_along_axis(sorted_ends, ends_before, axis=-1), type_

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred = labels_and_predictions(y_true, y_pred)  # (B, T) each
        kept = token_weights(sample_weight, ops.shape(y_true), "float32") != 0
        # Move removed positions to the end, keeping order (the sort keys are distinct).
        length = ops.shape(y_true)[1]
        positions = ops.arange(length, dtype="int32")[None, :]
        order = ops.argsort(ops.where(kept, positions, positions + length), axis=-1)
        kept = ops.take_along_axis(ops.cast(kept, "int32"), order, axis=-1)
        true_starts, true_ends, true_types = self._spans(
            ops.take_along_axis(y_true, order, axis=-1), kept
        )
        pred_starts, pred_ends, pred_types = self._spans(
            ops.take_along_axis(y_pred, order, axis=-1), kept
        )
        correct = true_starts & pred_starts & (true_types == pred_types) & (true_ends == pred_ends)
        self.correct.assign_add(ops.sum(ops.cast(correct, self.dtype)))
        self.predicted.assign_add(ops.sum(ops.cast(pred_starts, self.dtype)))
        self.true.assign_add(ops.sum(ops.cast(true_starts, self.dtype)))

    def scores(self) -> dict:
        """`{"precision", "recall", "f1"}` from the counts so far."""
        precision = ops.divide_no_nan(self.correct, self.predicted)
        recall = ops.divide_no_nan(self.correct, self.true)
        f1 = ops.divide_no_nan(2.0 * precision * recall, precision + recall)
        return {"precision": precision, "recall": recall, "f1": f1}

    def result(self):
        return self.scores()[self.score]

    def get_config(self):
        config = super().get_config()
        config.update(label_names=self.label_names, scheme=self.scheme, score=self.score)
        return config
