"""Corpus statistics and a readable report (JSON + HTML with PNG plots).

`CorpusStats` accumulates one pass over records and merges with others (it is the
accumulator of the Beam `CombineFn` in `pipelines.prepare`): document and token counts,
a log2 length histogram, the language mix, exact-duplicate rate (normalized-text hash),
type-token ratio, distinct 1/2/3-gram ratios and the zlib compression ratio. Tokens are
the words of `pipelines.dedup.word_hashes` (letter/digit runs; each CJK character alone),
hashed with process-independent hashes so that accumulators from several workers merge.

Example:
    >>> records = [{"text": "a cat sat", "language": "en"}, {"text": "a cat sat"},
    ...            {"text": "le chat", "language": "fr"}]
    >>> stats = CorpusStats()
    >>> for record in records:
    ...     _ = stats.add(record)
    >>> report = stats.result()
    >>> report["documents"], report["tokens"], report["exact_duplicate_rate"]
    (3, 8, 0.333...)
    >>> report["languages"]
    {'en': 1, 'unknown': 1, 'fr': 1}
    >>> CorpusStats().add(records[0]).merge(stats).result()["documents"]  # as Beam combines
    4
"""

import html
import io
import json
import os
import uuid
import zlib
from collections import Counter

import numpy as np
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines.dedup import exact_hash, shingle_hashes, word_hashes

LENGTH_BINS = 24  # log2 bins of tokens per document: [1, 2), [2, 4), ... [2^23, inf)


class CorpusStats:
    """Mergeable one-pass statistics of a stream of records `{"text", "language"?, ...}`."""

    def __init__(self):
        self.documents = 0
        self.tokens = 0
        self.characters = 0
        self.compressed_bytes = 0
        self.raw_bytes = 0
        self.length_histogram = np.zeros(LENGTH_BINS, dtype=np.int64)
        self.languages: Counter = Counter()
        self.hashes: set[str] = set()
        self.ngrams: list[set[int]] = [set(), set(), set()]
        self.ngram_totals = [0, 0, 0]

    def add(self, record: dict) -> "CorpusStats":
        text = record.get("text", "")
        num_tokens = word_hashes(text).size
        self.documents += 1
        self.tokens += num_tokens
        self.characters += len(text)
        raw = text.encode()
        self.raw_bytes += len(raw)
        self.compressed_bytes += len(zlib.compress(raw, 6))
        self.length_histogram[min(int(np.log2(max(num_tokens, 1))), LENGTH_BINS - 1)] += 1
        self.languages[record.get("language") or "unknown"] += 1
        self.hashes.add(exact_hash(text))
        for n in (1, 2, 3):
            grams = shingle_hashes(text, n) if num_tokens >= n else ()
            self.ngrams[n - 1].update(grams.tolist() if len(grams) else ())
            self.ngram_totals[n - 1] += len(grams)
        return self

    def merge(self, other: "CorpusStats") -> "CorpusStats":
        for name in ("documents", "tokens", "characters", "compressed_bytes", "raw_bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.length_histogram += other.length_histogram
        self.languages.update(other.languages)
        self.hashes |= other.hashes
        for n in range(3):
            self.ngrams[n] |= other.ngrams[n]
            self.ngram_totals[n] += other.ngram_totals[n]
        return self

    def result(self) -> dict:
        """Plain-JSON summary."""
        distinct = [
            len(s) / t if t else 0.0 for s, t in zip(self.ngrams, self.ngram_totals, strict=True)
        ]
        return {
            "documents": self.documents,
            "tokens": self.tokens,
            "characters": self.characters,
            "mean_tokens_per_document": self.tokens / max(self.documents, 1),
            "length_histogram_log2": self.length_histogram.tolist(),
            "languages": dict(self.languages.most_common()),
            "exact_duplicate_rate": 1 - len(self.hashes) / max(self.documents, 1),
            "type_token_ratio": distinct[0],
            "distinct_2gram_ratio": distinct[1],
            "distinct_3gram_ratio": distinct[2],
            "compression_ratio": self.raw_bytes / max(self.compressed_bytes, 1),
        }


def corpus_stats(records) -> dict:
    """`CorpusStats().add(...)` over `records`, summarized."""
    stats = CorpusStats()
    for record in records:
        stats.add(record)
    return stats.result()


def write_file(path: str, data: bytes) -> None:
    """Writes `path` (local, `gs://`, `hdfs://`, ...) through Beam's `FileSystems`, whole:
    under a temporary name in the same folder, then renamed over `path`.

    Inside a pipeline this reaches the output's filesystem from any worker, where `open`
    would write to that worker's own disk.
    """
    folder, name = FileSystems.split(path)
    temp = FileSystems.join(folder, f".tmp-{uuid.uuid4().hex[:8]}-{name}")
    try:
        with FileSystems.create(temp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(data)
        try:
            FileSystems.rename([temp], [path])
        except BeamIOError:  # HDFS renames onto a free name only
            FileSystems.delete([path])
            FileSystems.rename([temp], [path])
    except BaseException:
        if FileSystems.exists(temp):
            FileSystems.delete([temp])
        raise


def _figure(figsize) -> tuple:
    """A figure and its axes through matplotlib's object API: no pyplot, no backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def _png(figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _plots(report: dict, folder: str) -> list[str]:
    names = []
    for key, title in (("before", "collected"), ("after", "kept")):
        hist = report[key]["length_histogram_log2"]
        fig, ax = _figure((6, 3))
        ax.bar(range(len(hist)), hist)
        ax.set(xlabel="log2(tokens per document)", ylabel="documents", title=f"Lengths, {title}")
        names.append(f"lengths_{key}.png")
        write_file(FileSystems.join(folder, names[-1]), _png(fig))
    drops = report["drop_reasons"]
    if drops:
        fig, ax = _figure((6, 0.3 * len(drops) + 1))
        ax.barh(list(drops), list(drops.values()))
        ax.set(xlabel="documents dropped", title="Drop reasons")
        names.append("drop_reasons.png")
        write_file(FileSystems.join(folder, names[-1]), _png(fig))
    return names


def write_report(report: dict, folder) -> str:
    """Writes `report.json`, PNG plots and `report.html` into `folder` (a path or a URL
    such as `gs://bucket/out/report`, through `write_file`); returns the HTML path.

    `report` has `before` and `after` (`CorpusStats.result()`), `drop_reasons` and
    `problems` counts, and any other keys (shown as JSON).
    """
    folder = os.fspath(folder)
    write_file(FileSystems.join(folder, "report.json"), json.dumps(report, indent=2).encode())
    images = _plots(report, folder)
    keys = [k for k in report["before"] if k != "length_histogram_log2"]

    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return html.escape(json.dumps(value) if isinstance(value, dict) else str(value))

    rows = "".join(
        f"<tr><td>{k}</td><td>{cell(report['before'][k])}</td><td>{cell(report['after'][k])}</td></tr>"
        for k in keys
    )
    other = {k: v for k, v in report.items() if k not in ("before", "after")}
    page = (
        "<!doctype html><meta charset='utf-8'><title>Corpus report</title>"
        "<h1>Corpus report</h1><table border=1 cellpadding=4>"
        f"<tr><th>statistic</th><th>collected</th><th>kept</th></tr>{rows}</table>"
        + "".join(f"<p><img src='{name}'></p>" for name in images)
        + f"<h2>Details</h2><pre>{html.escape(json.dumps(other, indent=2))}</pre>"
    )
    write_file(FileSystems.join(folder, "report.html"), page.encode())
    return FileSystems.join(folder, "report.html")
