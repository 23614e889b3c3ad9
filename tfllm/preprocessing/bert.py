"""BERT inputs: packed segments for classification, dynamic masking for pretraining."""

import random

import keras
import tensorflow as tf
import tensorflow_text as tf_text

from tfllm.preprocessing import masking
from tfllm.preprocessing.base import SegmentPreprocessor, pad, require_token_id, unbatch_like


@keras.saving.register_keras_serializable(package="tfllm")
class BertPreprocessor(SegmentPreprocessor):
    """Text (or text pairs) -> `[CLS] a [SEP] (b [SEP])`, padded, for BERT classifiers.

    Args:
        tokenizer: a tokenizer with `[CLS]`/`[SEP]` (or BOS/EOS) ids; pads with `[PAD]`'s
            id (0 when it has none).
        sequence_length: length of every output; longer inputs are trimmed round robin,
            so a pair keeps balanced halves.

    Call arguments:
        x: strings `(B,)` (or `()`), or a tuple `(text_a, text_b)` of them.
        y, sample_weight: passed through unchanged.

    Returns:
        `x` = dict of `token_ids`, `segment_ids` (0 for `a`, 1 for `b`), `padding_mask`,
        each int32 `(B, sequence_length)`; `(x, y)` or `(x, y, sample_weight)` when given.

    Example:
    >>> vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "cat", "sat"]
    >>> preprocessor = BertPreprocessor(tfllm.tokenizers.WordPieceTokenizer(vocabulary), 8)
    >>> preprocessor("a cat sat")["token_ids"]  # [CLS] a cat sat [SEP] [PAD]...
    <tf.Tensor: shape=(8,), dtype=int32, numpy=array([2, 4, 5, 6, 3, 0, 0, 0], dtype=int32)>
    >>> dataset = tf.data.Dataset.from_tensor_slices(((["a cat", "sat"], ["cat sat", "a"]), [1, 0]))
    >>> dataset = dataset.batch(32).map(preprocessor)  # ((premise, hypothesis), label)
    >>> x, y = next(iter(dataset))
    >>> x["token_ids"][0].numpy().tolist(), x["segment_ids"][0].numpy().tolist()
    ([2, 4, 5, 3, 5, 6, 3, 0], [0, 0, 0, 0, 1, 1, 1, 0])
    """

    def call(self, x, y=None, sample_weight=None):
        ids, segment_ids, batched = self.pack(x)
        token_ids, padding_mask = pad(ids, self.sequence_length, self.pad_token_id)
        segment_ids, _ = pad(segment_ids, self.sequence_length, 0)
        x = {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}
        return keras.utils.pack_x_y_sample_weight(unbatch_like(x, batched), y, sample_weight)


@keras.saving.register_keras_serializable(package="tfllm")
class MaskedLMPreprocessor(SegmentPreprocessor):
    """Text (or pairs) -> BERT inputs with fresh random masks on every call.

    Selection (tensorflow-text `RandomItemSelector`): `ceil(mask_rate * n)` of the `n`
    non-special tokens of a row (words, with `whole_word_masking`), at most
    `max_predictions_per_seq`; `[CLS]`, `[SEP]`, `[PAD]` and `[MASK]` are never chosen.
    Each chosen piece becomes `[MASK]` (`mask_token_rate`), a random non-special token
    (`random_token_rate`) or stays as it is (the rest). With `whole_word_masking`, pieces
    are grouped into words by `tokenizer.word_start_mask()` and all pieces of a chosen
    word are predicted; a row whose chosen words have more than `max_predictions_per_seq`
    pieces drops its last chosen words.

    Args:
        tokenizer: a tokenizer with `[CLS]`, `[SEP]` and `[MASK]` ids.
        sequence_length: length of `token_ids`, `segment_ids`, `padding_mask`.
        mask_rate: share of tokens (or words) chosen for prediction.
        max_predictions_per_seq: `P`, length of `mask_positions` and the labels.
        whole_word_masking: choose whole words instead of single pieces.
        mask_token_rate, random_token_rate: how chosen pieces are replaced (80/10/10).
        seed: makes the masks reproducible; `None` draws one from Python's `random`
            (which `keras.utils.set_random_seed` seeds).

    Call arguments:
        x: strings `(B,)` (or `()`), or a tuple `(text_a, text_b)` of them.
        y: optional next-sentence label `(B,)` (1 = `text_b` is a random sentence).
        sample_weight: optional next-sentence weights `(B,)`; needs `y`.

    Returns:
        `(x, y, sample_weight)`. `x`: `token_ids`, `segment_ids`, `padding_mask` int32
        `(B, sequence_length)` and `mask_positions` int32 `(B, P)` (0-padded). Without a
        `y` argument, `y` = original ids at `mask_positions` int32 `(B, P)` (0-padded) and
        `sample_weight` float32 `(B, P)`: 1 for real predictions, 0 for padding. With it,
        `y = {"mlm": ids (B, P), "nsp": label (B,)}` and
        `sample_weight = {"mlm": (B, P), "nsp": (B,) ones or the given weights}`.

    Example:
    >>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(
    ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "sat"])
    >>> preprocessor = MaskedLMPreprocessor(tokenizer, 8, max_predictions_per_seq=2, seed=0)
    >>> texts = tf.data.Dataset.from_tensor_slices(["a cat sat", "the cat"])
    >>> dataset = texts.batch(32).map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
    >>> x, y, sample_weight = next(iter(dataset))
    >>> sorted(x), tuple(y.shape)  # y: the ids at `mask_positions`
    (['mask_positions', 'padding_mask', 'segment_ids', 'token_ids'], (2, 2))
    >>> sample_weight.numpy().tolist()  # ceil(0.15 * 3) = 1 prediction per row
    [[1.0, 0.0], [1.0, 0.0]]
    """

    def __init__(
        self,
        tokenizer,
        sequence_length: int,
        mask_rate: float = 0.15,
        max_predictions_per_seq: int = 20,
        whole_word_masking: bool = False,
        mask_token_rate: float = 0.8,
        random_token_rate: float = 0.1,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(tokenizer, sequence_length, **kwargs)
        if not 0.0 < mask_rate <= 1.0:
            raise ValueError(f"`mask_rate` must be in (0, 1]. Received: {mask_rate!r}")
        if not isinstance(max_predictions_per_seq, int) or max_predictions_per_seq < 1:
            raise ValueError(
                f"`max_predictions_per_seq` must be an int >= 1. "
                f"Received: {max_predictions_per_seq!r}"
            )
        rates = (mask_token_rate, random_token_rate)
        if min(rates) < 0 or sum(rates) > 1:
            raise ValueError(
                "`mask_token_rate` and `random_token_rate` must be >= 0 and sum to <= 1. "
                f"Received: {mask_token_rate!r} and {random_token_rate!r}"
            )
        self.mask_rate = mask_rate
        self.max_predictions_per_seq = max_predictions_per_seq
        self.whole_word_masking = whole_word_masking
        self.mask_token_rate = mask_token_rate
        self.random_token_rate = random_token_rate
        self.seed = seed
        self.mask_token_id = require_token_id(tokenizer, "mask_token_id")
        specials = [self.start_token_id, self.end_token_id, self.pad_token_id, self.mask_token_id]
        self._special_ids = tf.constant(sorted(set(specials)), tf.int32)
        known = {getattr(tokenizer, n, None) for n in ("unk_token_id", "bos_token_id")}
        excluded = set(specials) | {i for i in known if i is not None}
        replacements = [i for i in range(tokenizer.vocabulary_size()) if i not in excluded]
        if not replacements:
            raise ValueError("`tokenizer` has no ordinary tokens to use as random tokens.")
        self._mask_seed = seed if seed is not None else random.randrange(2**62)
        self._generator = masking.make_generator(self._mask_seed)
        self._selector = tf_text.RandomItemSelector(
            max_selections_per_batch=max_predictions_per_seq,
            selection_rate=mask_rate,
            unselectable_ids=sorted(set(specials)),
            shuffle_fn=masking.shuffle_fn(self._generator),
        )
        self._chooser = masking.GeneratorMaskValues(
            self._generator, self.mask_token_id, replacements, mask_token_rate, random_token_rate
        )
        if whole_word_masking:
            self._word_start = tf.constant(tokenizer.word_start_mask(), tf.bool)

    def restart_masks(self, index) -> None:
        """Makes the next call's masks depend on the seed and `index` only, not on calls
        before it (an int64 scalar, e.g. the batch number, in a sequential `map`).

        Pipelines that call it before every batch draw the same masks for a batch however
        they got there: a run resumed from a checkpointed iterator replays them.
        """
        counter = tf.stack([tf.constant(0, tf.int64), tf.cast(index, tf.int64)])
        self._generator.reset_from_key_counter(self._mask_seed, counter)

    def call(self, x, y=None, sample_weight=None):
        if sample_weight is not None and y is None:
            raise ValueError("`sample_weight` (next-sentence weights) needs `y` (NSP labels).")
        ids, segment_ids, batched = self.pack(x)  # ragged (B, (n))
        items = ids
        if self.whole_word_masking:
            items, word_index = masking.group_words(ids, self._word_start, self._special_ids)
        masked, positions, labels = tf_text.mask_language_model(
            items, self._selector, self._chooser
        )  # (B, (n)), (B, (k)), (B, (k))
        if self.whole_word_masking:
            masked, positions, labels = masking.keep_whole_words(
                masked, ids, positions, labels, word_index, self.max_predictions_per_seq
            )
        token_ids, padding_mask = pad(masked, self.sequence_length, self.pad_token_id)
        segment_ids, _ = pad(segment_ids, self.sequence_length, 0)
        shape = [None, self.max_predictions_per_seq]
        weights = labels.with_flat_values(tf.ones_like(labels.flat_values, tf.float32))
        x = {
            "token_ids": token_ids,
            "segment_ids": segment_ids,
            "padding_mask": padding_mask,
            "mask_positions": tf.cast(positions.to_tensor(0, shape=shape), tf.int32),
        }
        mlm_labels = labels.to_tensor(0, shape=shape)
        mlm_weights = weights.to_tensor(0.0, shape=shape)
        x, mlm_labels, mlm_weights = unbatch_like((x, mlm_labels, mlm_weights), batched)
        if y is None:
            return x, mlm_labels, mlm_weights
        nsp_weights = tf.ones_like(y, tf.float32) if sample_weight is None else sample_weight
        return x, {"mlm": mlm_labels, "nsp": y}, {"mlm": mlm_weights, "nsp": nsp_weights}

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            mask_rate=self.mask_rate,
            max_predictions_per_seq=self.max_predictions_per_seq,
            whole_word_masking=self.whole_word_masking,
            mask_token_rate=self.mask_token_rate,
            random_token_rate=self.random_token_rate,
            seed=self.seed,
        )
        return config
