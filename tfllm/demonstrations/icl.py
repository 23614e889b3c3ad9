"""In-context learning measured by a model: accuracy per demonstration selector and shot count.

For a classification set and a causal LM, every query gets a k-shot prompt of the
demonstrations a selector picks, and the model's answer is the label word it finds most
likely (`few_shot_label_scores`). The table compares selectors at each k against
zero-shot prompts (k = 0) and random demonstrations.

Example:
>>> words = "review : sentiment negative positive a gem of film dull and long".split()
>>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + words)
>>> lm = CausalLM(GPTBackbone.from_preset("gpt_tiny", vocabulary_size=len(words) + 4))
>>> pool = [("a gem of a film", 1), ("dull and long", 0), ("a gem", 1), ("long", 0)]
>>> queries = [("a film", 1), ("dull", 0)]
>>> report = evaluate_icl(lm, tokenizer, pool, queries, ["negative", "positive"],
...                       shots=(0, 2), selectors=("random", "bm25"))
>>> sorted(report["accuracy"]), sorted(report["accuracy"]["bm25"])
(['bm25', 'random'], ['0', '2'])
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfllm.demonstrations.prompts import PromptBuilder
from tfllm.demonstrations.scoring import few_shot_label_scores
from tfllm.demonstrations.selectors import (
    BalancedSelector,
    BM25Selector,
    KNNSelector,
    MMRSelector,
    RandomSelector,
    VoteKSelector,
)
from tfllm.metrics.matching import classification_scores

SELECTORS = ("random", "balanced", "bm25", "knn", "mmr", "vote_k")
EMBEDDING_SELECTORS = {"knn", "mmr", "vote_k"}


def _selector(name: str, texts, labels, encoder, seed: int):
    if name == "random":
        return RandomSelector(texts, labels, seed=seed)
    if name == "balanced":
        return BalancedSelector(texts, labels, seed=seed)
    if name == "bm25":
        return BM25Selector(texts, labels)
    if name == "knn":
        return KNNSelector(encoder, texts, labels)
    if name == "mmr":
        return MMRSelector(encoder, texts, labels, lambda_=0.5)
    return VoteKSelector(encoder, texts, labels, budget=min(200, len(texts)))


def _check_examples(examples, argument: str, num_labels: int) -> tuple[list[str], list[int]]:
    if not isinstance(examples, Sequence) or not examples:
        raise ValueError(f"`{argument}` must be a non-empty list of (text, label id) pairs.")
    texts, labels = [], []
    for i, example in enumerate(examples):
        if not (isinstance(example, tuple | list) and len(example) == 2):
            raise ValueError(
                f"`{argument}[{i}]` must be a (text, label id) pair. Received: {example!r}"
            )
        text, label = example
        if not isinstance(text, str):
            raise TypeError(f"`{argument}[{i}]`'s text must be a str. Received: {text!r}")
        if not isinstance(label, int | np.integer) or not 0 <= label < num_labels:
            raise ValueError(
                f"`{argument}[{i}]`'s label must be an id in [0, {num_labels}) (an index into "
                f"`label_words`). Received: {label!r}"
            )
        texts.append(text)
        labels.append(int(label))
    return texts, labels


def evaluate_icl(
    model,
    tokenizer,
    pool,
    queries,
    label_words: Sequence[str],
    shots: Sequence[int] = (0, 1, 4, 8),
    selectors: Sequence[str] = ("random", "bm25", "knn"),
    encoder=None,
    max_tokens: int | None = None,
    seed: int = 0,
    **options,
) -> dict:
    """Accuracy and macro F1 of a causal LM's k-shot answers, per selector and k.

    Args:
        model: a causal LM, e.g. `tfllm.models.CausalLM` (loaded from a GPT-2 folder too).
        tokenizer: its tfllm tokenizer.
        pool: `(text, label id)` demonstrations to choose from.
        queries: `(text, label id)` test examples.
        label_words: the word shown and scored for each label id.
        shots: demonstration counts k; k = 0 (zero-shot) is the same for every selector.
        selectors: names of `SELECTORS`; `knn`, `mmr` and `vote_k` need an `encoder`
            (`list[str] -> (N, D)` embeddings, e.g. `minilm_encoder()`).
        max_tokens: prompt budget; default: the backbone's `max_sequence_length` minus
            the BOS token, a separating token and the longest label word.
        seed: the random selectors' seed.
        **options: `PromptBuilder` templates (`example_template`, `query_template`,
            `instructions`) and `few_shot_label_scores` options (`normalize_length`,
            `label_prefix`, `batch_size`).

    Returns:
        `{"num_queries", "pool_size", "label_words", "shots", "query_majority",
        "accuracy": {selector: {str(k): float}}, "macro_f1": {same}}`.
    """
    label_words = list(label_words)
    pool_texts, pool_labels = _check_examples(pool, "pool", len(label_words))
    query_texts, query_labels = _check_examples(queries, "queries", len(label_words))
    unknown = [name for name in selectors if name not in SELECTORS]
    if unknown or not selectors:
        raise ValueError(f"`selectors` must be names of {list(SELECTORS)}. Received: {selectors}")
    if encoder is None and EMBEDDING_SELECTORS & set(selectors):
        needs = sorted(EMBEDDING_SELECTORS & set(selectors))
        raise ValueError(f"Selectors {needs} need an `encoder` (e.g. `minilm_encoder()`).")
    if not shots or any(not isinstance(k, int) or k < 0 for k in shots):
        raise ValueError(f"`shots` must be non-negative ints. Received: {shots!r}")
    template_keys = {"example_template", "query_template", "instructions"}
    templates = {k: v for k, v in options.items() if k in template_keys}
    scoring = {k: v for k, v in options.items() if k not in template_keys}
    if max_tokens is None:
        label_lengths = [len(ids) for ids in tokenizer.tokenize(tf.constant(label_words)).to_list()]
        max_tokens = model.backbone.max_sequence_length - 2 - max(label_lengths)
    builder = PromptBuilder(tokenizer, max_tokens, label_names=label_words, **templates)
    references = [label_words[y] for y in query_labels]

    def scores(selector, k) -> dict:
        result = few_shot_label_scores(
            model, tokenizer, selector, builder, query_texts, k, **scoring
        )
        answers = [label_words[i] for i in result["predictions"]]
        return classification_scores(answers, references, labels=label_words)

    zero_shot = scores(None, 0) if 0 in shots else None
    accuracy, macro_f1 = {}, {}
    for name in selectors:
        selector = _selector(name, pool_texts, pool_labels, encoder, seed)
        accuracy[name], macro_f1[name] = {}, {}
        for k in shots:
            result = zero_shot if k == 0 else scores(selector, k)
            accuracy[name][str(k)] = result["accuracy"]
            macro_f1[name][str(k)] = result["macro_f1"]
    majority = np.bincount(query_labels, minlength=len(label_words)).max() / len(query_labels)
    return {
        "num_queries": len(query_texts),
        "pool_size": len(pool_texts),
        "label_words": label_words,
        "shots": list(shots),
        "query_majority": float(majority),
        "accuracy": accuracy,
        "macro_f1": macro_f1,
    }


def icl_markdown(report: dict, model_name: str, command: str) -> str:
    """A BENCHMARKS.md section body: accuracy (macro F1) per selector and k."""
    shots = [str(k) for k in report["shots"]]
    lines = [
        f"`{command}`: {model_name}, {report['num_queries']} queries, pool "
        f"{report['pool_size']}, label words {report['label_words']}, answer = the most "
        f"likely label word. Majority label share of the queries: "
        f"{report['query_majority']:.3f}. Cells: accuracy (macro F1).",
        "",
        "| selector | " + " | ".join(f"k={k}" for k in shots) + " |",
        "|---|" + "---|" * len(shots),
    ]
    for name, row in report["accuracy"].items():
        cells = [f"{row[k]:.3f} ({report['macro_f1'][name][k]:.3f})" for k in shots]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
