"""Train from a RunConfig: `python -m tools.train [--config FILE] [--key=value ...]`.

The task decides the run: pretraining tasks (`causal_lm`, `masked_lm`, `bert_pretraining`)
and supervised fine-tuning of a causal LM (`causal_lm_sft`, on JSONL prompt / response or
chat records) go to `tfllm.pretraining.pretrain`, fine-tuning tasks (`classification`, on
a BERT or a GPT, and `token_classification`, on a BERT) to `tfllm.finetuning.finetune`.
Without a config file the defaults apply: a tiny GPT pretrained on the built-in
Shakespeare corpus. Re-running a pretraining command resumes from the last checkpoint of
`runs/<name>/`.

Examples:
    python -m tools.train --steps=300 --name=gpt_tiny
    python -m tools.train --task=bert_pretraining --model=bert_tiny --name=bert_tiny
    python -m tools.train --config runs/gpt_tiny/config.json --steps=600
    python -m tools.train --task=classification --dataset=rotten_tomatoes \\
        --init_from=runs/bert_tiny --learning_rate=1e-4 --steps=600 --log_every=100
    python -m tools.train --task=classification --dataset=rotten_tomatoes \\
        --init_from=runs/gpt_tiny --learning_rate=1e-4 --steps=600 --name=gpt_sentiment
    python -m tools.train --task=causal_lm_sft --init_from=runs/gpt_tiny \\
        --train_files=data/sft.jsonl --learning_rate=1e-4 --steps=300 --name=gpt_sft
"""

import argparse
import json

from tfllm.config import FINETUNING_TASKS, RunConfig
from tfllm.finetuning import finetune
from tfllm.pretraining import pretrain


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog="Any RunConfig field: --key=value."
    )
    parser.add_argument("--config", help="JSON RunConfig file")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args, overrides = parser.parse_known_args(argv)
    config = RunConfig.load(args.config, overrides)
    run = finetune if config.task in FINETUNING_TASKS else pretrain
    summary = run(config, verbose=not args.quiet)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
