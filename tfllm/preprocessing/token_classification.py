"""Word-level labels (NER, BIO tags) aligned to word pieces."""

import keras
import tensorflow as tf
import tensorflow_text as tf_text

from tfllm.preprocessing.base import SegmentPreprocessor, pad, unbatch_like


@keras.saving.register_keras_serializable(package="tfllm")
class TokenClassificationPreprocessor(SegmentPreprocessor):
    """Pre-split words + one label per word -> `[CLS] pieces [SEP]` with piece labels.

    Every word is tokenized on its own; its first piece carries the word's label. Other
    pieces, `[CLS]`, `[SEP]` and padding get label 0 with `sample_weight` 0, so any Keras
    loss (e.g. `SparseCategoricalCrossentropy`) and metric ignores them. Words past
    `sequence_length - 2` pieces are cut off. Byte-level BPE sees each word without its
    leading space; WordPiece and SentencePiece tokenize words alike in and out of context.

    Args:
        tokenizer: a tokenizer with `[CLS]`/`[SEP]` (or BOS/EOS) ids.
        sequence_length: length of every output.
        label_names: the label of each id, e.g. `["O", "B-person", "I-person", ...]`.

    Call arguments:
        x: words, ragged strings `(B, (words))` (or one sentence `(words,)`).
        y: labels per word, int ids or strings from `label_names`, shaped like `x`.
        sample_weight: not accepted (weights come from the alignment).

    Returns:
        `x` = dict of `token_ids`, `segment_ids` (zeros), `padding_mask` int32
        `(B, sequence_length)`; with `y`: `(x, labels int32, sample_weight float32)`, both
        `(B, sequence_length)`.

    Example:
    >>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(
    ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "to", "new", "york", "##er"])
    >>> preprocessor = TokenClassificationPreprocessor(tokenizer, 8, ["O", "B-loc", "I-loc"])
    >>> words = tf.ragged.constant([["to", "new", "yorker"], ["york"]])
    >>> tags = tf.ragged.constant([["O", "B-loc", "I-loc"], ["B-loc"]])
    >>> dataset = tf.data.Dataset.from_tensor_slices((words, tags))
    >>> dataset = dataset.ragged_batch(32).map(preprocessor)  # (words, tags) per sentence
    >>> x, labels, sample_weight = next(iter(dataset))
    >>> x["token_ids"][0].numpy().tolist()  # [CLS] to new york ##er [SEP] [PAD] [PAD]
    [2, 4, 5, 6, 7, 3, 0, 0]
    >>> labels[0].numpy().tolist(), sample_weight[0].numpy().tolist()  # on first pieces
    ([0, 0, 1, 2, 0, 0, 0, 0], [0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    """

    def __init__(self, tokenizer, sequence_length: int, label_names, **kwargs):
        super().__init__(tokenizer, sequence_length, **kwargs)
        label_names = list(label_names)
        if not label_names or not all(isinstance(n, str) for n in label_names):
            raise ValueError(
                f"`label_names` must be a non-empty list of str. Received: {label_names!r}"
            )
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"`label_names` has repeated names: {label_names!r}")
        self.label_names = label_names
        self._label_ids = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(label_names), tf.range(len(label_names), dtype=tf.int32)
            ),
            default_value=-1,
        )

    def _words(self, x) -> tuple[tf.RaggedTensor, bool]:
        if not isinstance(x, tf.RaggedTensor):
            x = tf.convert_to_tensor(x, dtype=tf.string)
            if x.shape.rank not in (1, 2):
                raise ValueError(f"`x` must be words `(B, (words))`. Received: shape {x.shape}")
            batched = x.shape.rank == 2
            x = tf.RaggedTensor.from_tensor(x if batched else x[None])
            return x, batched
        if x.shape.rank != 2:
            raise ValueError(f"`x` must be words `(B, (words))`. Received: shape {x.shape}")
        return x, True

    def _label_values(self, y, words: tf.RaggedTensor) -> tf.Tensor:
        """Flat int32 label ids `(W,)` of all words, checked against `label_names`."""
        values = y.flat_values if isinstance(y, tf.RaggedTensor) else tf.reshape(y, [-1])
        if values.dtype == tf.string:
            values = self._label_ids.lookup(values)
        values = tf.cast(values, tf.int32)
        checks = [
            tf.debugging.assert_equal(
                tf.size(values, tf.int64),
                tf.size(words.flat_values, tf.int64),
                message="`y` must hold one label per word of `x`.",
            ),
            tf.debugging.assert_non_negative(values, message="unknown label in `y`"),
            tf.debugging.assert_less(
                values, len(self.label_names), message="label id out of `label_names` range"
            ),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(values)

    def call(self, x, y=None, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("`sample_weight` is made from the word alignment; pass x, y only.")
        words, batched = self._words(x)
        pieces = self.tokenizer.tokenize(words.flat_values)  # (W, (pieces))
        ids = words.with_flat_values(pieces).merge_dims(1, 2)  # (B, (n))
        budget = self.sequence_length - 2
        ids, _ = tf_text.combine_segments([ids[:, :budget]], self.start_token_id, self.end_token_id)
        token_ids, padding_mask = pad(
            tf.cast(ids, tf.int32), self.sequence_length, self.pad_token_id
        )
        x = {
            "token_ids": token_ids,
            "segment_ids": tf.zeros_like(token_ids),
            "padding_mask": padding_mask,
        }
        if y is None:
            return unbatch_like(x, batched)
        labels = self._label_values(y, words)  # (W,)
        # First piece of each word: its label; other pieces: -1 (ignored).
        first = tf.ragged.range(pieces.row_lengths()).flat_values == 0
        piece_labels = tf.where(first, tf.repeat(labels, pieces.row_lengths()), -1)
        piece_labels = words.with_flat_values(pieces.with_flat_values(piece_labels))
        piece_labels = piece_labels.merge_dims(1, 2)[:, :budget]  # (B, (n))
        piece_labels, _ = tf_text.combine_segments([piece_labels], -1, -1)
        piece_labels, _ = pad(piece_labels, self.sequence_length, -1)
        outputs = (
            x,
            tf.maximum(piece_labels, 0),
            tf.cast(piece_labels >= 0, tf.float32),
        )
        return unbatch_like(outputs, batched)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(label_names=self.label_names)
        return config
