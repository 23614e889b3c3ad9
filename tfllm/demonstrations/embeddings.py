"""Sentence embeddings for demonstration selection: encoder, on-disk cache, top-k search.

`SentenceEncoder` turns a tfllm `BertBackbone` and its tokenizer into the
sentence-transformers embedding (mean of the real tokens' `sequence_output`, L2
normalised). `embed_pool` embeds a pool once and caches it on disk, keyed by a hash of the
encoder and the texts; `top_k_similar` searches it with matrix products, in chunks.

Example:
>>> from tfllm import assets
>>> from tfllm.models import BertBackbone
>>> from tfllm.tokenizers import WordPieceTokenizer
>>> path = assets.minilm_path()
>>> backbone = BertBackbone.from_huggingface(path)
>>> encoder = SentenceEncoder(backbone, WordPieceTokenizer(path / "vocab.txt"))
>>> embeddings = embed_pool(encoder, ["a fine film", "dull and long"])  # cached on disk
>>> embeddings.shape
(2, 384)
>>> indices, scores = top_k_similar(encoder(["a great movie"]), embeddings, k=1)
>>> indices  # "a fine film"
array([[0]])
"""

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfllm import assets
from tfllm.io import atomic_path
from tfllm.preprocessing import BertPreprocessor


def check_texts(texts, argument: str) -> list[str]:
    """`texts` as a list of str; `TypeError` for a bare string or a non-string entry."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"`{argument}` must be a list of strings. Received: {texts!r:.100}")
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"`{argument}` entries must be str. Received: {text!r:.100}")
    return list(texts)


class SentenceEncoder:
    """Strings -> L2-normalised mean-pooled embeddings `(N, hidden_dim)` float32 (numpy).

    Texts are sorted by length and batched through tf.data; each batch is cut to its
    longest row, so short texts cost little.

    Args:
        backbone: a tfllm `BertBackbone` (any model taking `token_ids`, `segment_ids`,
            `padding_mask` and returning `sequence_output`).
        tokenizer: its tfllm tokenizer (with `[CLS]` and `[SEP]`).
        sequence_length: longer texts are truncated.
        batch_size: texts per forward pass.

    Example:
    >>> from tfllm.models import BertBackbone
    >>> tokenizer = tfllm.tokenizers.WordPieceTokenizer(
    ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "fine", "film", "dull"])
    >>> backbone = BertBackbone.from_preset("bert_tiny", vocabulary_size=8)
    >>> encoder = SentenceEncoder(backbone, tokenizer, sequence_length=128)
    >>> embeddings = encoder(["a fine film", "dull"])
    >>> embeddings.shape, np.linalg.norm(embeddings, axis=1).round(4)  # (2, hidden_dim), unit
    ((2, 64), array([1., 1.], dtype=float32))
    """

    def __init__(self, backbone, tokenizer, sequence_length: int = 128, batch_size: int = 64):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an int >= 1. Received: {batch_size!r}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.preprocessor = BertPreprocessor(tokenizer, sequence_length)
        self.batch_size = batch_size
        spec = tf.TensorSpec([None, None], tf.int32)
        self.embed_batch = tf.function(
            self._mean_pool,
            input_signature=[{"token_ids": spec, "segment_ids": spec, "padding_mask": spec}],
        )

    def _mean_pool(self, inputs):
        """`embed_batch`: model inputs `(B, T)` -> embeddings `(B, D)`, one trace for all T."""
        sequence = self.backbone(inputs, training=False)["sequence_output"]  # (B, T, D)
        mask = tf.cast(inputs["padding_mask"], sequence.dtype)[:, :, None]  # (B, T, 1)
        mean = tf.reduce_sum(sequence * mask, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1.0)
        return tf.math.l2_normalize(tf.cast(mean, tf.float32), axis=-1)  # (B, D)

    def _trimmed_batch(self, strings):
        x = self.preprocessor(strings)
        length = tf.reduce_max(tf.reduce_sum(x["padding_mask"], axis=1))
        return {key: value[:, :length] for key, value in x.items()}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = check_texts(texts, "texts")
        if not texts:
            return np.zeros((0, self.backbone.hidden_dim), np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        dataset = (
            tf.data.Dataset.from_tensor_slices([texts[i] for i in order])
            .batch(self.batch_size)
            .map(self._trimmed_batch, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE)
        )
        sorted_embeddings = np.concatenate([self.embed_batch(x).numpy() for x in dataset])
        embeddings = np.empty_like(sorted_embeddings)
        embeddings[order] = sorted_embeddings
        return embeddings

    def fingerprint(self) -> str:
        """Hash of the backbone's config and weights and the tokenizer's config."""
        digest = hashlib.sha256()
        configs = [self.backbone.get_config(), self.preprocessor.get_config()]
        digest.update(json.dumps(configs, sort_keys=True, default=str).encode())
        for weight in self.backbone.weights:
            digest.update(weight.path.encode())
            digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
        return digest.hexdigest()


def as_encoder(encoder, tokenizer=None) -> Callable[[list[str]], np.ndarray]:
    """A callable `list[str] -> (N, D)`: `encoder` itself, or a backbone + `tokenizer`."""
    if tokenizer is not None:
        return SentenceEncoder(encoder, tokenizer)
    if not callable(encoder) or hasattr(encoder, "weights"):  # a bare Keras model
        raise TypeError(
            "`encoder` must be a callable mapping a list of strings to a 2-D array, or a "
            f"backbone given with its `tokenizer`. Received: {type(encoder).__name__}"
        )
    return encoder


def encode(encoder, texts: list[str], argument: str = "texts") -> np.ndarray:
    """`encoder(texts)` checked to be `(len(texts), D)` finite floats, as float32."""
    embeddings = np.asarray(encoder(texts), dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(texts):
        raise ValueError(
            f"`encoder` must return a 2-D array with one row per text ({len(texts)} "
            f"{argument}). Received: shape {embeddings.shape}"
        )
    if not np.isfinite(embeddings).all():
        raise ValueError(f"`encoder` returned non-finite values for the {argument}.")
    return embeddings


def embed_pool(encoder, texts: list[str], cache: bool = True, cache_dir=None) -> np.ndarray:
    """Embeddings `(N, D)` float32 of `texts`, computed once and cached on disk.

    The cache file is named by a hash of `encoder.fingerprint()` and the texts; encoders
    without a `fingerprint` method are not cached. Writes are atomic.

    Args:
        encoder: a `SentenceEncoder` or any callable `list[str] -> (N, D)`.
        texts: the pool.
        cache: read and write the cache.
        cache_dir: cache folder; default `tfllm.assets.cache_dir() / "embeddings"`.
    """
    texts = check_texts(texts, "texts")
    if not cache or not hasattr(encoder, "fingerprint"):
        return encode(encoder, texts)
    digest = hashlib.sha256(encoder.fingerprint().encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    folder = Path(cache_dir) if cache_dir is not None else assets.cache_dir() / "embeddings"
    path = folder / f"{digest.hexdigest()}.npy"
    if path.is_file():
        return np.load(path)
    embeddings = encode(encoder, texts)
    with atomic_path(path) as temp:
        np.save(temp, embeddings)
    return embeddings


def top_k_similar(queries, pool, k: int, chunk_size: int = 1 << 24):
    """The `k` pool rows with the largest dot product with each query, best first.

    `queries @ pool.T` is computed for as many queries at a time as keep the score
    block under `chunk_size` entries, then `tf.math.top_k` (ties: lower index first).

    Args:
        queries: `(Q, D)`; pool: `(N, D)` (normalised rows: cosine similarity).
        k: results per query, `1 <= k <= N`.

    Returns:
        `(indices (Q, k) int64, scores (Q, k) float32)` numpy arrays.
    """
    queries = tf.convert_to_tensor(queries, tf.float32)
    pool = tf.convert_to_tensor(pool, tf.float32)
    n = int(pool.shape[0])
    if not 1 <= k <= n:
        raise ValueError(f"`k` must be in [1, {n}] (the pool size). Received: {k!r}")
    step = max(1, chunk_size // n)
    indices, scores = [], []
    for start in range(0, int(queries.shape[0]), step):
        block = tf.matmul(queries[start : start + step], pool, transpose_b=True)  # (q, N)
        values, ids = tf.math.top_k(block, k=k)
        indices.append(ids.numpy().astype(np.int64))
        scores.append(values.numpy())
    if not indices:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.concatenate(indices), np.concatenate(scores)
