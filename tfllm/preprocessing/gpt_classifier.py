"""Decoder classification inputs: one text per row, right-padded, labels passed through."""

import keras
import tensorflow as tf

from tfllm.preprocessing.base import (
    Preprocessor,
    pad,
    require_token_id,
    special_token_id,
    to_batch,
    unbatch_like,
)


@keras.saving.register_keras_serializable(package="tfllm")
class GPTClassifierPreprocessor(Preprocessor):
    """Texts -> `[BOS] ids [EOS]`, right-padded, for `GPTClassifier`.

    A text longer than `sequence_length` loses its end (BOS and EOS stay), so the last
    real token of every row, the one `GPTClassifier` reads with `pooling="last"`, is EOS
    (with `add_eos`). BOS / EOS are the tokenizer's `bos_token_id` / `eos_token_id`, or
    `[CLS]` / `[SEP]` for a WordPiece vocabulary (as `CausalLMPreprocessor`); padding uses
    `pad_token_id`, else EOS.

    Args:
        tokenizer: a tfllm tokenizer.
        sequence_length: `T`, length of every output.
        add_bos, add_eos: put BOS before / EOS after every text.

    Call arguments:
        x: strings `(B,)` or one string `()`.
        y, sample_weight: passed through unchanged.

    Returns:
        `x` = dict of `token_ids`, `padding_mask` int32 `(B, T)`; `(x, y)` or
        `(x, y, sample_weight)` when given.

    Example:
    >>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])
    >>> x = GPTClassifierPreprocessor(tokenizer, sequence_length=5)(["a a", "a a a a a"])
    >>> x["token_ids"].numpy().tolist()  # [CLS] a a [SEP] [PAD] / cut, [SEP] kept
    [[2, 4, 4, 3, 0], [2, 4, 4, 4, 3]]
    >>> x["padding_mask"].numpy().tolist()
    [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    """

    def __init__(
        self, tokenizer, sequence_length: int, add_bos: bool = True, add_eos: bool = True, **kwargs
    ):
        super().__init__(tokenizer, sequence_length, **kwargs)
        self.add_bos = add_bos
        self.add_eos = add_eos
        if sequence_length <= int(add_bos) + int(add_eos):
            raise ValueError(
                "`sequence_length` must leave room for a token after BOS / EOS. "
                f"Received: {sequence_length!r}"
            )
        eos_names = ("eos_token_id", "sep_token_id")
        self.bos_token_id = (
            require_token_id(tokenizer, "bos_token_id", "cls_token_id") if add_bos else None
        )
        self.eos_token_id = require_token_id(tokenizer, *eos_names) if add_eos else None
        pad_id = special_token_id(tokenizer, "pad_token_id", *eos_names)
        self.pad_token_id = 0 if pad_id is None else pad_id

    def call(self, x, y=None, sample_weight=None):
        if isinstance(x, (tuple, dict)):
            raise ValueError(
                "`x` of a `GPTClassifierPreprocessor` must be texts (a string or a 1-D batch). "
                f"Received: a {type(x).__name__}"
            )
        strings, batched = to_batch(x)
        ids = self.tokenizer.tokenize(strings)  # (B, (n))
        keep = self.sequence_length - int(self.add_bos) - int(self.add_eos)
        ids = tf.cast(ids[:, :keep], tf.int32)
        rows = ids.nrows()
        if self.add_bos:
            ids = tf.concat([self._column(rows, self.bos_token_id), ids], axis=1)
        if self.add_eos:
            ids = tf.concat([ids, self._column(rows, self.eos_token_id)], axis=1)
        token_ids, padding_mask = pad(ids, self.sequence_length, self.pad_token_id)
        x = {"token_ids": token_ids, "padding_mask": padding_mask}
        return keras.utils.pack_x_y_sample_weight(unbatch_like(x, batched), y, sample_weight)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(add_bos=self.add_bos, add_eos=self.add_eos)
        return config

    @staticmethod
    def _column(rows, token_id) -> tf.RaggedTensor:
        """`(rows, 1)` ragged of `token_id`."""
        column = tf.fill(tf.stack([rows, 1]), tf.constant(token_id, tf.int32))
        return tf.RaggedTensor.from_tensor(column).with_row_splits_dtype(tf.int64)
