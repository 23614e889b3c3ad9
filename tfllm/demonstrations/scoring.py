"""In-context classification scored by a causal LM: the likelihood of each label word.

As OpenICL's perplexity inferencer (and lm-evaluation-harness's multiple choice): every
candidate label word is appended to the prompt, the model scores the label's tokens given
everything before them, and the candidate with the highest log-likelihood is the answer.
Nothing is generated, so the answer is always one of the labels.

Example:
>>> from tfllm.demonstrations import BM25Selector
>>> words = "review : sentiment negative positive a gem of film dull and long".split()
>>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + words)
>>> lm = CausalLM(GPTBackbone.from_preset("gpt_tiny", vocabulary_size=len(words) + 4))
>>> builder = PromptBuilder(tokenizer, 64, label_names=["negative", "positive"])
>>> selector = BM25Selector(["a gem of a film", "dull and long"], [1, 0])
>>> scores = few_shot_label_scores(lm, tokenizer, selector, builder, ["a gem"], k=2)
>>> scores["predictions"].shape, scores["probabilities"].shape  # a label id per query
((1,), (1, 2))
>>> float(scores["probabilities"].sum())
1.0
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfllm.demonstrations.embeddings import check_texts
from tfllm.demonstrations.prompts import PromptBuilder


def _token_lists(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer.tokenize(tf.constant(texts)).to_list()


def _check_label_words(label_words) -> list[str]:
    words = check_texts(label_words, "label_words")
    if not words:
        raise ValueError("`label_words` must hold at least one label word. Received: []")
    repeated = sorted({w for w in words if words.count(w) > 1})
    if repeated:
        raise ValueError(f"`label_words` must be distinct. Received {repeated} more than once.")
    return words


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def score_label_words(
    model,
    tokenizer,
    prompts: Sequence[str],
    label_words: Sequence[str],
    normalize_length: bool = False,
    label_prefix: str = " ",
    bos_token_id="auto",
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Log-likelihood of each label word after each prompt, as label probabilities.

    Each prompt is scored once per label word: the sequence `[BOS] prompt label` (prompt
    and `label_prefix + word` tokenized separately) goes through the model, and the label's
    score is the sum of the log-probabilities of its tokens, each given all tokens before
    it. Rows are right-padded in batches; padding never reaches a scored position.

    Args:
        model: a causal LM: `model({"token_ids", "padding_mask"})` (plus `segment_ids` for
            a `packed_sequences` backbone) returns logits `(B, T, V)` where position `t`
            predicts token `t + 1`, e.g. a `tfllm.models.CausalLM`.
        tokenizer: the model's tfllm tokenizer.
        prompts: prompt texts, e.g. from `PromptBuilder.build_batch`.
        label_words: the candidate answers, e.g. `["negative", "positive"]`.
        normalize_length: rank by the mean log-probability per label token instead of the
            sum (fairer between label words of different token lengths).
        label_prefix: put before each label word; `" "` follows a prompt ending in
            `"Sentiment:"` the way running text does (and gives byte-level BPE its
            `Ġ`-prefixed word tokens).
        bos_token_id: token put before every prompt; `"auto"`: the model preprocessor's
            `bos_token_id` if it has one, else none; an int; or None.
        batch_size: sequences per forward pass (logits take `batch_size * T * V` floats).

    Returns:
        A dict of numpy arrays: `log_likelihoods` `(Q, C)` float64, the summed label-token
        log-probabilities; `probabilities` `(Q, C)`, the softmax over the `C` label words
        of those sums (of the per-token means with `normalize_length`); `predictions`
        `(Q,)` int, the index of the most probable label word.

    Raises:
        ValueError: a label word that tokenizes to no token, repeated label words, a
            prompt without tokens and no BOS, or a sequence longer than the model's
            `max_sequence_length`.

    Example:
    >>> words = "[PAD] [UNK] [CLS] [SEP] good film is neg pos".split()
    >>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(words)
    >>> lm = CausalLM(GPTBackbone.from_preset("gpt_tiny", vocabulary_size=9))
    >>> scores = score_label_words(lm, tokenizer, ["good film is"], ["neg", "pos"])
    >>> scores["probabilities"].shape, scores["predictions"].shape
    ((1, 2), (1,))
    """
    prompts = check_texts(prompts, "prompts")
    words = _check_label_words(label_words)
    if not isinstance(label_prefix, str):
        raise TypeError(f"`label_prefix` must be a str. Received: {label_prefix!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1. Received: {batch_size!r}")
    if bos_token_id == "auto":
        bos_token_id = getattr(getattr(model, "preprocessor", None), "bos_token_id", None)
    if bos_token_id is not None and (
        isinstance(bos_token_id, bool) or not isinstance(bos_token_id, (int, np.integer))
    ):
        raise TypeError(
            f'`bos_token_id` must be an int, None or "auto". Received: {bos_token_id!r}'
        )

    label_ids = _token_lists(tokenizer, [label_prefix + w for w in words])
    for j, ids in enumerate(label_ids):
        if not ids:
            raise ValueError(
                f"Label word {words[j]!r} (`label_words[{j}]`) tokenizes to no token "
                f"(with `label_prefix`={label_prefix!r}): it cannot be scored."
            )
    bos = [] if bos_token_id is None else [int(bos_token_id)]
    contexts = [bos + ids for ids in _token_lists(tokenizer, prompts)]
    backbone = getattr(model, "backbone", None)
    limit = getattr(backbone, "max_sequence_length", None)
    for i, context in enumerate(contexts):
        if not context:
            raise ValueError(
                f"Prompt {i} has no token and no BOS token: the first label token "
                f"has nothing to be predicted from. Received: {prompts[i]!r}"
            )
        longest = len(context) + max(map(len, label_ids))
        if limit is not None and longest > limit:
            raise ValueError(
                f"Prompt {i} with its longest label word needs {longest} tokens, more than "
                f"the model's `max_sequence_length`={limit}. Shorten the prompt (e.g. "
                f"`PromptBuilder(max_tokens=...)`)."
            )

    # One row per (prompt, label word); the label's tokens sit at [start, start + n).
    rows = [(context, ids) for context in contexts for ids in label_ids]
    sums = np.zeros(len(rows))
    for begin in range(0, len(rows), batch_size):
        sums[begin : begin + batch_size] = _score_rows(model, rows[begin : begin + batch_size])
    log_likelihoods = sums.reshape(len(prompts), len(words))
    ranked = log_likelihoods
    if normalize_length:
        ranked = log_likelihoods / np.array([len(ids) for ids in label_ids])
    probabilities = np.exp(_log_softmax(ranked))
    return {
        "log_likelihoods": log_likelihoods,
        "probabilities": probabilities,
        "predictions": np.argmax(probabilities, axis=1),
    }


def _score_rows(model, rows: list[tuple[list[int], list[int]]]) -> np.ndarray:
    """Summed label-token log-probabilities of `(context ids, label ids)` rows, `(B,)`."""
    length = max(len(c) + len(lab) for c, lab in rows)
    width = max(len(lab) for _, lab in rows)
    token_ids = np.zeros((len(rows), length), np.int32)
    padding_mask = np.zeros((len(rows), length), np.int32)
    positions = np.zeros((len(rows), width), np.int32)  # logits predicting each label token
    targets = np.zeros((len(rows), width), np.int32)
    scored = np.zeros((len(rows), width), bool)
    for b, (context, label) in enumerate(rows):
        n = len(context) + len(label)
        token_ids[b, :n] = context + label
        padding_mask[b, :n] = 1
        positions[b, : len(label)] = np.arange(len(context) - 1, n - 1)
        targets[b, : len(label)] = label
        scored[b, : len(label)] = True
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    if getattr(getattr(model, "backbone", None), "packed_sequences", False):
        inputs["segment_ids"] = padding_mask  # one document per row
    logits = model(inputs)  # (B, T, V)
    logits = tf.gather(logits, positions, batch_dims=1).numpy().astype(np.float64)  # (B, W, V)
    log_probs = np.take_along_axis(_log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    return np.where(scored, log_probs, 0.0).sum(axis=1)


def few_shot_label_scores(
    model, tokenizer, selector, builder: PromptBuilder, queries, k: int, **options
) -> dict[str, np.ndarray]:
    """`score_label_words` on k-shot prompts: select, build, score `builder.label_names`.

    Args:
        model, tokenizer: as in `score_label_words`.
        selector: any selector of `tfllm.demonstrations` with pool labels (ids into
            `builder.label_names`).
        builder: a `PromptBuilder` with `label_names` (the candidate label words). Keep its
            `max_tokens` below the model's length minus BOS and the longest label word.
        queries: query texts.
        k: demonstrations per prompt; 0 gives zero-shot prompts.
        **options: `normalize_length`, `label_prefix`, `bos_token_id`, `batch_size`.

    Returns:
        The dict of `score_label_words`; `predictions` are label ids.
    """
    if builder.label_names is None:
        raise ValueError("`builder` needs `label_names`: they are the label words scored.")
    queries = check_texts(queries, "queries")
    if k == 0:
        prompts = builder.build_batch(queries, [[] for _ in queries])
    else:
        if selector.pool_labels is None:
            raise ValueError("`selector` needs `pool_labels` for few-shot prompts.")
        indices, usefulness = selector.select_scored(queries, k)
        pool = list(zip(selector.pool_texts, selector.pool_labels, strict=True))
        examples = [[pool[i] for i in row] for row in indices]
        prompts = builder.build_batch(queries, examples, usefulness)
    return score_label_words(model, tokenizer, prompts, builder.label_names, **options)
