"""Few-shot prompts under a token budget, and the generation callables they feed.

`PromptBuilder` formats selected demonstrations and the query with templates and drops
the least useful demonstrations until the prompt fits `max_tokens` (counted with the
model's tfllm tokenizer). `few_shot` runs selection, prompt building and any
`Callable[[list[str]], list[str]]` text generator: `causal_lm_generator` (an in-process
`CausalLM`) or `signature_generator` (an exported SavedModel's `generate`).

Example:
>>> from tfllm.demonstrations import BM25Selector
>>> words = "review : sentiment negative positive a gem of film dull and long".split()
>>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + words)
>>> lm = CausalLM(GPTBackbone.from_preset("gpt_tiny", vocabulary_size=len(words) + 4))
>>> builder = PromptBuilder(tokenizer, max_tokens=64, label_names=["negative", "positive"])
>>> generate = causal_lm_generator(lm, tokenizer, max_new_tokens=2)
>>> selector = BM25Selector(["a gem of a film", "dull and long"], [1, 0])
>>> answers = few_shot(generate, selector, builder, ["a gem"], k=2)  # untrained: any words
>>> len(answers), type(answers[0]).__name__
(1, 'str')
"""

import string
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from tfllm.demonstrations.embeddings import check_texts


def _check_template(template, argument: str, fields: set[str]) -> str:
    if not isinstance(template, str):
        raise TypeError(f"`{argument}` must be a str. Received: {template!r}")
    used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    if used != fields:
        raise ValueError(
            f"`{argument}` must use exactly the fields {sorted(fields)}. "
            f"Received: {template!r} (fields {sorted(used)})"
        )
    return template


class PromptBuilder:
    """Templates + token budget -> few-shot prompt strings.

    Prompt = `instructions` + one `example_template` per kept demonstration (in the given
    order) + `query_template`. When it has more than `max_tokens` tokens, demonstrations
    are dropped, least useful first (ties: the earliest), until it fits.

    Args:
        tokenizer: the generating model's tfllm tokenizer (counts tokens).
        max_tokens: prompt budget in tokens (leave room for the generated ones).
        example_template: fields `{text}` and `{label}`.
        query_template: field `{text}`.
        instructions: text placed before the demonstrations.
        label_names: names shown for int labels (`label_names[label]`); `None`: `str(label)`.

    Example:
    >>> words = "[PAD] [UNK] [CLS] [SEP] review : sentiment rotten fresh a gem dull moving".split()
    >>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(words)
    >>> builder = PromptBuilder(tokenizer, 128, label_names=["rotten", "fresh"])
    >>> prompt = builder.build("a gem", [("dull", 0), ("moving", 1)], usefulness=[0.2, 0.7])
    >>> print(prompt)
    Review: dull
    Sentiment: rotten
    <BLANKLINE>
    Review: moving
    Sentiment: fresh
    <BLANKLINE>
    Review: a gem
    Sentiment:
    >>> builder.count_tokens([prompt])
    [18]
    >>> small = PromptBuilder(tokenizer, 14, label_names=["rotten", "fresh"])
    >>> print(small.build("a gem", [("dull", 0), ("moving", 1)], usefulness=[0.2, 0.7]))
    Review: moving
    Sentiment: fresh
    <BLANKLINE>
    Review: a gem
    Sentiment:
    """

    def __init__(
        self,
        tokenizer,
        max_tokens: int,
        example_template: str = "Review: {text}\nSentiment: {label}\n\n",
        query_template: str = "Review: {text}\nSentiment:",
        instructions: str = "",
        label_names: Sequence[str] | None = None,
    ):
        if not hasattr(tokenizer, "tokenize"):
            raise TypeError(f"`tokenizer` must be a tfllm tokenizer. Received: {tokenizer!r}")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ValueError(f"`max_tokens` must be an int >= 1. Received: {max_tokens!r}")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.example_template = _check_template(
            example_template, "example_template", {"text", "label"}
        )
        self.query_template = _check_template(query_template, "query_template", {"text"})
        if not isinstance(instructions, str):
            raise TypeError(f"`instructions` must be a str. Received: {instructions!r}")
        self.instructions = instructions
        self.label_names = None if label_names is None else list(label_names)

    def _label(self, label) -> str:
        if self.label_names is None:
            return str(label)
        if not isinstance(label, (int, np.integer)) or not 0 <= label < len(self.label_names):
            raise ValueError(
                f"Labels must be ids in [0, {len(self.label_names)}) with `label_names`. "
                f"Received: {label!r}"
            )
        return self.label_names[label]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text under `tokenizer`."""
        texts = check_texts(texts, "texts")
        if not texts:
            return []
        return self.tokenizer.tokenize(tf.constant(texts)).row_lengths().numpy().tolist()

    def build_batch(self, queries, examples, usefulness=None) -> list[str]:
        """One prompt per query; see `build`. `examples[i]`: `(text, label)` pairs of
        query `i`; `usefulness[i]`: their scores (`None`: earlier = less useful)."""
        queries = check_texts(queries, "queries")
        if len(examples) != len(queries) or (
            usefulness is not None and len(usefulness) != len(queries)
        ):
            raise ValueError(
                f"`examples` and `usefulness` need one entry per query ({len(queries)}). "
                f"Received: {len(examples)} and "
                f"{None if usefulness is None else len(usefulness)}"
            )
        prompts, candidates = [], []  # candidates[i][j]: query i with the j least useful gone
        for i, query in enumerate(queries):
            shots = [
                self.example_template.format(text=text, label=self._label(label))
                for text, label in examples[i]
            ]
            scores = np.zeros(len(shots)) if usefulness is None else np.asarray(usefulness[i])
            if len(scores) != len(shots):
                raise ValueError(
                    f"`usefulness[{i}]` needs one score per example ({len(shots)}). "
                    f"Received: {len(scores)}"
                )
            drop_order = np.argsort(scores, kind="stable")
            tail = self.query_template.format(text=query)
            rows = []
            for j in range(len(shots) + 1):
                gone = set(drop_order[:j].tolist())
                kept = "".join(s for n, s in enumerate(shots) if n not in gone)
                rows.append(self.instructions + kept + tail)
            candidates.append(rows)
        lengths = iter(self.count_tokens([p for rows in candidates for p in rows]))
        for i, rows in enumerate(candidates):
            counts = [next(lengths) for _ in rows]
            fitting = [p for p, n in zip(rows, counts, strict=True) if n <= self.max_tokens]
            if not fitting:
                raise ValueError(
                    f"Query {i} alone needs more than `max_tokens`={self.max_tokens} tokens "
                    f"with the instructions and `query_template`. Received: {queries[i]!r:.100}"
                )
            prompts.append(fitting[0])
        return prompts

    def build(self, query: str, examples, usefulness=None) -> str:
        """The prompt for `query` with `examples` (`(text, label)` pairs in prompt order).

        Raises:
            ValueError: when the query alone (with `instructions`) exceeds `max_tokens`.
        """
        usefulness = None if usefulness is None else [usefulness]
        return self.build_batch([query], [examples], usefulness)[0]


def few_shot(generate_fn: Callable, selector, builder: PromptBuilder, queries, k: int) -> list[str]:
    """Select `k` demonstrations per query, build the prompts, return the generated texts.

    Args:
        generate_fn: `Callable[[list[str]], list[str]]`, e.g. `causal_lm_generator(...)`
            or `signature_generator(loaded.signatures["generate"])`.
        selector: any selector of `tfllm.demonstrations` (its pool needs labels).
        builder: a `PromptBuilder`.
        queries: list of query texts.
    """
    if selector.pool_labels is None:
        raise ValueError("`selector` needs `pool_labels` for few-shot prompts. Received: None")
    indices, scores = selector.select_scored(queries, k)
    pool = list(zip(selector.pool_texts, selector.pool_labels, strict=True))
    prompts = builder.build_batch(queries, [[pool[i] for i in row] for row in indices], scores)
    outputs = generate_fn(prompts)
    if isinstance(outputs, (str, bytes)) or len(outputs) != len(prompts):
        raise ValueError(
            f"`generate_fn` must return one string per prompt ({len(prompts)}). "
            f"Received: {outputs!r:.200}"
        )
    return [o.decode("utf-8") if isinstance(o, bytes) else str(o) for o in outputs]


def causal_lm_generator(model, tokenizer, max_new_tokens: int, **options) -> Callable:
    """`list[str] -> list[str]` with `tfllm.generation.generate` on an in-process `CausalLM`;
    `options` (sampler, seed, stop_token_ids, ...) are passed on."""
    from tfllm.generation import generate

    def run(prompts: list[str]) -> list[str]:
        return list(generate(model, list(prompts), max_new_tokens, tokenizer=tokenizer, **options))

    return run


def signature_generator(signature, input_name: str = "text", output_name: str = "text"):
    """`list[str] -> list[str]` over a SavedModel signature or function of `tf.string (B,)`.

    Args:
        signature: e.g. `tf.saved_model.load(path).signatures["generate"]`, or a function
            taking the strings as keyword `input_name`.
        input_name: keyword of the string input.
        output_name: key of the text output when the function returns a dict.
    """

    def run(prompts: list[str]) -> list[str]:
        outputs = signature(**{input_name: tf.constant(list(prompts), tf.string)})
        if isinstance(outputs, dict):
            if output_name not in outputs:
                raise ValueError(
                    f"`output_name` {output_name!r} is not an output of the signature "
                    f"({sorted(outputs)})."
                )
            outputs = outputs[output_name]
        return [t.decode("utf-8") for t in np.asarray(outputs).reshape(-1).tolist()]

    return run
