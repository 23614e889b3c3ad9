"""Selectors of in-context demonstrations: the `k` pool examples to show for each query.

Every selector takes the pool (texts, optional labels) when built and answers
`select(queries, k) -> list[list[int]]`: indices into the pool, in prompt order.
`select_scored` also returns each example's usefulness (its similarity to the query; 0
for the random selectors), which `PromptBuilder` uses to drop the least useful examples.

`order` of the similarity-based selectors: `"similar_last"` (default) places the most
similar example last, next to the query (Liu et al. 2022, KATE, found this best);
`"retrieved"` keeps the selector's own order (most similar first; MMR and vote-k: the
order they were picked in).

Example:
>>> pool_texts = ["a tense thriller", "a warm comedy", "a gripping, tense thriller", "a dull drama"]
>>> pool_labels = [1, 1, 1, 0]
>>> words = ["tense", "thriller", "comedy", "gripping", "dull"]
>>> def encoder(texts):  # any callable: strings -> (N, D) array; here word counts
...     return np.array([[text.count(word) for word in words] for text in texts], "float32")
>>> selector = KNNSelector(encoder, pool_texts, pool_labels)
>>> selector.select(["a gripping thriller"], k=2)  # the most similar one last
[[0, 2]]
>>> KNNSelector(encoder, pool_texts, pool_labels, order="retrieved").select(
...     ["a gripping thriller"], k=2)
[[2, 0]]
"""

import logging
from collections.abc import Sequence

import bm25s
import numpy as np

from tfllm.demonstrations.embeddings import (
    as_encoder,
    check_texts,
    embed_pool,
    encode,
    top_k_similar,
)

# bm25s sets its logger to DEBUG at import, which overrides the user's levels for its
# records (its index building logs at DEBUG); back to a library logger's default: inherit.
if logging.getLogger("bm25s").level == logging.DEBUG:
    logging.getLogger("bm25s").setLevel(logging.NOTSET)

ORDERS = ("similar_last", "retrieved")


class Selector:
    """Base: holds and checks the pool; subclasses implement `_select(queries, k)`."""

    def __init__(self, pool_texts: Sequence[str], pool_labels: Sequence | None = None):
        self.pool_texts = check_texts(pool_texts, "pool_texts")
        if not self.pool_texts:
            raise ValueError("`pool_texts` must not be empty (an empty pool).")
        if pool_labels is not None and len(pool_labels) != len(self.pool_texts):
            raise ValueError(
                f"`pool_labels` must have one label per text ({len(self.pool_texts)}). "
                f"Received: {len(pool_labels)} labels"
            )
        self.pool_labels = None if pool_labels is None else list(pool_labels)

    def _check_k(self, k) -> int:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"`k` must be an int >= 1. Received: {k!r}")
        if k > len(self.pool_texts):
            raise ValueError(
                f"`k` must not exceed the pool size {len(self.pool_texts)}. Received: k={k}"
            )
        return int(k)

    def select_scored(self, queries: Sequence[str], k: int):
        """`(indices, scores)`: per query, `k` pool indices in prompt order and usefulness."""
        queries = check_texts(queries, "queries")
        k = self._check_k(k)
        if not queries:
            return [], []
        indices, scores = self._select(queries, k)
        return [list(map(int, row)) for row in indices], [list(map(float, s)) for s in scores]

    def select(self, queries: Sequence[str], k: int) -> list[list[int]]:
        """Per query, `k` indices into the pool in the order to place them in the prompt."""
        return self.select_scored(queries, k)[0]

    def _select(self, queries: list[str], k: int):
        raise NotImplementedError


def _check_order(order: str) -> str:
    if order not in ORDERS:
        raise ValueError(f"`order` must be one of {ORDERS}. Received: {order!r}")
    return order


def _arrange(indices, scores, order: str):
    """Rows best-first -> prompt order: ascending score (best last) or unchanged."""
    indices, scores = np.asarray(indices), np.asarray(scores, np.float32)
    if order == "retrieved":
        return indices, scores
    by_score = np.argsort(scores, axis=1, kind="stable")
    return np.take_along_axis(indices, by_score, 1), np.take_along_axis(scores, by_score, 1)


class RandomSelector(Selector):
    """`k` distinct pool examples drawn uniformly per query; each `select` call restarts
    from `seed`, so the same call returns the same examples."""

    def __init__(self, pool_texts, pool_labels=None, seed: int = 0):
        super().__init__(pool_texts, pool_labels)
        self.seed = seed

    def _select(self, queries, k):
        rng = np.random.default_rng(self.seed)
        n = len(self.pool_texts)
        indices = np.stack([rng.choice(n, size=k, replace=False) for _ in queries])
        return indices, np.zeros(indices.shape, np.float32)


class BalancedSelector(Selector):
    """Random examples with label counts as equal as `k` allows: `k // L` per label and
    one more for `k % L` labels drawn at random (a label with too few examples gives its
    share to the others); the examples are shuffled, each `select` call from `seed`."""

    def __init__(self, pool_texts, pool_labels, seed: int = 0):
        if pool_labels is None:
            raise ValueError("`pool_labels` is required by BalancedSelector. Received: None")
        super().__init__(pool_texts, pool_labels)
        self.seed = seed
        groups: dict = {}  # label -> pool indices, labels in order of first appearance
        for i, label in enumerate(self.pool_labels):
            groups.setdefault(label, []).append(i)
        self._groups = [np.array(g) for g in groups.values()]

    def _select(self, queries, k):
        rng = np.random.default_rng(self.seed)
        rows = []
        for _ in queries:
            counts = np.zeros(len(self._groups), int)
            sizes = np.array([len(g) for g in self._groups])
            while counts.sum() < k:  # one round: one more for each label that has room
                room = np.flatnonzero(counts < sizes)
                take = room if len(room) <= k - counts.sum() else rng.permutation(room)
                counts[take[: k - counts.sum()]] += 1
            groups = zip(self._groups, counts, strict=True)
            picked = np.concatenate([rng.choice(g, size=c, replace=False) for g, c in groups])
            rows.append(rng.permutation(picked))
        indices = np.stack(rows)
        return indices, np.zeros(indices.shape, np.float32)


class _EmbeddingSelector(Selector):
    """Shared: the pool embedded once (cached on disk) and the query encoder."""

    def __init__(self, encoder, pool_texts, pool_labels, tokenizer, order, cache, cache_dir):
        super().__init__(pool_texts, pool_labels)
        self.order = _check_order(order)
        self.encoder = as_encoder(encoder, tokenizer)
        self.embeddings = embed_pool(self.encoder, self.pool_texts, cache, cache_dir)  # (N, D)

    def embed_queries(self, queries: list[str]) -> np.ndarray:
        embeddings = encode(self.encoder, queries, "queries")
        if embeddings.shape[1] != self.embeddings.shape[1]:
            raise ValueError(
                f"Query embeddings have {embeddings.shape[1]} dimensions, the pool's "
                f"{self.embeddings.shape[1]}."
            )
        return embeddings


class KNNSelector(_EmbeddingSelector):
    """KATE (Liu et al. 2022): the `k` pool examples nearest to the query by embedding
    dot product (cosine for normalised embeddings, as `SentenceEncoder` makes them).

    Args:
        encoder: any callable `list[str] -> (N, D)` array (e.g. `SentenceEncoder`), or a
            tfllm `BertBackbone` given with its `tokenizer`.
        pool_texts, pool_labels: the labelled pool (labels are optional).
        tokenizer: the backbone's tokenizer when `encoder` is a backbone.
        order: `"similar_last"` or `"retrieved"`.
        cache, cache_dir: pool embedding cache (see `embed_pool`).
    """

    def __init__(
        self,
        encoder,
        pool_texts,
        pool_labels=None,
        tokenizer=None,
        order: str = "similar_last",
        cache: bool = True,
        cache_dir=None,
    ):
        super().__init__(encoder, pool_texts, pool_labels, tokenizer, order, cache, cache_dir)

    def _select(self, queries, k):
        indices, scores = top_k_similar(self.embed_queries(queries), self.embeddings, k)
        return _arrange(indices, scores, self.order)


class MMRSelector(_EmbeddingSelector):
    """Maximal marginal relevance (Carbonell & Goldstein 1998) over the `fetch_k` nearest.

    The most similar candidate is taken first; then, repeatedly, the candidate `d`
    maximising `lambda_ * sim(query, d) - (1 - lambda_) * max_{s selected} sim(d, s)`.
    `lambda_=1` is kNN; `lambda_=0` picks the candidates least like those already taken.

    Args:
        encoder, pool_texts, pool_labels, tokenizer, order, cache, cache_dir: as
            `KNNSelector`.
        lambda_: relevance weight in `[0, 1]`.
        fetch_k: candidates per query (the nearest ones); `None`: `max(4 k, 32)`.
    """

    def __init__(
        self,
        encoder,
        pool_texts,
        pool_labels=None,
        tokenizer=None,
        lambda_: float = 0.5,
        fetch_k: int | None = None,
        order: str = "similar_last",
        cache: bool = True,
        cache_dir=None,
    ):
        if not 0.0 <= lambda_ <= 1.0:
            raise ValueError(f"`lambda_` must be in [0, 1]. Received: {lambda_!r}")
        if fetch_k is not None and (not isinstance(fetch_k, int) or fetch_k < 1):
            raise ValueError(f"`fetch_k` must be an int >= 1 or None. Received: {fetch_k!r}")
        super().__init__(encoder, pool_texts, pool_labels, tokenizer, order, cache, cache_dir)
        self.lambda_ = float(lambda_)
        self.fetch_k = fetch_k

    def _select(self, queries, k):
        n = len(self.pool_texts)
        fetch = min(n, max(k, self.fetch_k or max(4 * k, 32)))
        candidates, relevance = top_k_similar(self.embed_queries(queries), self.embeddings, fetch)
        rows, row_scores = [], []
        for ids, rel in zip(candidates, relevance, strict=True):
            vectors = self.embeddings[ids]  # (fetch, D)
            chosen = [0]  # the most relevant candidate
            redundancy = vectors @ vectors[0]  # (fetch,) max similarity to the chosen
            for _ in range(k - 1):
                score = self.lambda_ * rel - (1.0 - self.lambda_) * redundancy
                score[chosen] = -np.inf
                best = int(np.argmax(score))
                chosen.append(best)
                redundancy = np.maximum(redundancy, vectors @ vectors[best])
            rows.append(ids[chosen])
            row_scores.append(rel[chosen])
        return _arrange(rows, row_scores, self.order)


class BM25Selector(Selector):
    """The `k` pool examples with the highest BM25 score for the query (`bm25s`).

    Lucene's BM25: `sum_t idf(t) tf / (tf + k1 (1 - b + b |d| / avgdl))` with
    `idf(t) = ln(1 + (N - n_t + 0.5) / (n_t + 0.5))`; words are lowercased runs of 2+ word
    characters. Ties (e.g. a query sharing no word with the pool) go to the lower index.

    Args:
        pool_texts, pool_labels: the pool. order: as `KNNSelector`.
        k1, b: BM25 parameters. stopwords: `"en"`, a list, or `None` for none.
    """

    def __init__(
        self,
        pool_texts,
        pool_labels=None,
        k1: float = 1.5,
        b: float = 0.75,
        stopwords="en",
        order: str = "similar_last",
    ):
        super().__init__(pool_texts, pool_labels)
        self.order = _check_order(order)
        self.stopwords = stopwords
        words = self._tokenize(self.pool_texts)
        if not any(words):
            raise ValueError(
                "`pool_texts` have no words BM25 can index (words are 2+ word characters, "
                f"stopwords removed). Received: {self.pool_texts[:3]!r:.100}"
            )
        self.index = bm25s.BM25(k1=k1, b=b)
        self.index.index(words, show_progress=False)

    def _tokenize(self, texts):
        return bm25s.tokenize(
            texts, stopwords=self.stopwords, return_ids=False, show_progress=False
        )

    def _select(self, queries, k):
        n = len(self.pool_texts)
        scores = np.stack(
            [
                self.index.get_scores(words) if words else np.zeros(n, np.float32)
                for words in self._tokenize(queries)
            ]
        )
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return _arrange(best, np.take_along_axis(scores, best, 1), self.order)


def vote_k(embeddings, budget: int, num_neighbors: int = 150, rho: float = 10.0) -> list[int]:
    """Vote-k selective annotation (Su et al. 2022): a diverse, representative subset.

    Each example `v` links to its `num_neighbors` nearest others (dot product). Greedily,
    the unselected `u` with the most votes is taken, where a vote for `u` comes from
    every unselected `v` that has `u` among its neighbours and weighs
    `rho ** -(number of selected examples among v's neighbours)`: regions already
    covered vote less. (The paper's second, LM-confidence stage is not included.)

    Args:
        embeddings: `(N, D)` pool embeddings.
        budget: examples to select, `1 <= budget <= N`.
        num_neighbors: graph degree (the paper's k; capped at `N - 1`).
        rho: vote discount per selected neighbour, `> 1`.

    Returns:
        `budget` pool indices in selection order (ties: lower index).
    """
    embeddings = np.asarray(embeddings, np.float32)
    n = len(embeddings)
    if not isinstance(budget, int) or not 1 <= budget <= n:
        raise ValueError(f"`budget` must be an int in [1, {n}] (the pool). Received: {budget!r}")
    if rho <= 1.0:
        raise ValueError(f"`rho` must be > 1. Received: {rho!r}")
    if not isinstance(num_neighbors, int) or num_neighbors < 1:
        raise ValueError(f"`num_neighbors` must be an int >= 1. Received: {num_neighbors!r}")
    neighbors = min(num_neighbors, n - 1)
    if neighbors == 0:
        return [0]
    # Nearest `neighbors` others of each row: search one more and drop the row itself.
    similar, _ = top_k_similar(embeddings, embeddings, neighbors + 1)
    links = np.stack([row[row != v][:neighbors] for v, row in enumerate(similar)])  # (N, m)
    weight = np.ones(n)  # rho ** -covered[v]; 0 once v is selected
    votes = np.bincount(links.ravel(), minlength=n).astype(np.float64)
    # voters[u] = {v : u in links[v]}, as one array grouped by u (CSR).
    by_target = np.argsort(links.ravel(), kind="stable")
    voter_ids = by_target // neighbors
    starts = np.searchsorted(links.ravel()[by_target], np.arange(n + 1))
    selected = []
    for _ in range(budget):
        votes[selected] = -np.inf
        # Ties (common: votes are sums of powers of 1/rho) go to the lower index, despite
        # the rounding the incremental updates leave.
        top = votes.max()
        u = int(np.flatnonzero(votes >= top - 1e-9 * max(abs(top), 1.0))[0])
        selected.append(u)
        np.subtract.at(votes, links[u], weight[u])  # u no longer votes
        weight[u] = 0.0
        voters = voter_ids[starts[u] : starts[u + 1]]
        voters = voters[weight[voters] > 0]  # u covers one more neighbour of each
        np.subtract.at(
            votes, links[voters].ravel(), np.repeat(weight[voters], neighbors) * (1 - 1 / rho)
        )
        weight[voters] /= rho
    return selected


class VoteKSelector(_EmbeddingSelector):
    """Vote-k (Su et al. 2022): annotate a diverse `budget` of the pool (`vote_k`), then
    select each query's demonstrations from it by similarity, as `KNNSelector`.

    `self.annotated` holds the chosen pool indices (only these need labels).

    Args:
        encoder, pool_texts, pool_labels, tokenizer, order, cache, cache_dir: as
            `KNNSelector`.
        budget: examples to annotate; `num_neighbors`, `rho`: as `vote_k`.
    """

    def __init__(
        self,
        encoder,
        pool_texts,
        pool_labels=None,
        tokenizer=None,
        budget: int = 100,
        num_neighbors: int = 150,
        rho: float = 10.0,
        order: str = "similar_last",
        cache: bool = True,
        cache_dir=None,
    ):
        super().__init__(encoder, pool_texts, pool_labels, tokenizer, order, cache, cache_dir)
        self.annotated = vote_k(self.embeddings, budget, num_neighbors, rho)

    def _check_k(self, k):
        k = super()._check_k(k)
        if k > len(self.annotated):
            raise ValueError(
                f"`k` must not exceed the annotated budget {len(self.annotated)}. Received: {k}"
            )
        return k

    def _select(self, queries, k):
        annotated = np.array(self.annotated)
        local, scores = top_k_similar(self.embed_queries(queries), self.embeddings[annotated], k)
        return _arrange(annotated[local], scores, self.order)
