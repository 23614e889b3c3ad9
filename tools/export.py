"""Export a run as a SavedModel that takes raw strings: `python -m tools.export RUN [options]`.

Writes `<base>/<name>/<version>/` (TensorFlow Serving layout) with task signatures
(`classify`, `tag`, `fill_mask`, `embed`, `generate`, `generate_with_options`), the
tokenizer files in `assets/tokenizer/` and `assets.extra/tf_serving_warmup_requests`,
after checking the export in a fresh process. Loading it needs `import tensorflow_text`.
A line is printed as each phase ends (traced, written, validated), with its seconds.

Examples:
    python -m tools.export runs/sentiment --base exports
    python -m tools.export runs/gpt_tiny --base exports --max_new_tokens 64 \\
        --sampler '{"name": "top_p", "p": 0.9}'
"""

import argparse
import functools
import json

from export.saved_model import export_saved_model
from tfllm.progress import report_phase


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="run folder written by tools/train.py")
    parser.add_argument("--base", default="exports", help="model base path (default: exports)")
    parser.add_argument("--name", help="model name (default: the run folder's name)")
    parser.add_argument("--version", type=int, help="version (default: the next free one)")
    parser.add_argument("--top_k", type=int, default=5, help="fill_mask: tokens per mask")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="generate: new tokens")
    parser.add_argument(
        "--sampler", default="greedy", help='generate: a sampler name or JSON {"name": ...}'
    )
    parser.add_argument(
        "--no_validate", action="store_true", help="skip the fresh-process check (not advised)"
    )
    args = parser.parse_args(argv)
    sampler = json.loads(args.sampler) if args.sampler.startswith("{") else args.sampler
    path = export_saved_model(
        args.run,
        args.base,
        args.name,
        args.version,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        sampler=sampler,
        validate=not args.no_validate,
        report=functools.partial(report_phase, "export"),
    )
    print(path)
    return str(path)


if __name__ == "__main__":
    main()
