"""How well each selector picks demonstrations on a real labelled set, against random.

For every query of the test split, each selector picks `k` demonstrations from a pool of
the training split. Per selector: `label_agreement` (share of demonstrations with the
query's label), `vote_accuracy` (their majority label is the query's; ties count half),
`query_similarity` (mean cosine to the query), `pairwise_distance` (mean `1 - cosine`
among the selected: diversity), `distinct_labels` (per query), `coverage` (distinct pool
examples used / slots) and `seconds` (selection time for all queries).

Example:
>>> words = ["good", "bad", "great", "dull", "fun", "boring", "best", "worst"]
>>> def encoder(texts):  # a stand-in for the default, all-MiniLM-L6-v2: word counts
...     counts = np.array([[text.lower().count(w) for w in words] for text in texts], "float32")
...     return counts / np.maximum(np.linalg.norm(counts, axis=1, keepdims=True), 1.0)
>>> report = evaluate_demonstrations(
...     "rotten_tomatoes", pool_size=200, num_queries=20, k=4, budget=20, encoder=encoder)
>>> list(report["selectors"])
['random', 'balanced', 'bm25', 'knn', 'mmr', 'vote_k']
>>> report["selectors"]["bm25"]["label_agreement"], report["selectors"]["random"]["label_agreement"]
(0.65, 0.5875)
"""

import json
import time
from pathlib import Path

import numpy as np

from tfllm import assets
from tfllm.demonstrations.embeddings import SentenceEncoder, embed_pool
from tfllm.demonstrations.selectors import (
    BalancedSelector,
    BM25Selector,
    KNNSelector,
    MMRSelector,
    RandomSelector,
    VoteKSelector,
)
from tfllm.io import atomic_write


def minilm_encoder(sequence_length: int = 128) -> SentenceEncoder:
    """all-MiniLM-L6-v2 (real weights, fetched and cached) as a `SentenceEncoder`."""
    from tfllm.models import BertBackbone
    from tfllm.tokenizers import WordPieceTokenizer

    path = assets.minilm_path()
    backbone = BertBackbone.from_huggingface(path)
    return SentenceEncoder(backbone, WordPieceTokenizer(path / "vocab.txt"), sequence_length)


def selection_metrics(indices, query_labels, pool_labels, query_embeddings, pool_embeddings):
    """The metrics of the module docstring for `indices` `(Q, k)` into the pool."""
    indices = np.asarray(indices)
    q, k = indices.shape
    chosen = np.asarray(pool_labels)[indices]  # (Q, k)
    same = chosen == np.asarray(query_labels)[:, None]
    vectors = pool_embeddings[indices]  # (Q, k, D)
    to_query = np.einsum("qkd,qd->qk", vectors, query_embeddings)
    gram = np.einsum("qid,qjd->qij", vectors, vectors)  # (Q, k, k)
    off_diagonal = ~np.eye(k, dtype=bool)
    pairwise = (1.0 - gram[:, off_diagonal]).mean() if k > 1 else 0.0
    agreeing = same.sum(1)
    votes = np.where(agreeing * 2 > k, 1.0, np.where(agreeing * 2 == k, 0.5, 0.0))
    return {
        "label_agreement": float(same.mean()),
        "vote_accuracy": float(votes.mean()),
        "query_similarity": float(to_query.mean()),
        "pairwise_distance": float(pairwise),
        "distinct_labels": float(np.mean([len(set(row)) for row in chosen.tolist()])),
        "coverage": float(len(np.unique(indices)) / indices.size),
    }


def evaluate_demonstrations(
    dataset: str = "rotten_tomatoes",
    pool_size: int = 2000,
    num_queries: int = 200,
    k: int = 8,
    budget: int = 200,
    seed: int = 0,
    output_dir=None,
    encoder=None,
) -> dict:
    """Scores random, balanced, kNN, BM25, MMR and vote-k selection; writes the report.

    Args:
        dataset: a text-classification name of `pipelines.labelled.load_builtin`.
        pool_size: training examples in the pool; num_queries: test examples scored.
        k: demonstrations per query; budget: examples vote-k annotates.
        seed: random selectors' seed; output_dir: `demos.json` goes there (`None`: not
            written); encoder: default all-MiniLM-L6-v2 (`minilm_encoder()`).

    Returns:
        `{"dataset", "pool_size", "num_queries", "k", "budget", "query_majority",
        "selectors": {name: metrics}}`.
    """
    from pipelines.labelled import load_builtin

    data = load_builtin(dataset)
    if not data.train or not isinstance(data.train[0][0], str):
        raise ValueError(f"`dataset` must be single-text classification. Received: {dataset!r}")
    pool, queries = data.train[:pool_size], data.test[:num_queries]
    pool_texts, pool_labels = [t for t, _ in pool], [y for _, y in pool]
    query_texts, query_labels = [t for t, _ in queries], [y for _, y in queries]
    encoder = encoder if encoder is not None else minilm_encoder()
    pool_embeddings = embed_pool(encoder, pool_texts)
    query_embeddings = np.asarray(encoder(query_texts), np.float32)
    factories = {
        "random": lambda: RandomSelector(pool_texts, pool_labels, seed=seed),
        "balanced": lambda: BalancedSelector(pool_texts, pool_labels, seed=seed),
        "bm25": lambda: BM25Selector(pool_texts, pool_labels),
        "knn": lambda: KNNSelector(encoder, pool_texts, pool_labels),
        "mmr": lambda: MMRSelector(encoder, pool_texts, pool_labels, lambda_=0.5),
        "vote_k": lambda: VoteKSelector(encoder, pool_texts, pool_labels, budget=budget),
    }
    selectors = {}
    for name, factory in factories.items():
        start = time.perf_counter()
        indices = factory().select(query_texts, k)
        seconds = time.perf_counter() - start
        metrics = selection_metrics(
            indices, query_labels, pool_labels, query_embeddings, pool_embeddings
        )
        selectors[name] = {**metrics, "seconds": round(seconds, 2)}
    majority = max(np.bincount(query_labels)) / len(query_labels)
    report = {
        "dataset": dataset,
        "pool_size": len(pool),
        "num_queries": len(queries),
        "k": k,
        "budget": budget,
        "query_majority": float(majority),
        "selectors": selectors,
    }
    if output_dir is not None:
        atomic_write(Path(output_dir) / "demos.json", json.dumps(report, indent=1))
    return report


def report_markdown(report: dict, command: str) -> str:
    """The BENCHMARKS.md section body: one row per selector, ratios against random."""
    base = report["selectors"]["random"]
    lines = [
        f"`{command}`: {report['dataset']}, pool {report['pool_size']} training snippets, "
        f"{report['num_queries']} test queries, k={report['k']}, all-MiniLM-L6-v2 "
        f"embeddings (vote-k annotates {report['budget']}). Majority label share of the "
        f"queries: {report['query_majority']:.3f}. Label agreement: share of the selected "
        "demonstrations with the query's label; majority-vote acc.: their majority label is "
        "the query's (ties half); pairwise dist.: mean `1 - cos` among the selected; "
        "coverage: distinct pool examples / slots; select s: includes embedding the queries.",
        "",
        "| selector | label agreement | × random | majority-vote acc. | query cos | "
        "pairwise dist. (diversity) | distinct labels | coverage | select s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["selectors"].items():
        lines.append(
            f"| {name} | {m['label_agreement']:.3f} | "
            f"{m['label_agreement'] / base['label_agreement']:.2f} | {m['vote_accuracy']:.3f} | "
            f"{m['query_similarity']:.3f} | {m['pairwise_distance']:.3f} | "
            f"{m['distinct_labels']:.2f} | {m['coverage']:.3f} | {m['seconds']:.2f} |"
        )
    return "\n".join(lines) + "\n"
