"""Next-token prediction inputs: one text per row, or many documents packed into windows."""

import keras
import numpy as np
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
class CausalLMPreprocessor(Preprocessor):
    """Text -> `token_ids`/`padding_mask` and the same ids shifted by one as labels.

    Each text becomes `[BOS] ids [EOS]`, trimmed at the end to `sequence_length + 1`
    tokens (the specials stay), padded, then split: inputs are tokens `0..T-1`, labels
    tokens `1..T`. BOS/EOS are the tokenizer's `bos_token_id`/`eos_token_id`, or
    `[CLS]`/`[SEP]` for a WordPiece vocabulary; padding uses `pad_token_id`, else EOS.

    Args:
        tokenizer: a tfllm tokenizer.
        sequence_length: `T`, length of every output.
        add_bos, add_eos: put BOS before / EOS after every text.

    Call arguments:
        x: strings `(B,)` or one string `()`.

    Returns:
        `(x, y, sample_weight)`: `x` = dict of `token_ids`, `padding_mask` int32 `(B, T)`;
        `y` int32 `(B, T)` next tokens; `sample_weight` float32 `(B, T)`, 0 where the label
        is padding.

    Example:
    >>> preprocessor = CausalLMPreprocessor(tokenizer, sequence_length=256)
    >>> dataset = texts.batch(32).map(preprocessor)           # one text per row
    >>> dataset = preprocessor.pack(texts).batch(32)          # documents packed, no padding
    """

    def __init__(
        self, tokenizer, sequence_length: int, add_bos: bool = True, add_eos: bool = True, **kwargs
    ):
        super().__init__(tokenizer, sequence_length, **kwargs)
        self.add_bos = add_bos
        self.add_eos = add_eos
        bos_names, eos_names = ("bos_token_id", "cls_token_id"), ("eos_token_id", "sep_token_id")
        self.bos_token_id = require_token_id(tokenizer, *bos_names) if add_bos else None
        self.eos_token_id = require_token_id(tokenizer, *eos_names) if add_eos else None
        pad_id = special_token_id(tokenizer, "pad_token_id", *eos_names)
        self.pad_token_id = 0 if pad_id is None else pad_id

    def tokenize_documents(self, strings, max_tokens: int | None = None) -> tf.RaggedTensor:
        """`(B,)` strings -> ragged `(B, (n))` ids with BOS/EOS, at most `max_tokens` each."""
        ids = self.tokenizer.tokenize(strings)
        if max_tokens is not None:
            ids = ids[:, : max_tokens - int(self.add_bos) - int(self.add_eos)]

        def column(token_id):  # (B, 1) ragged, also for texts without tokens
            return tf.RaggedTensor.from_tensor(tf.fill(tf.stack([ids.nrows(), 1]), token_id))

        bos = [column(self.bos_token_id)] if self.add_bos else []
        eos = [column(self.eos_token_id)] if self.add_eos else []
        return tf.concat([*bos, ids, *eos], axis=1)

    def call(self, x, y=None, sample_weight=None):
        if y is not None or sample_weight is not None:
            raise ValueError("`CausalLMPreprocessor` makes its own labels; pass texts only.")
        strings, batched = to_batch(x)
        ids = self.tokenize_documents(strings, max_tokens=self.sequence_length + 1)
        ids, mask = pad(ids, self.sequence_length + 1, self.pad_token_id)  # (B, T + 1)
        x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}
        outputs = (x, ids[:, 1:], tf.cast(mask[:, 1:], tf.float32))
        return unbatch_like(outputs, batched)

    def generate_preprocess(self, x, sequence_length: int | None = None) -> dict:
        """Prompts -> `token_ids` / `padding_mask` int32 `(B, L)`: `[BOS] ids`, right-padded.

        No end token (the prompt goes on); `L` is `sequence_length` (default: this
        preprocessor's), longer prompts are cut at the end.
        """
        length = self.sequence_length if sequence_length is None else sequence_length
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"`sequence_length` must be an int >= 1. Received: {length!r}")
        strings, batched = to_batch(x)
        ids = self.tokenizer.tokenize(strings)
        if self.add_bos:
            bos = tf.fill(tf.stack([ids.nrows(), 1]), self.bos_token_id)
            ids = tf.concat([tf.RaggedTensor.from_tensor(bos), ids], axis=1)
        token_ids, padding_mask = pad(ids[:, :length], length, self.pad_token_id)
        return unbatch_like({"token_ids": token_ids, "padding_mask": padding_mask}, batched)

    def generate_postprocess(self, x) -> list[str]:
        """`token_ids` / `padding_mask` `(B, L)` -> `B` strings, without BOS / EOS tokens."""
        ids = np.asarray(x["token_ids"])
        keep = np.asarray(x["padding_mask"]).astype(bool)
        specials = [t for t in (self.bos_token_id, self.eos_token_id) if t is not None]
        keep &= ~np.isin(ids, specials)
        texts = self.tokenizer.detokenize(tf.ragged.boolean_mask(ids, keep)).numpy()
        return [text.decode("utf-8", errors="replace") for text in texts]

    def pack(self, texts: tf.data.Dataset) -> tf.data.Dataset:
        """Scalar-string dataset of documents -> packed windows (see `pack_documents`)."""
        documents = texts.batch(256).map(self.tokenize_documents).unbatch()
        return pack_documents(documents, self.sequence_length, pad_token_id=self.pad_token_id)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(add_bos=self.add_bos, add_eos=self.add_eos)
        return config


def pack_documents(
    documents: tf.data.Dataset,
    sequence_length: int,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
) -> tf.data.Dataset:
    """Concatenates token-id documents into windows of `sequence_length`, without padding.

    The stream of all documents (each followed by `eos_token_id` when given) is cut into
    windows of `T = sequence_length` tokens; window `i` holds stream tokens
    `[i*T, (i+1)*T)` and its labels are tokens `[i*T + 1, (i+1)*T + 1)`, so every token is
    an input once and a label once and nothing is lost between windows. Only the last
    window is padded. A label is weighted 0 when it belongs to another document than its
    input token (attention stops at document borders, so it cannot be predicted) or is
    padding.

    Args:
        documents: dataset of 1-D int token-id tensors, one per document (empty ones are
            skipped).
        sequence_length: `T`.
        eos_token_id: appended to every document, when given.
        pad_token_id: fills the end of the last window.

    Returns:
        A dataset of unbatched `(x, y, sample_weight)`: `x` = dict of `token_ids`,
        `padding_mask` and `segment_ids` int32 `(T,)`, where `segment_ids` numbers the
        documents of the window from 1 (0 = padding), as `GPTBackbone(packed_sequences=
        True)` expects; `y` int32 `(T,)`; `sample_weight` float32 `(T,)`.

    Example:
    >>> documents = texts.map(tokenizer.tokenize)
    >>> windows = pack_documents(documents, 128, eos_token_id=tokenizer.eos_token_id)
    >>> model.fit(windows.batch(32), ...)  # GPTBackbone(..., packed_sequences=True)
    """
    if not isinstance(sequence_length, int) or sequence_length < 1:
        raise ValueError(f"`sequence_length` must be an int >= 1. Received: {sequence_length!r}")
    if documents.element_spec.shape.rank != 1:
        raise ValueError(
            f"`documents` must hold 1-D token-id tensors. Received: {documents.element_spec}"
        )
    length = sequence_length

    def with_index(index, ids):  # (n,) ids -> (n,) ids, (n,) document index
        ids = tf.cast(ids, tf.int32)
        if eos_token_id is not None:
            ids = tf.concat([ids, [eos_token_id]], axis=0)
        return ids, tf.fill(tf.shape(ids), index)

    tokens = documents.enumerate().map(with_index).filter(lambda ids, _: tf.size(ids) > 0)
    chunks = tokens.rebatch(length)  # ((<= T,), (<= T,)) in stream order
    empty = tf.zeros([0], tf.int32), tf.zeros([0], tf.int64)
    chunks = chunks.concatenate(tf.data.Dataset.from_tensors(empty))  # flushes the scan

    def step(previous, chunk):  # emits the previous chunk with the first token after it
        ready = tf.size(previous[0]) > 0
        return chunk, (ready, previous, (chunk[0][:1], chunk[1][:1]))

    windows = chunks.scan(empty, step).filter(lambda ready, *_: ready)

    def to_example(ready, chunk, following):
        (ids, docs), (next_id, next_doc) = chunk, following
        labels = tf.concat([ids[1:], next_id], axis=0)  # (<= T,)
        same_document = tf.concat([docs[1:], next_doc], axis=0) == docs[: tf.size(labels)]
        starts = tf.concat([[True], docs[1:] != docs[:-1]], axis=0)
        segment_ids = tf.cumsum(tf.cast(starts, tf.int32))  # 1, 1, 2, 2, 2, 3, ...
        fill = [[0, length - tf.size(ids)]]
        x = {
            "token_ids": tf.pad(ids, fill, constant_values=pad_token_id),
            "padding_mask": tf.pad(tf.ones_like(ids), fill),
            "segment_ids": tf.pad(segment_ids, fill),
        }
        y = tf.pad(labels, [[0, length - tf.size(labels)]], constant_values=pad_token_id)
        weights = tf.pad(tf.cast(same_document, tf.float32), [[0, length - tf.size(labels)]])
        x = {k: tf.ensure_shape(v, [length]) for k, v in x.items()}
        return x, tf.ensure_shape(y, [length]), tf.ensure_shape(weights, [length])

    return windows.map(to_example)
