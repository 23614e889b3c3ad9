"""Dynamic masking for masked-LM pretraining, on tensorflow-text's `mask_language_model`.

Randomness comes from a `tf.random.Generator` (a state variable on the CPU), not from
`tf.random.uniform`: op-seeded random ops inside `Dataset.map` restart their sequence on
every new iterator, so under `keras.utils.set_random_seed` every epoch would see the same
masks. The generator's state advances across epochs, `tf.function` calls and parallel
`map` calls, and a `seed` makes the sequence reproducible.
"""

import tensorflow as tf
import tensorflow_text as tf_text


def make_generator(seed: int) -> tf.random.Generator:
    # On the CPU: tf.data functions run there and cannot capture GPU resources.
    with tf.device("/cpu:0"):
        return tf.random.Generator.from_seed(seed)


def shuffle_fn(generator: tf.random.Generator):
    """A `tf.random.shuffle` replacement for `RandomItemSelector` drawing from `generator`."""

    def shuffle(values):
        keys = generator.uniform(tf.shape(values)[:1])
        return tf.gather(values, tf.argsort(keys))

    return shuffle


class GeneratorMaskValues(tf_text.MaskValuesChooser):
    """80/10/10 replacement: `[MASK]`, a random non-special token, or the token itself.

    As `tf_text.MaskValuesChooser` (each selected piece decides on its own), but drawing
    from `generator`, and random tokens come from `replacement_ids` (no specials).
    """

    def __init__(
        self, generator, mask_token_id, replacement_ids, mask_token_rate, random_token_rate
    ):
        super().__init__(len(replacement_ids), mask_token_id, mask_token_rate, random_token_rate)
        self._generator = generator
        self._rates = (mask_token_rate, mask_token_rate + random_token_rate)
        self._replacement_ids = tf.constant(replacement_ids, tf.int32)

    def get_mask_values(self, masked_lm_ids: tf.RaggedTensor) -> tf.RaggedTensor:
        ids = masked_lm_ids.flat_values  # (M,) original ids of the selected pieces
        draw = self._generator.uniform(tf.shape(ids))
        index = self._generator.uniform(tf.shape(ids), maxval=self.vocab_size, dtype=tf.int32)
        random_ids = tf.gather(self._replacement_ids, index)
        mask_below, random_below = self._rates
        values = tf.where(
            draw < mask_below,
            tf.cast(self.mask_token, ids.dtype),
            tf.where(draw < random_below, random_ids, ids),
        )
        return masked_lm_ids.with_flat_values(values)


def group_words(ids: tf.RaggedTensor, word_start: tf.Tensor, special_ids: tf.Tensor):
    """`(B, (n))` ids -> `(B, (words), (pieces))` for whole-word masking.

    A piece starts a word when `word_start[id]` says so, when it is a special token, when
    it follows one, or when it opens its row.

    Returns:
        the 3-D ragged ids and `(N,)` int64 word index (over the batch) of every piece.
    """
    flat = ids.flat_values  # (N,)
    special = tf.reduce_any(flat[:, None] == special_ids[None, :], axis=-1)
    first = tf.range(tf.size(flat, out_type=tf.int64)) == tf.gather(
        ids.row_starts(), ids.value_rowids()
    )
    after_special = tf.concat([[True], special[:-1]], axis=0)
    starts = tf.gather(word_start, flat) | special | after_special | first
    word_index = tf.cumsum(tf.cast(starts, tf.int64)) - 1  # (N,)
    pieces = tf.RaggedTensor.from_value_rowids(
        flat, word_index, nrows=tf.reduce_sum(tf.cast(starts, tf.int64))
    )
    words_per_row = tf.math.unsorted_segment_sum(
        tf.cast(starts, tf.int64), ids.value_rowids(), ids.nrows()
    )
    return tf.RaggedTensor.from_row_lengths(pieces, words_per_row), word_index


def keep_whole_words(masked, original, positions, labels, word_index, limit: int):
    """Cuts whole-word predictions to at most `limit` pieces per row, dropping whole words.

    The selector caps the number of *words*; a row whose chosen words have more than
    `limit` pieces keeps its first words in order and gets the originals back elsewhere.

    Args:
        masked, original: ragged `(B, (n))` ids after / before masking.
        positions, labels: ragged `(B, (k))` sorted masked positions and original ids.
        word_index: `(N,)` word of every piece (from `group_words`).
    """
    row_start = tf.gather(original.row_starts(), positions.value_rowids())
    flat_position = positions.flat_values + row_start  # (K,) into the flat ids
    word = tf.gather(word_index, flat_position)
    rank = tf.range(tf.size(word, out_type=tf.int64)) - tf.gather(
        positions.row_starts(), positions.value_rowids()
    )  # (K,) index within its row's predictions
    num_words = tf.reduce_max(word_index) + 1
    last_rank = tf.gather(tf.math.unsorted_segment_max(rank, word, num_words), word)
    keep = last_rank < limit
    dropped = tf.boolean_mask(flat_position, ~keep)[:, None]
    restored = tf.tensor_scatter_nd_update(
        masked.flat_values, dropped, tf.gather_nd(original.flat_values, dropped)
    )
    return (
        masked.with_flat_values(restored),
        tf.ragged.boolean_mask(positions, positions.with_flat_values(keep)),
        tf.ragged.boolean_mask(labels, labels.with_flat_values(keep)),
    )
