"""The shared preprocessor layer and the packing steps every task reuses.

A preprocessor is a Keras layer of TensorFlow ops holding a tokenizer: it maps
`(x, y, sample_weight)` to model inputs in `tf.data.Dataset.map`, in a `tf.function` and
in an exported SavedModel alike. Outputs are dicts with the fixed keys `token_ids`,
`segment_ids`, `padding_mask`, `mask_positions`; every one is int32 `(B, sequence_length)`
(or `(B, P)` for `mask_positions`), weights are float32.
"""

import keras
import tensorflow as tf
import tensorflow_text as tf_text

from tfllm.tokenizers import Tokenizer


def special_token_id(tokenizer: Tokenizer, *names: str) -> int | None:
    """The first of the attributes `names` (e.g. `"cls_token_id", "bos_token_id"`) set."""
    for name in names:
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return None


def require_token_id(tokenizer: Tokenizer, *names: str) -> int:
    value = special_token_id(tokenizer, *names)
    if value is None:
        raise ValueError(
            f"`tokenizer` ({type(tokenizer).__name__}) needs one of the special tokens "
            f"{' / '.join(names)}; all are None."
        )
    return value


def to_batch(strings) -> tuple[tf.Tensor, bool]:
    """`()` or `(B,)` strings -> `((B,) strings, was_batched)`."""
    strings = tf.convert_to_tensor(strings, dtype=tf.string)
    if strings.shape.rank not in (0, 1):
        raise ValueError(
            f"Text inputs must be a string or a 1-D batch of strings. Received: shape "
            f"{strings.shape}"
        )
    return tf.reshape(strings, [-1]), strings.shape.rank == 1


def unbatch_like(outputs, batched: bool):
    """Drops the batch axis of every tensor in `outputs` when the input had none."""
    return outputs if batched else tf.nest.map_structure(lambda t: t[0], outputs)


def pack_segments(segments, sequence_length: int, start_id: int, end_id: int):
    """`[CLS] a [SEP] (b [SEP] ...)` from ragged `(B, (n))` id segments, before padding.

    Segments are trimmed round robin (one token at a time from each segment that still
    has some) until everything, specials included, fits in `sequence_length`: a long
    segment gives up tokens first and pairs stay balanced.

    Returns:
        ragged `(B, (n))` int32 ids and segment ids (0 for the first segment, 1, ...).
    """
    budget = sequence_length - len(segments) - 1
    trimmed = tf_text.RoundRobinTrimmer(max_seq_length=budget).trim(segments)
    ids, segment_ids = tf_text.combine_segments(
        trimmed, start_of_sequence_id=start_id, end_of_segment_id=end_id
    )
    return tf.cast(ids, tf.int32), tf.cast(segment_ids, tf.int32)


def pad(ragged: tf.RaggedTensor, sequence_length: int, value: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Ragged `(B, (n))` -> dense `(B, sequence_length)` values and int32 mask (1 = real)."""
    padded, mask = tf_text.pad_model_inputs(ragged, sequence_length, pad_value=value)
    return padded, tf.cast(mask, tf.int32)


class Preprocessor(keras.layers.Layer):
    """Base of tfllm preprocessors: a non-trainable layer holding `tokenizer`.

    Args:
        tokenizer: a `tfllm.tokenizers.Tokenizer`.
        sequence_length: length of the dense outputs.

    Subclasses implement `call(x, y=None, sample_weight=None)`; constructor arguments are
    the config (`get_config` stores the tokenizer serialized).
    """

    min_sequence_length = 1

    def __init__(self, tokenizer: Tokenizer, sequence_length: int, **kwargs):
        kwargs.pop("trainable", None)  # stored by `get_config`; always False
        super().__init__(trainable=False, **kwargs)
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(
                f"`tokenizer` must be a tfllm Tokenizer. Received: {type(tokenizer).__name__}"
            )
        if (
            not isinstance(sequence_length, int)
            or isinstance(sequence_length, bool)
            or sequence_length < self.min_sequence_length
        ):
            raise ValueError(
                f"`sequence_length` must be an int >= {self.min_sequence_length}. "
                f"Received: {sequence_length!r}"
            )
        # String and ragged inputs: keep Keras from converting them; nothing to build.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        self.built = True
        self.tokenizer = tokenizer
        self.sequence_length = sequence_length

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            tokenizer=keras.layers.serialize(self.tokenizer),
            sequence_length=self.sequence_length,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config, tokenizer=keras.layers.deserialize(config["tokenizer"]))
        return cls(**config)


class SegmentPreprocessor(Preprocessor):
    """Base of the BERT-style preprocessors: one or two text segments, packed with specials.

    `x` is a string batch `(B,)` (or one string), or a tuple `(text_a, text_b)` of them.
    Special ids: `[CLS]`/`[SEP]` (or BOS/EOS) around segments, `[PAD]` (or 0) after them.
    """

    min_sequence_length = 3

    def __init__(self, tokenizer: Tokenizer, sequence_length: int, **kwargs):
        super().__init__(tokenizer, sequence_length, **kwargs)
        self.start_token_id = require_token_id(tokenizer, "cls_token_id", "bos_token_id")
        self.end_token_id = require_token_id(tokenizer, "sep_token_id", "eos_token_id")
        self.pad_token_id = special_token_id(tokenizer, "pad_token_id") or 0

    def tokenize_segments(self, x) -> tuple[list[tf.RaggedTensor], bool]:
        """`x` -> (list of ragged `(B, (n))` ids, one per segment; was the input batched)."""
        texts = list(x) if isinstance(x, tuple) else [x]
        if not 1 <= len(texts) <= 2:
            raise ValueError(
                f"`x` must be a text batch or a tuple of two. Received: {len(texts)} segments"
            )
        batches = [to_batch(t) for t in texts]
        if len({b for _, b in batches}) != 1:
            raise ValueError("All segments of `x` must be batched alike (all `()` or `(B,)`).")
        return [self.tokenizer.tokenize(s) for s, _ in batches], batches[0][1]

    def pack(self, x) -> tuple[tf.RaggedTensor, tf.RaggedTensor, bool]:
        """Tokenized and packed segments: ragged ids, ragged segment ids, was batched."""
        segments, batched = self.tokenize_segments(x)
        ids, segment_ids = pack_segments(
            segments, self.sequence_length, self.start_token_id, self.end_token_id
        )
        return ids, segment_ids, batched
