"""Deduplication: exact (normalized-text hash), near-duplicate MinHash-LSH, decontamination.

The MinHash is vectorized end to end in numpy: a text is lowercased and UTF-8 encoded
once, words are found and hashed from the bytes with a positional polynomial hash
(mod 2^64), `ngram` consecutive word hashes are mixed into one 64-bit key (decontamination
compares these whole) whose high 32 bits are the MinHash shingle hash, and all `num_perm`
permutations are multiply-add-shift hashes `((a * x + b) mod 2^64) >> 32` over
a whole batch of documents at once, reduced per document with `np.minimum.reduceat`. Words
are maximal runs of letters/digits; every CJK or kana character is a word of its own, so
text written without spaces is shingled by characters.

Near-duplicate clusters: LSH over `bands` x `rows` of the signature proposes candidate
pairs (documents that agree on a whole band), a pair is kept when its estimated Jaccard
similarity (the fraction of equal MinHash values) reaches `threshold`, and kept pairs are
merged into connected components.

Example:
    >>> near_duplicate_clusters(["a b c d e f", "a b c d e f", "x y z"], threshold=0.8)
    [0, 0, 1]
"""

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

_U64 = np.uint64
_BASE = _U64(0x100000001B3)  # Odd, hence invertible mod 2^64.
_BASE_INV = _U64(pow(0x100000001B3, -1, 2**64))
_SHINGLE_MIX = np.random.default_rng(20261201).integers(1, 2**63, size=64, dtype=np.uint64) | 1
_PUNCT = re.compile(r"[^\w\s]+")
_SPACES = re.compile(r"\s+")

# Byte classes: 0 separator, 1 word byte, 2 lead byte of a CJK/kana character (U+3040..U+9FFF).
_BYTE_CLASS = np.zeros(256, dtype=np.uint8)
_BYTE_CLASS[[ord(c) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]] = 1
_BYTE_CLASS[0x80:0xC0] = 1  # Continuation bytes: part of the character they continue.
_BYTE_CLASS[0xC2:0xE3] = 1  # Leads of non-CJK letters (Latin, Greek, Cyrillic, ...).
_BYTE_CLASS[0xE3:0xEA] = 2
_BYTE_CLASS[0xEA:0xF5] = 1


def normalize_for_hash(text: str) -> str:
    """NFKC, lowercase, punctuation dropped, whitespace collapsed: the exact-dedup key text."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACES.sub(" ", _PUNCT.sub(" ", text)).strip()


def exact_hash(text: str) -> str:
    """16-hex-digit BLAKE2b of `normalize_for_hash(text)`; equal for trivially differing copies."""
    return hashlib.blake2b(normalize_for_hash(text).encode(), digest_size=8).hexdigest()


def word_hashes(text: str) -> np.ndarray:
    """64-bit hashes of the words of `text`, in order: `(num_words,)` uint64.

    Deterministic across processes and machines (no salted `hash()`).
    """
    data = np.frombuffer(text.lower().encode("utf-8"), dtype=np.uint8)
    if data.size == 0:
        return np.zeros(0, dtype=_U64)
    cls = _BYTE_CLASS[data]
    cjk = cls == 2
    in_cjk = cjk.copy()  # A CJK character is its lead byte plus two continuation bytes.
    in_cjk[1:] |= cjk[:-1]
    in_cjk[2:] |= cjk[:-2]
    word = cls > 0
    prev_word = np.concatenate([[False], word[:-1]])
    prev_in_cjk = np.concatenate([[False], in_cjk[:-1]])
    starts = np.flatnonzero(word & (~prev_word | cjk | (prev_in_cjk & ~in_cjk)))
    if starts.size == 0:
        return np.zeros(0, dtype=_U64)
    next_word = np.concatenate([word[1:], [False]])
    next_start = np.zeros(data.size, dtype=bool)
    next_start[starts[1:] - 1] = True
    ends = np.flatnonzero(word & (~next_word | next_start)) + 1
    # Positional polynomial hash: sum(b_j * B^j) over the word, shifted back by B^-start.
    powers, inverse = _powers(data.size + 1)
    prefix = np.zeros(data.size + 1, dtype=_U64)
    np.cumsum((data.astype(_U64) + _U64(1)) * powers[: data.size], dtype=_U64, out=prefix[1:])
    return (prefix[ends] - prefix[starts]) * inverse[starts] + (ends - starts).astype(_U64)


_POWERS: list[np.ndarray] = []


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """`B^j` and `B^-j` mod 2^64 for `j < n` (grown by doubling, cached per process)."""
    if not _POWERS or _POWERS[0].size < n:
        size = max(n, 2 * _POWERS[0].size if _POWERS else 1 << 16)
        powers = np.cumprod(np.r_[_U64(1), np.full(size - 1, _BASE)], dtype=_U64)
        inverse = np.cumprod(np.r_[_U64(1), np.full(size - 1, _BASE_INV)], dtype=_U64)
        _POWERS[:] = [powers, inverse]
    return _POWERS[0], _POWERS[1]


def ngram_keys(text: str, ngram: int = 13) -> np.ndarray:
    """64-bit keys of the word `ngram`-grams of `text` (one for a shorter, non-empty text).

    The full width matters for set membership: against `M` keys, `S` shingles of a clean
    text match by chance `S * M / 2^64` times (with 32 bits, ~0.7 for 3,000 words and 10^6).
    """
    words = word_hashes(text)
    if words.size == 0:
        return np.zeros(0, dtype=_U64)
    k = min(ngram, words.size)
    count = words.size - k + 1
    mixed = np.zeros(count, dtype=_U64)
    for i in range(k):  # Order matters: each position gets its own odd multiplier.
        mixed += words[i : i + count] * _SHINGLE_MIX[i % _SHINGLE_MIX.size]
    return mixed


def shingle_hashes(text: str, ngram: int = 5) -> np.ndarray:
    """32-bit hashes (the well-mixed high half of `ngram_keys`): MinHash and statistics."""
    return ngram_keys(text, ngram) >> _U64(32)


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**32, size=num_perm, dtype=np.uint32) | np.uint32(1)
    b = rng.integers(0, 2**32, size=num_perm, dtype=np.uint32)
    return a, b


def minhash_signatures(
    texts: Sequence[str], num_perm: int = 112, ngram: int = 5, seed: int = 1
) -> np.ndarray:
    """MinHash signatures of `texts`: `(len(texts), num_perm)` uint32.

    Permutation `k` is `x -> (a_k * x + b_k) mod 2^32` (odd `a_k`, a bijection) over the
    32-bit shingle hashes; the tests check that equal-value fractions estimate the true
    Jaccard similarity without bias. An empty text gets all `0xFFFFFFFF` and matches nothing
    in `near_duplicate_clusters`.

    Example:
        >>> minhash_signatures(["the cat sat on the mat today"], num_perm=4).shape
        (1, 4)
    """
    if num_perm < 1:
        raise ValueError(f"`num_perm` must be a positive integer. Received: num_perm={num_perm}")
    if ngram < 1:
        raise ValueError(f"`ngram` must be a positive integer. Received: ngram={ngram}")
    a, b = _permutations(num_perm, seed)
    out = np.full((num_perm, len(texts)), 0xFFFFFFFF, dtype=np.uint32)
    shingles = [shingle_hashes(t, ngram).astype(np.uint32) for t in texts]
    sizes = np.array([s.size for s in shingles], dtype=np.int64)
    nonempty = np.flatnonzero(sizes)
    # Batches of ~4k shingles keep the (num_perm, shingles) block in the CPU cache.
    start = 0
    while start < nonempty.size:
        cum = np.cumsum(sizes[nonempty[start:]])
        end = start + max(1, int(np.searchsorted(cum, 4096, side="right")))
        docs = nonempty[start:end]
        hashed = np.multiply.outer(a, np.concatenate([shingles[d] for d in docs]))
        hashed += b[:, None]  # (num_perm, S), wraps mod 2^32
        offsets = np.concatenate([[0], np.cumsum(sizes[docs])[:-1]])
        out[:, docs] = np.minimum.reduceat(hashed, offsets, axis=1)
        start = end
    return np.ascontiguousarray(out.T)


def _bands_for(num_perm: int, bands: int | None) -> int:
    bands = bands if bands is not None else (14 if num_perm == 112 else max(1, num_perm // 8))
    if bands < 1 or num_perm % bands:
        raise ValueError(f"`bands` must divide `num_perm` ({num_perm}). Received: bands={bands}")
    return bands


def band_keys(signatures: np.ndarray, bands: int) -> np.ndarray:
    """One 64-bit key per (document, band): `(N, bands)` uint64 from `(N, num_perm)` uint32."""
    n, num_perm = signatures.shape
    rows = num_perm // bands
    parts = signatures.reshape(n, bands, rows).astype(_U64)
    mix = _SHINGLE_MIX[:rows]
    return (parts * mix).sum(axis=2, dtype=_U64) ^ (parts[:, :, 0] << _U64(32))


def candidate_pairs(signatures: np.ndarray, bands: int) -> np.ndarray:
    """Pairs `(i, j)`, `i < j`, that share a whole band: `(P, 2)` int64 (a star per bucket)."""
    keys = band_keys(signatures, bands)
    empty = (signatures == 0xFFFFFFFF).all(axis=1)
    pairs = []
    for band in range(bands):
        index = np.flatnonzero(~empty)
        order = index[np.argsort(keys[index, band], kind="stable")]
        sorted_keys = keys[order, band]
        new_group = np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]])
        group_first = order[np.flatnonzero(new_group)][np.cumsum(new_group) - 1]
        member = ~new_group
        pairs.append(np.stack([group_first[member], order[member]], axis=1))
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.sort(pairs, axis=1), axis=0)


def connected_components(num_nodes: int, edges: np.ndarray) -> np.ndarray:
    """Component label of each node (the smallest node index in its component)."""
    labels = np.arange(num_nodes)
    if len(edges) == 0:
        return labels
    u, v = edges[:, 0], edges[:, 1]
    while True:  # Min-label propagation plus pointer jumping: a few rounds in practice.
        low = np.minimum(labels[u], labels[v])
        new = labels.copy()
        np.minimum.at(new, u, low)
        np.minimum.at(new, v, low)
        new = new[new]
        if np.array_equal(new, labels):
            return labels
        labels = new


def near_duplicate_clusters(
    texts: Sequence[str],
    threshold: float = 0.7,
    num_perm: int = 112,
    ngram: int = 5,
    bands: int | None = None,
    seed: int = 1,
) -> list[int]:
    """A cluster id per text; texts in one cluster are near-duplicates (MinHash-LSH).

    Args:
        texts: Documents.
        threshold: Estimated Jaccard similarity of word `ngram`-gram sets at which two
            texts are near-duplicates.
        num_perm: MinHash permutations.
        ngram: Shingle size in words.
        bands: LSH bands (`num_perm / bands` rows each); default 14 for 112 permutations.
        seed: Seed of the permutations.

    Returns:
        `ids[i]` for each text; ids are 0, 1, 2, ... in order of first appearance.

    Example:
        >>> near_duplicate_clusters(["one two three four five six"] * 2 + ["seven"])
        [0, 0, 1]
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"`threshold` must be in (0, 1]. Received: threshold={threshold}")
    bands = _bands_for(num_perm, bands)
    signatures = minhash_signatures(texts, num_perm=num_perm, ngram=ngram, seed=seed)
    pairs = candidate_pairs(signatures, bands)
    if len(pairs):
        similarity = (signatures[pairs[:, 0]] == signatures[pairs[:, 1]]).mean(axis=1)
        pairs = pairs[similarity >= threshold]
    roots = connected_components(len(texts), pairs)
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))  # Renumber clusters by first appearance.
    return rank[inverse].tolist()


def ngram_set(texts: Iterable[str], ngram: int = 13) -> np.ndarray:
    """Sorted unique 64-bit keys of the word `ngram`-grams of `texts` (e.g. evaluation sets)."""
    parts = [ngram_keys(t, ngram) for t in texts]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=_U64)


def contaminated(text: str, eval_ngrams: np.ndarray, ngram: int = 13) -> bool:
    """Whether `text` shares any word `ngram`-gram with `eval_ngrams` (sorted, from `ngram_set`)."""
    if eval_ngrams.dtype != _U64:
        raise TypeError(
            "`eval_ngrams` must be the uint64 keys from `ngram_set`. "
            f"Received: eval_ngrams.dtype={eval_ngrams.dtype}"
        )
    keys = ngram_keys(text, ngram)
    if keys.size == 0 or eval_ngrams.size == 0:
        return False
    # Binary search in the sorted set: O(S log M) per text, no copy of the set.
    at = np.minimum(np.searchsorted(eval_ngrams, keys), eval_ngrams.size - 1)
    return bool((eval_ngrams[at] == keys).any())
