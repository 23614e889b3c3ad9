"""Documents/s per core of the data pipeline's clean and MinHash stages, against datasketch.

    python -m tools.benchmark data [--rounds 5] [--wiki 40] [--write]

Real documents: the Lee news corpus (300 articles), the first `--wiki` Wikipedia articles
of gensim's dump (markup stripped) and Hamlet in 12-line passages. One process, one core.
Timed side by side, interleaved (A B A B ...), medians over `--rounds`:
- MinHash signatures: `pipelines.dedup.minhash_signatures` against datasketch `MinHash`
  (`update_batch`), both 112 permutations over word 5-gram shingles, tokenizing included.
- Near-dedup end to end: `near_duplicate_clusters` (threshold 0.7, 14 bands x 8 rows)
  against datasketch `MinHash` + `MinHashLSH(threshold=0.7, params=(14, 8))` insert + query.
- Clean: `pipelines.clean.clean_document` with the default filters (ours only).
`--write` updates the "Data pipeline" section of BENCHMARKS.md.
"""

import argparse
import itertools
import re
import statistics
import time

from pipelines import clean, collect, dedup
from tfllm import assets
from tfllm.benchmarking import interleaved_times, markdown_table
from tools.benchmarks import header, write_section

DESCRIPTION = "Clean and MinHash dedup documents/s per core, against datasketch."
SECTION = "## Data pipeline"
WIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_WORD = re.compile(r"\w+")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--wiki", type=int, default=40, help="Wikipedia articles to add")


def documents(wiki: int) -> list[str]:
    """Lee news articles, Wikipedia articles and Hamlet passages."""
    data = assets.gensim_test_data_path()
    docs = (data / "lee_background.cor").read_text().splitlines()
    docs += [r["text"] for r in itertools.islice(collect.read_file(str(data / WIKI)), wiki)]
    lines = (assets.shakespeare_path() / "tragedies" / "hamlet.md").read_text().splitlines()
    verse = [ln for ln in lines if ln.strip() and not ln.startswith(("#", "**", "_"))]
    return docs + ["\n".join(verse[i : i + 12]) for i in range(0, len(verse), 12)]


def _datasketch_minhashes(docs):
    from datasketch import MinHash

    hashes = []
    for doc in docs:
        words = _WORD.findall(doc.lower())
        shingles = [" ".join(words[i : i + 5]).encode() for i in range(max(len(words) - 4, 1))]
        minhash = MinHash(num_perm=112)
        minhash.update_batch(shingles)
        hashes.append(minhash)
    return hashes


def _datasketch_dedup(docs):
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=0.7, num_perm=112, params=(14, 8))
    duplicates = 0
    for key, minhash in enumerate(_datasketch_minhashes(docs)):
        duplicates += bool(lsh.query(minhash))
        lsh.insert(key, minhash)
    return duplicates


def _timer(function, docs):
    def timed():
        start = time.perf_counter()
        function(docs)
        return time.perf_counter() - start

    return timed


def run(args: argparse.Namespace, command: str) -> None:
    docs = documents(args.wiki)
    config = clean.CleanConfig()
    timers = {
        ("minhash", "ours"): _timer(dedup.minhash_signatures, docs),
        ("minhash", "datasketch"): _timer(_datasketch_minhashes, docs),
        ("dedup", "ours"): _timer(dedup.near_duplicate_clusters, docs),
        ("dedup", "datasketch"): _timer(_datasketch_dedup, docs),
        ("clean", "ours"): _timer(lambda d: [clean.clean_document(t, config) for t in d], docs),
    }
    times = interleaved_times(timers, args.rounds, warmup=1)
    rows = []
    for stage, label in (("minhash", "MinHash signatures (112 perm)"),
                         ("dedup", "near-dedup: MinHash + LSH (14×8)")):  # fmt: skip
        ours, theirs = times[(stage, "ours")], times[(stage, "datasketch")]
        ratio = statistics.median(b / a for a, b in zip(ours, theirs, strict=True))
        speeds = [len(docs) / statistics.median(t) for t in (ours, theirs)]
        rows.append([label, f"{speeds[0]:,.0f}", f"{speeds[1]:,.0f}", f"**{ratio:.1f}×**"])
    clean_speed = len(docs) / statistics.median(times[("clean", "ours")])
    rows.append(["clean (all filters, lingua)", f"{clean_speed:,.0f}", "–", "–"])
    table = markdown_table(["stage", "tfllm docs/s/core", "datasketch docs/s/core", "ratio"], rows)
    words = sum(len(d.split()) for d in docs)
    print(f"{len(docs)} documents, {words:,} words")
    print(table)
    if args.write:
        write_section(SECTION, section_body(command, docs, words, table, args))


def section_body(command, docs, words, table, args):
    return f"""
{header(command)}

{len(docs)} real documents ({words:,} words): Lee news corpus, {args.wiki} Wikipedia
articles (gensim's dump, markup stripped), Hamlet in 12-line passages. One process,
tokenizing and shingling included on both sides; {args.rounds} interleaved rounds after a
warm-up, medians; ratio = median over rounds of datasketch time / tfllm time.
datatrove is not compared: its MinHash runs as a four-stage file pipeline, not a call.

{table}
"""
