"""Memory of the near-duplicate connected components, which run on one worker.

    python -m tools.benchmark components [--edges 100000,1000000] [--write]

`pipelines.prepare` gathers every verified near-duplicate edge into one list (`AllEdges`,
a `ToList`) and computes the components in one `Map` (`_duplicate_of`) on one worker; its
`{id: kept id}` answer then goes to every worker as a side input. Synthetic edges shaped as
the pipeline makes them: stars (a cluster's first record to each other member, clusters
of 2 to 5 records) between record ids like `/data/crawl/part-00012.jsonl:1234567` (36
characters), a new string object per edge end, as after unpickling. tracemalloc measures
the edge list as the worker holds it, the component step's peak on top of it, and the
answer as every worker unpickles it.
"""

import argparse
import pickle
import time
import tracemalloc

import numpy as np

from pipelines.prepare import _duplicate_of
from tfllm.benchmarking import markdown_table
from tools.benchmarks import header, write_section

DESCRIPTION = "Memory of the one-worker near-duplicate connected components per edge count."
SECTION = "## Near-duplicate components: memory on one worker"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--edges",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[100_000, 1_000_000],
        help="edge counts, comma-separated",
    )


def star_edges(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """`count` edges `(first id, member id)` of star-shaped clusters of 2-5 records."""
    rng = np.random.default_rng(seed)
    edges, first = [], 0
    while len(edges) < count:
        size = int(rng.integers(2, 6))
        edges += [(_record_id(first), _record_id(first + k)) for k in range(1, size)]
        first += size
    return edges[:count]


def _record_id(number: int) -> str:
    return f"/data/crawl/part-{number // 100_000:05d}.jsonl:{number:07d}"


def measure(count: int) -> dict:
    """MiB of the edge list, of the component step's peak above it, and of a worker's
    unpickled copy of the answer."""
    tracemalloc.start()
    edges = star_edges(count)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    start = time.perf_counter()
    answer = _duplicate_of(edges)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    blob = pickle.dumps(answer)
    before = tracemalloc.get_traced_memory()[0]
    side_input = pickle.loads(blob)  # each worker's copy of the answer
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    ids = len({i for edge in edges for i in edge})
    mib = 2.0**20
    return {
        "edges": count,
        "ids": ids,
        "edge_list": held / mib,
        "step_peak": (peak - held) / mib,
        "answer": (after - before) / mib,
        "seconds": seconds,
        "duplicates": len(side_input),
    }


def run(args: argparse.Namespace, command: str) -> None:
    rows = []
    for count in args.edges:
        m = measure(count)
        per_million = 1e6 / count
        rows.append([
            f"{count:,}", f"{m['ids']:,}", f"{m['duplicates']:,}", f"{m['edge_list']:,.1f}",
            f"{m['step_peak']:,.1f}", f"{m['answer']:,.1f}",
            f"{(m['edge_list'] + m['step_peak']) * per_million:,.0f}", f"{m['seconds']:.1f}",
        ])  # fmt: skip
    table = markdown_table(
        ["edges", "record ids", "records dropped", "edge list MiB",
         "component step peak MiB (above it)", "answer MiB (on every worker)",
         "one worker per 10^6 edges MiB", "step s (under tracemalloc)"],
        rows,
    )  # fmt: skip
    print(table)
    if args.write:
        write_section(SECTION, section_body(command, table))


def section_body(command, table):
    return f"""
{header(command)}

`pipelines.prepare` computes the near-duplicate connected components in one `Map` on one
worker, over the list of every verified edge (`AllEdges`); the `{{id: kept id}}` answer
then reaches every worker as a side input. Synthetic star-shaped clusters of 2-5 records,
record ids of 36 characters (`/data/crawl/part-00012.jsonl:1234567`), one string object
per edge end as after unpickling; tracemalloc (Python allocations, numpy included).

{table}
"""
