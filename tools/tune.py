"""Hyperparameter search: `python -m tools.tune --config FILE [options] [--key=value ...]`.

The config file is a `RunConfig` whose `search_space` says what to tune (see
`tfllm.tuning`); `--key=value` overrides its fields. Each trial trains in its own process
through the same path as `tools/train.py`. Writes into `--directory`: `trials.csv`,
`trials.md`, `objective.png`, `best_config.json` (retrain with
`python -m tools.train --config DIR/best_config.json`), `runs/trial_<id>/` and `search/`.
Rerunning an interrupted command resumes it. For a distributed search run the same
command in every process with `KERASTUNER_TUNER_ID` (`chief`, `tuner0`, ...),
`KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT` set.

Example:
    python -m tools.tune --config configs/gpt_search.json --tuner bayesian \\
        --objective val_perplexity --max_trials 20 --directory tuning/gpt
"""

import argparse
import json

from tfllm.config import RunConfig
from tfllm.tuning import TUNERS, tune


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog="Any RunConfig field: --key=value."
    )
    parser.add_argument("--config", help="JSON RunConfig file with a `search_space`")
    parser.add_argument("--directory", required=True, help="output folder of the search")
    parser.add_argument("--tuner", choices=TUNERS, default="random")
    parser.add_argument("--objective", default="val_loss", help="a logged metric")
    parser.add_argument("--direction", choices=("min", "max"), default="", help="default: inferred")
    parser.add_argument("--max_trials", type=int, default=10, help="(Hyperband: unused)")
    parser.add_argument("--seed", type=int, default=0, help="the tuner's seed")
    parser.add_argument("--overwrite", action="store_true", help="start over, do not resume")
    args, overrides = parser.parse_known_args(argv)
    config = RunConfig.load(args.config, overrides)
    result = tune(
        config,
        args.directory,
        tuner=args.tuner,
        objective=args.objective,
        direction=args.direction,
        max_trials=args.max_trials,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
