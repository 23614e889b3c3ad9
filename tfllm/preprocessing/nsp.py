"""Next-sentence-prediction pairs for BERT pretraining, as a streaming tf.data transform."""

import tensorflow as tf

NUM_CANDIDATES = 2  # random sentences offered per pair; the first from another document wins


def _sentence_stream(documents: tf.data.Dataset) -> tf.data.Dataset:
    """`(document index, text)` int64, string for every sentence."""
    spec = documents.element_spec
    if isinstance(spec, tf.RaggedTensorSpec) and spec.shape.rank == 1:  # rows of a ragged
        documents = documents.map(lambda d: tf.convert_to_tensor(d))
        spec = documents.element_spec
    if not isinstance(spec, tf.TensorSpec) or spec.dtype != tf.string or spec.shape.rank > 1:
        raise ValueError(
            "`documents` must hold 1-D string tensors (the sentences of a document) or "
            f"scalar strings (sentences, an empty one ends a document). Received: {spec}"
        )
    if spec.shape.rank == 1:

        def sentences(index, document):
            n = tf.size(document, out_type=tf.int64)
            return tf.data.Dataset.from_tensor_slices((tf.fill([n], index), document))

        return documents.enumerate().flat_map(sentences)

    def number(document, text):  # state: the document's index
        ends = tf.equal(text, "")
        return tf.where(ends, document + 1, document), (ends, document, text)

    numbered = documents.scan(tf.constant(0, tf.int64), number)
    return numbered.filter(lambda ends, *_: ~ends).map(lambda _, *rest: rest)


def nsp_pairs(
    documents: tf.data.Dataset, seed: int | None = None, buffer_size: int = 10_000
) -> tf.data.Dataset:
    r"""Sentence pairs with a 50% chance that the second one is random, as in BERT.

    For every two consecutive sentences `(a, b)` of a document, a coin decides whether
    `b` is kept (`is_random_next = 0`) or replaced by a random sentence
    (`is_random_next = 1`). Random sentences come from a shuffle buffer of `buffer_size`
    sentences fed by a second, faster pass over `documents`; of `NUM_CANDIDATES` drawn,
    those equal to `a` or `b` are left out, and the first from another document is used
    (the same document only when none is). When all are left out, `b` is kept and
    labelled 0. Coins and buffer are reshuffled every epoch (dynamic pairs), reproducibly
    with `seed`. `documents` is read `1 + NUM_CANDIDATES` times over per pass.

    Args:
        documents: dataset of documents, each a 1-D string tensor of its sentences; or of
            scalar sentence strings in order, an empty string ending a document (the
            format of BERT's `create_pretraining_data.py` input).
        seed: makes pairs reproducible.
        buffer_size: sentences in the random-sentence shuffle buffer; larger than a
            document, so that most random sentences come from other documents.

    Returns:
        A dataset of `((text_a, text_b), is_random_next)`, string, string, int32 scalars:
        Keras' `(x, y)` layout, so that `MaskedLMPreprocessor` maps it directly to
        `(x, {"mlm": ids, "nsp": is_random_next}, {"mlm": weights, "nsp": 1.0})`.

    Example:
    >>> from pathlib import Path
    >>> lines = ["A cat sat.", "It purred.", "It slept.", "", "Dogs bark.", "Loudly."]
    >>> _ = Path("sentences.txt").write_text("\n".join(lines))  # two documents
    >>> pairs = nsp_pairs(tf.data.TextLineDataset("sentences.txt"), seed=1)
    >>> [a.decode() for (a, b), _ in pairs.as_numpy_iterator()]  # b: next, or random
    ['A cat sat.', 'It purred.', 'Dogs bark.']
    >>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(
    ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "sat", "."])
    >>> dataset = pairs.batch(32).map(tfllm.preprocessing.MaskedLMPreprocessor(tokenizer, 16))
    >>> x, y, sample_weight = dataset.element_spec  # every pass draws new pairs and masks
    >>> sorted(y), sorted(sample_weight)
    (['mlm', 'nsp'], ['mlm', 'nsp'])
    """
    sentences = _sentence_stream(documents)

    def pair(previous, sentence):  # state: previous (document, text)
        same = tf.equal(previous[0], sentence[0])
        return sentence, (same, previous[0], previous[1], sentence[1])

    start = (tf.constant(-1, tf.int64), tf.constant(""))
    pairs = sentences.scan(start, pair).filter(lambda same, *_: same)
    pairs = pairs.map(lambda _, *rest: rest)  # (document, a, b)
    candidate_seed, coin_seed = (None, None) if seed is None else (seed, seed + 1)
    candidates = sentences.repeat().shuffle(buffer_size, seed=candidate_seed)
    candidates = candidates.batch(NUM_CANDIDATES, drop_remainder=True)
    coins = tf.data.Dataset.random(seed=coin_seed, rerandomize_each_iteration=True)

    def choose(pair, candidates, coin):
        document, a, b = pair
        other_documents, other_texts = candidates  # (NUM_CANDIDATES,) each
        allowed = (other_texts != a) & (other_texts != b)
        other_document = other_documents != document
        # The first allowed candidate from another document, else the first allowed one.
        pick = tf.argmax(tf.cast(allowed, tf.int32) * (1 + tf.cast(other_document, tf.int32)))
        use_random = (coin % 2 == 1) & allowed[pick]
        text_b = tf.where(use_random, other_texts[pick], b)
        return (a, text_b), tf.cast(use_random, tf.int32)

    return tf.data.Dataset.zip(pairs, candidates, coins).map(choose)
