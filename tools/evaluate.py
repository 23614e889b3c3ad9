"""Evaluate: `python -m tools.evaluate <command> ...`; each command writes a JSON report.

    python -m tools.evaluate run runs/rotten_tomatoes [--split test] [--output DIR]
    python -m tools.evaluate icl path/to/gpt2 [--shots 0,1,4,8 --selectors random,bm25,knn]
    python -m tools.evaluate demos [--pool-size 2000 --queries 200 -k 8] [--write]

`run` scores a finished `tools/train.py` run on data it never trained on (see
`tfllm.evaluation`): `report.json`, `confusion_matrix.png` and `per_class_f1.png` (labelled
tasks) in `<run>/evaluation/`; perplexity against a unigram model for pretraining runs;
for `causal_lm_sft` runs, answers generated for the test prompts scored with BLEU, chrF,
ROUGE and exact match (`report.md` shows examples).
`icl` measures in-context learning with a causal LM (a run folder, `.keras` file or Hugging
Face GPT-2 / LLaMA-style folder): accuracy per demonstration selector and shot count on
a built-in classification set (`tfllm.demonstrations.evaluate_icl`): `icl.json` and
`icl.md` in `--output`; `--write` updates BENCHMARKS.md.
`demos` scores in-context demonstration selectors against random on Rotten Tomatoes
(`tfllm.demonstrations`): `runs/demos/demos.json`, `--write` updates BENCHMARKS.md.
"""

import argparse
import json
import sys

from tfllm.demonstrations import evaluate_demonstrations, report_markdown
from tfllm.evaluation import evaluate_run


def _add_run(commands) -> None:
    parser = commands.add_parser("run", help="score a finished training run")
    parser.add_argument("run_dir", help="a folder written by tools/train.py")
    parser.add_argument("--split", choices=("test", "validation"), default="test")
    parser.add_argument("--output", help="report folder (default: <run_dir>/evaluation)")
    parser.set_defaults(handler=lambda a: evaluate_run(a.run_dir, a.split, a.output))


def _add_demos(commands) -> None:
    parser = commands.add_parser("demos", help="score demonstration selectors against random")
    parser.add_argument("--dataset", default="rotten_tomatoes")
    parser.add_argument("--pool-size", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=8, help="demonstrations per query")
    parser.add_argument("--budget", type=int, default=200, help="examples vote-k annotates")
    parser.add_argument("--output", default="runs/demos", help="folder of demos.json")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.set_defaults(handler=_demos)


def _demos(args) -> dict:
    report = evaluate_demonstrations(
        args.dataset, args.pool_size, args.queries, args.k, args.budget, output_dir=args.output
    )
    if args.write:
        from tools.benchmarks import write_section

        command = "python -m tools.evaluate " + " ".join(sys.argv[1:])
        write_section("## Demonstration selection", report_markdown(report, command.strip()))
    return report


def _add_icl(commands) -> None:
    parser = commands.add_parser("icl", help="in-context learning accuracy of a causal LM")
    parser.add_argument("model", help="a causal LM: run folder, .keras file or HF folder")
    parser.add_argument("--dataset", default="rotten_tomatoes")
    parser.add_argument("--label-words", default="negative,positive", help="one per label id")
    parser.add_argument("--shots", default="0,1,4,8")
    parser.add_argument("--selectors", default="random,bm25,knn")
    parser.add_argument("--pool-size", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, help="prompt budget (default: the model's)")
    parser.add_argument("--output", default="runs/icl", help="folder of icl.json and icl.md")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.set_defaults(handler=_icl)


def _icl(args) -> dict:
    from pathlib import Path

    from pipelines.labelled import load_builtin
    from tfllm.demonstrations import evaluate_icl, icl_markdown, minilm_encoder
    from tfllm.io import atomic_write
    from tfllm.models import CausalLM
    from tfllm.models.preset_io import read_preset

    parts = read_preset(args.model)
    if parts.tokenizer is None:
        raise ValueError(f"`model` {args.model!r} has no tokenizer.")
    model = parts.task if isinstance(parts.task, CausalLM) else CausalLM(parts.backbone)
    data = load_builtin(args.dataset)
    selectors = [name for name in args.selectors.split(",") if name]
    encoder = minilm_encoder() if {"knn", "mmr", "vote_k"} & set(selectors) else None
    report = evaluate_icl(
        model,
        parts.tokenizer,
        data.train[: args.pool_size],
        data.test[: args.queries],
        args.label_words.split(","),
        shots=[int(k) for k in args.shots.split(",")],
        selectors=selectors,
        encoder=encoder,
        max_tokens=args.max_tokens,
    )
    report = {"model": args.model, "dataset": args.dataset, **report}
    command = (
        f"python -m tools.evaluate icl {args.model} --dataset {args.dataset} --shots "
        f"{args.shots} --selectors {args.selectors} --pool-size {args.pool_size} --queries "
        f"{args.queries}"
    )
    markdown = icl_markdown(report, f"{args.model} on {args.dataset}", command)
    atomic_write(Path(args.output) / "icl.json", json.dumps(report, indent=1))
    atomic_write(Path(args.output) / "icl.md", markdown)
    if args.write:
        from tools.benchmarks import write_section

        write_section("## In-context learning scored by a model", markdown)
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run(commands)
    _add_demos(commands)
    _add_icl(commands)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    report = args.handler(args)
    print(json.dumps(report, indent=1)[:4000])
    return report


if __name__ == "__main__":
    main()
