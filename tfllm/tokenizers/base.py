"""The interface every tfllm tokenizer shares: a Keras layer of TensorFlow ops."""

from pathlib import Path

import keras
import tensorflow as tf


def read_lines(path, argument: str) -> list[str]:
    """The lines of a UTF-8 vocabulary file, with a clear error when it cannot be used."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"`{argument}` file {str(path)!r} does not exist.")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"`{argument}` file {str(path)!r} is not UTF-8: {error}") from None
    # Lines end at "\n" only: `str.splitlines()` also splits at "\u2028", "\x1c", ... which
    # are tokens of real vocabularies (Google's Chinese BERT has "\u2028").
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines[-1] == "":
        lines.pop()
    if not lines:
        raise ValueError(f"`{argument}` file {str(path)!r} is empty.")
    return lines


def check_vocabulary(tokens: list[str], argument: str = "vocabulary") -> None:
    if not tokens:
        raise ValueError(f"`{argument}` must not be empty.")
    seen = set()
    for token in tokens:
        if not isinstance(token, str):
            raise TypeError(f"`{argument}` entries must be str. Received: {token!r}")
        if token in seen:
            raise ValueError(f"`{argument}` has the token {token!r} twice.")
        seen.add(token)


def replace_invalid_utf8(strings):
    """Invalid UTF-8 bytes replaced by U+FFFD."""
    return tf.strings.unicode_transcode(
        strings, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
    )


def transform_unless_plain(strings, transform, plain=r"[\x00-\x7f]*", plain_transform=None):
    """`transform` on the rows of `strings (B,)` not fully matching `plain`, only on them.

    The other rows get `plain_transform` (default: kept). Both are row-wise string ops.
    Most text is ASCII: a costly Unicode normalization then runs on few rows (BERT's
    normalization on Shakespeare: 2.2× less time per batch).
    """
    rows = tf.where(~tf.strings.regex_full_match(strings, plain))  # (R, 1)
    kept = strings if plain_transform is None else plain_transform(strings)
    return tf.tensor_scatter_nd_update(kept, rows, transform(tf.gather_nd(strings, rows)))


class Tokenizer(keras.layers.Layer):
    """Strings to int32 ids and back, in the TensorFlow graph (tf.data, SavedModels).

    Subclasses set `self.vocabulary` (list of tokens, index = id) and implement
    `_tokenize(strings (B,)) -> RaggedTensor (B, (n))` and `_detokenize(ids ragged) -> (B,)`.
    Invalid UTF-8 in the input is replaced by U+FFFD before tokenizing.

    Example:
    >>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(["[UNK]", "a", "one", "two", "more"])
    >>> tokenizer.tokenize("a sentence")  # 1-D int32 tensor
    <tf.Tensor: shape=(2,), dtype=int32, numpy=array([1, 0], dtype=int32)>
    >>> tokenizer.tokenize(["one", "two more"])  # RaggedTensor (2, None)
    <tf.RaggedTensor [[2], [3, 4]]>
    >>> tokenizer.detokenize(tokenizer.tokenize(["one", "two more"]))
    <tf.Tensor: shape=(2,), dtype=string, numpy=array([b'one', b'two more'], dtype=object)>
    """

    def __init__(self, **kwargs):
        # `get_config` stores `trainable`; it is always False, so a stored value is ignored.
        kwargs.pop("trainable", None)
        super().__init__(trainable=False, **kwargs)
        # Strings are not float tensors: keep Keras from converting or casting them.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self.vocabulary: list[str] = []
        self._token_ids: dict[str, int] = {}

    def _set_vocabulary(self, vocabulary: list[str]) -> None:
        check_vocabulary(vocabulary)
        self.vocabulary = list(vocabulary)
        self._token_ids = {token: i for i, token in enumerate(self.vocabulary)}

    def call(self, inputs):
        return self.tokenize(inputs)

    # No tensor-dependent Python control flow here or below: skipping AutoGraph saves
    # seconds per trace (tf.data.map, tf.function) that it spends rewriting tf-text code.
    @tf.autograph.experimental.do_not_convert
    def tokenize(self, inputs) -> tf.Tensor | tf.RaggedTensor:
        """`()` string -> `(n,)` ids; `(B,)` strings -> ragged `(B, (n))` int32 ids."""
        strings = tf.convert_to_tensor(inputs, dtype=tf.string)
        if strings.shape.rank not in (0, 1):
            raise ValueError(
                f"`inputs` must be a string or a 1-D batch of strings. "
                f"Received: shape {strings.shape}"
            )
        batch = transform_unless_plain(tf.reshape(strings, [-1]), replace_invalid_utf8)
        ids = tf.cast(self._tokenize(batch), tf.int32)
        return ids[0] if strings.shape.rank == 0 else ids

    @tf.autograph.experimental.do_not_convert
    def detokenize(self, ids) -> tf.Tensor:
        """`(n,)` ids -> `()` string; `(B, n)` dense or ragged ids -> `(B,)` strings.

        Ids outside `[0, vocabulary_size())` raise `tf.errors.InvalidArgumentError`
        naming them (tf-text's WordPiece would crash the process on them).
        """
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.convert_to_tensor(ids)
        if ids.shape.rank == 1:
            return self._detokenize(tf.RaggedTensor.from_tensor(self._checked(ids)[None]))[0]
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(ids)
        return self._detokenize(ids.with_flat_values(self._checked(ids.flat_values)))

    def _checked(self, ids: tf.Tensor) -> tf.Tensor:
        """`ids`, once an in-graph check says all of them are in the vocabulary."""
        size = len(self.vocabulary)
        outside = tf.boolean_mask(ids, (ids < 0) | (ids >= size))
        message = tf.strings.format(
            "`ids` must be in [0, {}) (the vocabulary). Received: {}", (size, outside), summarize=10
        )
        check = tf.debugging.Assert(tf.size(outside) == 0, [message])
        with tf.control_dependencies([check]):
            return tf.identity(ids)

    def _tokenize(self, strings):
        raise NotImplementedError

    def _detokenize(self, ids):
        raise NotImplementedError

    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

    def get_vocabulary(self) -> list[str]:
        return list(self.vocabulary)

    def id_to_token(self, id: int) -> str:
        if not 0 <= id < len(self.vocabulary):
            raise ValueError(f"`id` must be in [0, {len(self.vocabulary)}). Received: {id!r}")
        return self.vocabulary[id]

    def token_to_id(self, token: str) -> int:
        if token not in self._token_ids:
            raise ValueError(f"`token` {token!r} is not in the vocabulary.")
        return self._token_ids[token]

    def _optional_id(self, token: str | None) -> int | None:
        return self._token_ids.get(token) if token is not None else None

    def compute_output_spec(self, inputs):
        return keras.KerasTensor((None, None), dtype="int32", ragged=True)
