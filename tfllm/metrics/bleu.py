"""Corpus BLEU with sacrebleu's defaults, in plain Python (no sacrebleu import).

Defaults reproduced: `13a` tokenization (mteval-v13a), n-grams up to order 4, clipped counts
against the per-n-gram maximum over references, `exp` smoothing (each order with no match
gets `1 / (2^k * total)`, `k` counting such orders), brevity penalty against the closest
reference length (ties go to the shorter one), no lowercasing.
"""

import math
import re
from collections import Counter
from collections.abc import Sequence

from tfllm.metrics._segments import check_segments, reference_streams

MAX_NGRAM_ORDER = 4

# mteval-v13a's language-dependent rules, applied in order to " line ".
_13A_RULES = (
    # Split off most ASCII symbols: {|}~ [\]^_` space-to-& (-+ :-@ and /.
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    # Split off period and comma unless preceded by a digit ...
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    # ... or followed by one: "3.5" and "1,000" stay whole.
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    # Split off a dash that follows a digit.
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)
_HTML_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))


def tokenize_13a(line: str) -> list[str]:
    """Splits a detokenized segment into tokens the way sacrebleu's `13a` tokenizer does.

    Trailing whitespace is stripped first, as sacrebleu does before tokenizing, so a
    trailing `"-\\n"` keeps its dash.

    Example:
    >>> tokenize_13a("It costs $3.50, (roughly) &amp; no more.")
    ['It', 'costs', '$', '3.50', ',', '(', 'roughly', ')', '&', 'no', 'more', '.']
    """
    line = line.rstrip()
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        for entity, char in _HTML_ENTITIES:
            line = line.replace(entity, char)
    line = f" {line} "
    for pattern, replacement in _13A_RULES:
        line = pattern.sub(replacement, line)
    return line.split()


def _ngrams(tokens: list[str]) -> Counter:
    return Counter(
        tuple(tokens[i : i + n])
        for n in range(1, MAX_NGRAM_ORDER + 1)
        for i in range(len(tokens) - n + 1)
    )


def corpus_bleu(hypotheses: Sequence[str], references) -> float:
    """Corpus-level BLEU (0-100), equal to `sacrebleu.corpus_bleu(...).score` with defaults.

    Args:
        hypotheses: one detokenized system output per segment.
        references: either one reference stream, a list of strings aligned with
            `hypotheses` (sacrebleu's `[references]`), or several streams, a list of such
            lists (sacrebleu's `references`): `references[k][i]` is the k-th reference of
            segment `i`.

    Returns:
        The BLEU score as a Python float in `[0, 100]`.

    Example:
    >>> round(corpus_bleu(["The cat sat on the mat."], ["The cat sat on the mat."]), 6)
    100.0
    """
    check_segments(hypotheses, "hypotheses")
    streams = reference_streams(references, len(hypotheses))

    correct = [0] * MAX_NGRAM_ORDER
    total = [0] * MAX_NGRAM_ORDER
    sys_len = ref_len = 0
    for i, hypothesis in enumerate(hypotheses):
        hyp_tokens = tokenize_13a(hypothesis)
        max_ref_counts: Counter = Counter()
        ref_lens = []
        for stream in streams:
            ref_tokens = tokenize_13a(stream[i])
            ref_lens.append(len(ref_tokens))
            max_ref_counts |= _ngrams(ref_tokens)  # `|` keeps the max count per n-gram
        sys_len += len(hyp_tokens)
        # Closest reference length; on a tie the shorter reference wins.
        ref_len += min(ref_lens, key=lambda r: (abs(len(hyp_tokens) - r), r))
        for ngram, count in _ngrams(hyp_tokens).items():
            total[len(ngram) - 1] += count
            correct[len(ngram) - 1] += min(count, max_ref_counts[ngram])
    return _bleu_from_counts(correct, total, sys_len, ref_len)


def _bleu_from_counts(correct: list[int], total: list[int], sys_len: int, ref_len: int) -> float:
    if not any(correct):
        return 0.0
    log_precisions = []
    smooth = 1.0
    for n in range(MAX_NGRAM_ORDER):
        if total[n] == 0:
            # No hypothesis n-gram of this order at all: sacrebleu floors log(0), i.e. 0.
            return 0.0
        if correct[n] == 0:
            smooth *= 2.0
            log_precisions.append(math.log(100.0 / (smooth * total[n])))
        else:
            log_precisions.append(math.log(100.0 * correct[n] / total[n]))
    brevity_penalty = 1.0
    if sys_len < ref_len:
        brevity_penalty = math.exp(1.0 - ref_len / sys_len)  # sys_len > 0: some n-gram matched
    return brevity_penalty * math.exp(sum(log_precisions) / MAX_NGRAM_ORDER)
