"""Pretrain a model from a RunConfig: `python -m tools.train [--config FILE] [--key=value ...]`.

Without a config file the defaults apply: a tiny GPT on the built-in Shakespeare corpus.
Re-running the same command resumes from the last checkpoint of `runs/<name>/`.

Examples:
    python -m tools.train --steps=300 --name=gpt_tiny
    python -m tools.train --task=bert_pretraining --model=bert_tiny --name=bert_tiny
    python -m tools.train --config runs/gpt_tiny/config.json --steps=600
"""

import argparse
import json

from tfllm.config import RunConfig
from tfllm.pretraining import pretrain


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog="Any RunConfig field: --key=value."
    )
    parser.add_argument("--config", help="JSON RunConfig file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args, overrides = parser.parse_known_args(argv)
    config = RunConfig.load(args.config, overrides)
    summary = pretrain(config, verbose=not args.quiet)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
