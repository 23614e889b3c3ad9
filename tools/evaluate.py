"""Evaluate: `python -m tools.evaluate <command> ...`; each command writes a JSON report.

    python -m tools.evaluate run runs/rotten_tomatoes [--split test] [--output DIR]

`run` scores a finished `tools/train.py` run on data it never trained on (see
`tfllm.evaluation`): `report.json`, `confusion_matrix.png` and `per_class_f1.png` (labelled
tasks) in `<run>/evaluation/`; perplexity against a unigram model for pretraining runs.
"""

import argparse
import json
import sys

from tfllm.evaluation import evaluate_run


def _add_run(commands) -> None:
    parser = commands.add_parser("run", help="score a finished training run")
    parser.add_argument("run_dir", help="a folder written by tools/train.py")
    parser.add_argument("--split", choices=("test", "validation"), default="test")
    parser.add_argument("--output", help="report folder (default: <run_dir>/evaluation)")
    parser.set_defaults(handler=lambda a: evaluate_run(a.run_dir, a.split, a.output))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run(commands)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    report = args.handler(args)
    print(json.dumps(report, indent=1)[:4000])
    return report


if __name__ == "__main__":
    main()
