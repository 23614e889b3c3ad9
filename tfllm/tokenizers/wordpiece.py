"""BERT WordPiece on tensorflow-text's FastBertTokenizer (normalization + split + pieces)."""

import json
from pathlib import Path

import keras
import tensorflow as tf
import tensorflow_text as tf_text

from tfllm.tokenizers.base import Tokenizer, read_lines, transform_unless_plain

# Removed before tokenizing, as BERT's `clean_text`: NUL, U+FFFD and the Cc (but \t \n \r,
# which are whitespace), Cf and Co categories.
CONTROL_CHARACTERS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\p{Cf}\p{Co}\x{FFFD}]"
# Rows of printable ASCII (and \t \n \r) need only lower-casing.
PRINTABLE_ASCII = r"[\t\n\r\x20-\x7e]*"


@keras.saving.register_keras_serializable(package="tfllm")
class WordPieceTokenizer(Tokenizer):
    """BERT-compatible WordPiece, in the graph.

    Basic tokenization as BERT's: whitespace and punctuation split, each CJK character a
    word, control characters dropped; then greedy longest-match pieces (`##` marks pieces
    that continue a word). Ids equal Hugging Face's `BertWordPieceTokenizer` on the same
    vocabulary.

    Args:
        vocabulary: list of tokens (index = id) or path of a `vocab.txt`.
        lowercase: lowercase the input.
        strip_accents: remove accents (NFD, drop combining marks); `None` follows
            `lowercase`, as in BERT.
        suffix_indicator: prefix of word-continuing pieces.
        unknown_token: token for words that cannot be pieced; must be in the vocabulary.
        max_bytes_per_word: longer words become `unknown_token`.

    Special token ids (`None` when absent): `cls_token_id`, `sep_token_id`,
    `pad_token_id`, `mask_token_id`, `unk_token_id`.

    Example:
    >>> tokenizer = WordPieceTokenizer(["[UNK]", "hello", "world", "##s"])
    >>> tokenizer.tokenize("Hello worlds")
    <tf.Tensor: shape=(3,), dtype=int32, numpy=array([1, 2, 3], dtype=int32)>
    """

    def __init__(
        self,
        vocabulary,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        suffix_indicator: str = "##",
        unknown_token: str = "[UNK]",
        max_bytes_per_word: int = 100,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(vocabulary, (str, Path)):
            vocabulary = read_lines(vocabulary, "vocabulary")
        self._set_vocabulary(vocabulary)
        if unknown_token not in self._token_ids:
            raise ValueError(
                f"`unknown_token` {unknown_token!r} must be in the vocabulary "
                f"({len(self.vocabulary)} tokens)."
            )
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.suffix_indicator = suffix_indicator
        self.unknown_token = unknown_token
        self.max_bytes_per_word = max_bytes_per_word
        self.unk_token_id = self._token_ids[unknown_token]
        self.cls_token_id = self._optional_id("[CLS]")
        self.sep_token_id = self._optional_id("[SEP]")
        self.pad_token_id = self._optional_id("[PAD]")
        self.mask_token_id = self._optional_id("[MASK]")
        self._strip = lowercase if strip_accents is None else strip_accents
        # BERT's normalization is done with string ops in `_tokenize`: FastBertTokenizer's
        # `lower_case_nfd_strip_accents` is NFKC case folding ("ß" -> "ss", "…" -> "...",
        # "ﬁ" -> "fi", full-width -> ASCII), which BERT and Hugging Face do not do.
        self._tokenizer = tf_text.FastBertTokenizer(
            vocab=self.vocabulary,
            suffix_indicator=suffix_indicator,
            max_bytes_per_word=max_bytes_per_word,
            token_out_type=tf.int32,
            unknown_token=unknown_token,
            support_detokenization=True,
            lower_case_nfd_strip_accents=False,
        )

    def _tokenize(self, strings):
        lower = tf.strings.lower if self.lowercase else None
        strings = transform_unless_plain(strings, self._normalize, PRINTABLE_ASCII, lower)
        return self._tokenizer.tokenize(strings)

    def _normalize(self, strings):
        """BERT's normalization of `(B,)` strings (before splitting into words)."""
        # BERT's clean_text: control characters are removed (words are not split there).
        # It also keeps `tf.strings.lower` from stopping at a NUL byte.
        strings = tf.strings.regex_replace(strings, CONTROL_CHARACTERS, "")
        if self._strip:
            strings = tf_text.normalize_utf8(strings, "NFD")
            strings = tf.strings.regex_replace(strings, r"\p{Mn}", "")
        if self.lowercase:
            # Character by character as Hugging Face: no final sigma ("ΣΑΣ" -> "σασ").
            strings = tf.strings.regex_replace(strings, "Σ", "σ")
            strings = tf.strings.lower(strings, encoding="utf-8")
        return strings

    def _detokenize(self, ids):
        """Pieces joined into words, words joined by single spaces (BERT has no spacing)."""
        return self._tokenizer.detokenize(ids)

    def word_start_mask(self) -> list[bool]:
        """For each id: does the token start a word (not a `##` continuation)?"""
        return [not t.startswith(self.suffix_indicator) for t in self.vocabulary]

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary=self.vocabulary,
            lowercase=self.lowercase,
            strip_accents=self.strip_accents,
            suffix_indicator=self.suffix_indicator,
            unknown_token=self.unknown_token,
            max_bytes_per_word=self.max_bytes_per_word,
        )
        return config

    @classmethod
    def from_huggingface(cls, path, **kwargs) -> "WordPieceTokenizer":
        """Loads `vocab.txt` (and casing from `tokenizer_config.json`) of a HF folder.

        `kwargs` override the settings read from `tokenizer_config.json`.
        """
        folder = Path(path)
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        unknown = config.get("unk_token", "[UNK]")
        settings = dict(
            lowercase=config.get("do_lower_case", True),
            strip_accents=config.get("strip_accents"),
            # Older files store special tokens as `{"content": "[UNK]", ...}`.
            unknown_token=unknown["content"] if isinstance(unknown, dict) else unknown,
        )
        return cls(folder / "vocab.txt", **{**settings, **kwargs})
