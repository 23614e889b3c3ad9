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
from tfllm.preprocessing.chat import (
    PLAIN_TEMPLATE,
    ChatTemplate,
    conversation_ids,
    trim_conversations,
)


@keras.saving.register_keras_serializable(package="tfllm")
class CausalLMPreprocessor(Preprocessor):
    """Text, or prompts and responses, -> `token_ids`/`padding_mask` and next-token labels.

    Each text becomes `[BOS] ids [EOS]`, trimmed at the end to `sequence_length + 1`
    tokens (the specials stay), padded, then split: inputs are tokens `0..T-1`, labels
    tokens `1..T`. BOS/EOS are the tokenizer's `bos_token_id`/`eos_token_id`, or
    `[CLS]`/`[SEP]` for a WordPiece vocabulary; padding uses `pad_token_id`, else EOS.

    Supervised fine-tuning, as keras-hub's: `x = {"prompts": (B,), "responses": (B,)}`
    strings, or conversations `x = {"roles": (B, (n)), "contents": (B, (n))}` (ragged or
    dense strings; roles `system` / `user` / `assistant`) written with `chat_template`
    (see `tfllm.preprocessing.ChatTemplate`; a prompt is a user message, a response an
    assistant message). Each message is tokenized on its own and an end token closes every
    response; `sample_weight` is 1 on the responses' tokens and end tokens only, so the
    loss covers every assistant turn and no prompt. An example longer than
    `sequence_length + 1` tokens loses the start of its prompt first (after BOS), then its
    end (see `chat.trim_conversations`). An empty response fails (`InvalidArgumentError`).
    `generate_preprocess` writes a prompt as the same template does: `[BOS]`, the user
    message, the assistant prefix.

    Args:
        tokenizer: a tfllm tokenizer.
        sequence_length: `T`, length of every output.
        add_bos, add_eos: put BOS before / EOS after every text (prompts and responses
            always end with EOS).
        chat_template: a `ChatTemplate` (or its config dict) for prompts, responses and
            conversations; None writes prompt and response one after the other, as
            keras-hub does.

    Call arguments:
        x: strings `(B,)` or one string `()`; or one of the dicts above (batched or not).

    Returns:
        `(x, y, sample_weight)`: `x` = dict of `token_ids`, `padding_mask` int32 `(B, T)`;
        `y` int32 `(B, T)` next tokens; `sample_weight` float32 `(B, T)`, 0 where the label
        is padding (and, for prompts and responses, where it is not part of a response).

    Example:
    >>> vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b"]
    >>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(vocabulary)
    >>> preprocessor = CausalLMPreprocessor(tokenizer, sequence_length=5)
    >>> x, y, weights = preprocessor({"prompts": ["a a"], "responses": ["b"]})
    >>> x["token_ids"].numpy().tolist(), y.numpy().tolist()  # [CLS] a a b [SEP]
    ([[2, 4, 4, 5, 3]], [[4, 4, 5, 3, 0]])
    >>> weights.numpy().tolist()  # the response and its end token
    [[0.0, 0.0, 1.0, 1.0, 0.0]]
    >>> windows = preprocessor.pack(tf.data.Dataset.from_tensor_slices(["a b", "b a"]))
    >>> [w[0]["segment_ids"].tolist() for w in windows.as_numpy_iterator()]  # documents packed
    [[1, 1, 1, 1, 2], [1, 1, 1, 0, 0]]
    """

    def __init__(
        self,
        tokenizer,
        sequence_length: int,
        add_bos: bool = True,
        add_eos: bool = True,
        chat_template=None,
        **kwargs,
    ):
        super().__init__(tokenizer, sequence_length, **kwargs)
        self.add_bos = add_bos
        self.add_eos = add_eos
        if isinstance(chat_template, dict):
            chat_template = ChatTemplate.from_config(chat_template)
        if chat_template is not None and not isinstance(chat_template, ChatTemplate):
            raise TypeError(
                "`chat_template` must be a ChatTemplate, its config dict or None. "
                f"Received: {chat_template!r}"
            )
        self.chat_template = chat_template
        bos_names, eos_names = ("bos_token_id", "cls_token_id"), ("eos_token_id", "sep_token_id")
        self.bos_token_id = require_token_id(tokenizer, *bos_names) if add_bos else None
        self.eos_token_id = require_token_id(tokenizer, *eos_names) if add_eos else None
        # Responses always end with one, whether texts do (`add_eos`) or not.
        self.end_token_id = require_token_id(tokenizer, *eos_names)
        pad_id = special_token_id(tokenizer, "pad_token_id", *eos_names)
        self.pad_token_id = 0 if pad_id is None else pad_id

    @property
    def template(self) -> ChatTemplate:
        """The template in use: `chat_template`, else the plain one (texts as they are)."""
        return PLAIN_TEMPLATE if self.chat_template is None else self.chat_template

    def tokenize_documents(self, strings, max_tokens: int | None = None) -> tf.RaggedTensor:
        """`(B,)` strings -> ragged `(B, (n))` ids with BOS/EOS, at most `max_tokens` each."""
        ids = self.tokenizer.tokenize(strings)
        if max_tokens is not None:
            ids = ids[:, : max_tokens - int(self.add_bos) - int(self.add_eos)]
        bos = [self._column(ids.nrows(), self.bos_token_id)] if self.add_bos else []
        eos = [self._column(ids.nrows(), self.eos_token_id)] if self.add_eos else []
        return tf.concat([*bos, ids, *eos], axis=1)

    def tokenize_conversations(self, x: dict, max_tokens: int) -> tuple:
        """Prompts and responses, or conversations -> `(ids, weights, was_batched)`.

        `ids` int32 and `weights` float32 are ragged `(B, (n))`, `[BOS]` first and at most
        `max_tokens` long; `weights[t]` is the loss weight of predicting token `t`.
        """
        roles, contents, batched = _conversations(x)
        ids, weights = conversation_ids(
            self.tokenizer, self.template, roles, contents, self.end_token_id
        )
        if self.add_bos:
            bos = self._column(ids.nrows(), self.bos_token_id)
            ids = tf.concat([bos, ids], axis=1)
            weights = tf.concat([tf.zeros_like(bos, tf.float32), weights], axis=1)
        ids, weights = trim_conversations(ids, weights, max_tokens, int(self.add_bos))
        return ids, weights, batched

    def call(self, x, y=None, sample_weight=None):
        if y is not None or sample_weight is not None:
            raise ValueError("`CausalLMPreprocessor` makes its own labels; pass texts only.")
        length = self.sequence_length + 1
        if isinstance(x, dict):
            ids, weights, batched = self.tokenize_conversations(x, max_tokens=length)
            weights = pad(weights, length, 0.0)[0]  # (B, T + 1), 0 on padding
        else:
            strings, batched = to_batch(x)
            ids, weights = self.tokenize_documents(strings, max_tokens=length), None
        ids, mask = pad(ids, length, self.pad_token_id)  # (B, T + 1)
        if weights is None:
            weights = tf.cast(mask, tf.float32)
        x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}
        return unbatch_like((x, ids[:, 1:], weights[:, 1:]), batched)

    def generate_preprocess(self, x, sequence_length: int | None = None) -> dict:
        """Prompts, or conversations, -> `token_ids` / `padding_mask` int32 `(B, L)`.

        A prompt string is `[BOS] ids`, with `chat_template`: `[BOS]`, the prompt as a user
        message, the assistant prefix (tokenized as in training). A conversation
        `{"roles", "contents"}` (as in `call`) is `[BOS]`, its messages as in training
        (each assistant message closed by the end token), then the assistant prefix. A
        longer prompt or conversation loses its oldest tokens after `[BOS]`: its end, next
        to the answer (the assistant prefix, the last message), is kept. No end token (the
        text goes on); rows are right-padded to `L`, `sequence_length` (default: this
        preprocessor's).
        """
        length = self.sequence_length if sequence_length is None else sequence_length
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"`sequence_length` must be an int >= 1. Received: {length!r}")
        if isinstance(x, dict):
            return self._conversation_prompts(x, length)
        strings, batched = to_batch(x)
        user_prefix, user_suffix = self.template.parts("user")
        ids = self.tokenizer.tokenize(tf.strings.join([user_prefix, strings, user_suffix]))
        return unbatch_like(self._last_tokens(ids, length), batched)

    def _conversation_prompts(self, x: dict, length: int) -> dict:
        if sorted(x) != ["contents", "roles"]:
            raise ValueError(
                "A dict `x` to generate from holds `roles` and `contents` (conversations). "
                f"Received: {sorted(x)}"
            )
        roles, contents, batched = _conversations(x)
        ids, _ = conversation_ids(self.tokenizer, self.template, roles, contents, self.end_token_id)
        return unbatch_like(self._last_tokens(ids, length), batched)

    def _last_tokens(self, ids: tf.RaggedTensor, length: int) -> dict:
        """`(B, (n))` prompt ids -> `[BOS]`, the last tokens of ids + assistant prefix,
        right-padded: `token_ids` / `padding_mask` `(B, length)`."""
        ids = self._with_assistant_prefix(ids)
        keep = length - int(self.add_bos)  # the last `keep` tokens of each row
        ids = ids[:, -keep:] if keep else ids[:, :0]
        if self.add_bos:
            ids = tf.concat([self._column(ids.nrows(), self.bos_token_id), ids], axis=1)
        token_ids, padding_mask = pad(ids, length, self.pad_token_id)
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def _with_assistant_prefix(self, ids: tf.RaggedTensor) -> tf.RaggedTensor:
        """`(B, (n))` ids followed by the template's assistant prefix (tokenized apart)."""
        assistant_prefix = self.template.parts("assistant")[0]
        if not assistant_prefix:
            return ids
        prefix = self.tokenizer.tokenize(tf.fill([ids.nrows()], assistant_prefix))
        return tf.concat([ids, tf.cast(prefix, ids.dtype)], axis=1)

    def generate_postprocess(self, x) -> list[str]:
        """`token_ids` / `padding_mask` `(B, L)` -> `B` strings, without BOS / EOS tokens."""
        ids = np.asarray(x["token_ids"])
        keep = np.asarray(x["padding_mask"]).astype(bool)
        specials = {self.bos_token_id, self.eos_token_id, self.end_token_id} - {None}
        keep &= ~np.isin(ids, sorted(specials))
        texts = self.tokenizer.detokenize(tf.ragged.boolean_mask(ids, keep)).numpy()
        return [text.decode("utf-8", errors="replace") for text in texts]

    def pack(self, examples: tf.data.Dataset) -> tf.data.Dataset:
        """Unbatched documents (strings) or examples (dicts) -> packed windows.

        Documents run on from window to window (see `pack_documents`); examples (prompts
        and responses, conversations) are kept whole, each cut to `sequence_length`
        tokens, with their weights (`split_documents=False`).
        """
        if not isinstance(examples.element_spec, dict):
            documents = examples.batch(256).map(self.tokenize_documents).unbatch()
            return pack_documents(documents, self.sequence_length, pad_token_id=self.pad_token_id)
        documents = examples.ragged_batch(256).map(
            lambda x: self.tokenize_conversations(x, max_tokens=self.sequence_length)[:2]
        )
        return pack_documents(
            documents.unbatch(),
            self.sequence_length,
            pad_token_id=self.pad_token_id,
            split_documents=False,
        )

    def get_config(self) -> dict:
        config = super().get_config()
        template = self.chat_template
        config.update(
            add_bos=self.add_bos,
            add_eos=self.add_eos,
            chat_template=None if template is None else template.get_config(),
        )
        return config

    @staticmethod
    def _column(rows, token_id) -> tf.RaggedTensor:
        """`(rows, 1)` ragged of `token_id`, also for rows without tokens."""
        column = tf.fill(tf.stack([rows, 1]), tf.constant(token_id, tf.int32))
        return tf.RaggedTensor.from_tensor(column).with_row_splits_dtype(tf.int64)


def _conversations(x: dict) -> tuple[tf.RaggedTensor, tf.RaggedTensor, bool]:
    """`{"prompts", "responses"}` or `{"roles", "contents"}` -> ragged `(B, (n))` roles,
    contents, and whether the input was batched."""
    keys = sorted(x)
    if keys == ["prompts", "responses"]:
        prompts, batched = to_batch(x["prompts"])
        responses, responses_batched = to_batch(x["responses"])
        if batched != responses_batched:
            raise ValueError("`prompts` and `responses` must be batched alike (`()` or `(B,)`).")
        contents = tf.stack([prompts, responses], axis=1)  # (B, 2)
        roles = tf.broadcast_to(tf.constant(["user", "assistant"]), tf.shape(contents))
        return tf.RaggedTensor.from_tensor(roles), tf.RaggedTensor.from_tensor(contents), batched
    if keys == ["contents", "roles"]:
        roles, batched = _messages(x["roles"], "roles")
        contents, _ = _messages(x["contents"], "contents")
        return roles, contents, batched
    raise ValueError(
        "A dict `x` holds `prompts` and `responses`, or `roles` and `contents` "
        f"(conversations). Received: {keys}"
    )


def _messages(value, name: str) -> tuple[tf.RaggedTensor, bool]:
    """Strings `(B, (n))` ragged or dense, or `(n,)` one conversation -> ragged `(B, (n))`."""
    if not isinstance(value, tf.RaggedTensor):
        value = tf.convert_to_tensor(value, tf.string)
        if value.shape.rank not in (1, 2):
            raise ValueError(f"`{name}` must be (B, n) or (n,) strings. Received: {value.shape}")
        batched = value.shape.rank == 2
        value = tf.RaggedTensor.from_tensor(value if batched else value[None])
        return value.with_row_splits_dtype(tf.int64), batched
    if value.shape.rank != 2 or value.dtype != tf.string:
        raise ValueError(f"`{name}` must be ragged (B, (n)) strings. Received: {value}")
    return value.with_row_splits_dtype(tf.int64), True


def pack_documents(
    documents: tf.data.Dataset,
    sequence_length: int,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    split_documents: bool = True,
) -> tf.data.Dataset:
    """Concatenates token-id documents into windows of `sequence_length`.

    With `split_documents` (pretraining), the stream of all documents (each followed by
    `eos_token_id` when given) is cut into windows of `T = sequence_length` tokens; window
    `i` holds stream tokens `[i*T, (i+1)*T)` and its labels are tokens `[i*T + 1, (i+1)*T +
    1)`, so every token is an input once and a label once and nothing is lost between
    windows. Only the last window is padded. Without it (fine-tuning examples), documents
    are kept whole: a window takes documents in order while they fit and is padded when
    the next one does not (a document longer than `T` fails). A label is weighted 0 when it
    belongs to another document than its input token (attention stops at document
    borders, so it cannot be predicted) or is padding, else by its token's weight.

    Args:
        documents: dataset of 1-D int token-id tensors, one per document (empty ones are
            skipped), or of `(ids, weights)` pairs where `weights[t]` (float) weighs the
            loss of predicting token `t` (e.g. 0 on a prompt; default 1).
        sequence_length: `T`.
        eos_token_id: appended to every document (weight 1), when given.
        pad_token_id: fills the end of a window.
        split_documents: let documents run on into the next window.

    Returns:
        A dataset of unbatched `(x, y, sample_weight)`: `x` = dict of `token_ids`,
        `padding_mask` and `segment_ids` int32 `(T,)`, where `segment_ids` numbers the
        documents of the window from 1 (0 = padding), as `GPTBackbone(packed_sequences=
        True)` expects; `y` int32 `(T,)`; `sample_weight` float32 `(T,)`.

    Example:
    >>> documents = tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[5, 6, 7], [8, 9]]))
    >>> windows = pack_documents(documents, 4, eos_token_id=1)  # 5 6 7 1 | 8 9 1
    >>> [(x["token_ids"].tolist(), w.tolist()) for x, y, w in windows.as_numpy_iterator()]
    [([5, 6, 7, 1], [1.0, 1.0, 1.0, 0.0]), ([8, 9, 1, 0], [1.0, 1.0, 0.0, 0.0])]
    """
    if not isinstance(sequence_length, int) or sequence_length < 1:
        raise ValueError(f"`sequence_length` must be an int >= 1. Received: {sequence_length!r}")
    weighted = isinstance(documents.element_spec, tuple)
    ids_spec = documents.element_spec[0] if weighted else documents.element_spec
    if ids_spec.shape.rank != 1:
        raise ValueError(
            f"`documents` must hold 1-D token-id tensors. Received: {documents.element_spec}"
        )
    length = sequence_length

    def with_index(index, document):  # -> (n,) ids, (n,) document index, (n,) weights
        ids, weights = document if weighted else (document, None)
        ids = tf.cast(ids, tf.int32)
        weights = tf.ones(tf.shape(ids)) if weights is None else tf.cast(weights, tf.float32)
        if eos_token_id is not None:
            ids = tf.concat([ids, [eos_token_id]], axis=0)
            weights = tf.concat([weights, [1.0]], axis=0)
        if not split_documents:
            tf.debugging.assert_less_equal(
                tf.size(ids), length, message=f"A document is longer than {length} tokens."
            )
        return ids, tf.fill(tf.shape(ids), index), weights

    tokens = documents.enumerate().map(with_index).filter(lambda ids, *_: tf.size(ids) > 0)
    empty = tf.zeros([0], tf.int32), tf.zeros([0], tf.int64), tf.zeros([0])
    if split_documents:
        chunks = tokens.rebatch(length)  # ((<= T,), (<= T,), (<= T,)) in stream order
        chunks = chunks.concatenate(tf.data.Dataset.from_tensors(empty))  # flushes the scan

        def step(previous, chunk):  # emits the previous chunk with the first token after it
            ready = tf.size(previous[0]) > 0
            return chunk, (ready, previous, tuple(part[:1] for part in chunk))

    else:
        # A sentinel longer than any window flushes the last one.
        sentinel = (
            tf.zeros([length + 1], tf.int32),
            tf.zeros([length + 1], tf.int64),
            tf.zeros([length + 1]),
        )
        chunks = tokens.concatenate(tf.data.Dataset.from_tensors(sentinel))

        def step(window, document):  # emits the window when the document does not fit
            full = tf.size(window[0]) + tf.size(document[0]) > length
            ready = full & (tf.size(window[0]) > 0)
            window_then = tuple(
                tf.cond(full, lambda d=d: d, lambda w=w, d=d: tf.concat([w, d], axis=0))
                for w, d in zip(window, document, strict=True)
            )
            return window_then, (ready, window, empty)  # nothing follows a whole document

    windows = chunks.scan(empty, step).filter(lambda ready, *_: ready)

    def to_example(ready, chunk, following):
        (ids, docs, weights), (next_id, next_doc, next_weight) = chunk, following
        labels = tf.concat([ids[1:], next_id], axis=0)  # (<= T,)
        same_document = tf.concat([docs[1:], next_doc], axis=0) == docs[: tf.size(labels)]
        label_weights = tf.concat([weights[1:], next_weight], axis=0)
        starts = tf.concat([[True], docs[1:] != docs[:-1]], axis=0)
        segment_ids = tf.cumsum(tf.cast(starts, tf.int32))  # 1, 1, 2, 2, 2, 3, ...
        fill = [[0, length - tf.size(ids)]]
        x = {
            "token_ids": tf.pad(ids, fill, constant_values=pad_token_id),
            "padding_mask": tf.pad(tf.ones_like(ids), fill),
            "segment_ids": tf.pad(segment_ids, fill),
        }
        label_fill = [[0, length - tf.size(labels)]]
        y = tf.pad(labels, label_fill, constant_values=pad_token_id)
        weights = tf.pad(tf.cast(same_document, tf.float32) * label_weights, label_fill)
        x = {k: tf.ensure_shape(v, [length]) for k, v in x.items()}
        return x, tf.ensure_shape(y, [length]), tf.ensure_shape(weights, [length])

    return windows.map(to_example)
