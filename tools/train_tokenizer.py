"""Train a vocabulary: `python -m tools.train_tokenizer --config tok.json [--key=value ...]`.

Config fields: `files` (globs), `data_format` (text, jsonl or tfrecord, as
`pipelines.datasets.read_documents` reads them), `kind` (wordpiece, bpe or sentencepiece),
`vocabulary_size`, `output` (folder for vocab.txt / vocab.json + merges.txt / spm.model).

Example:
    python -m tools.train_tokenizer --files='data/train-*.jsonl' --data_format=jsonl \\
        --kind=wordpiece --vocabulary_size=8000 --output=runs/vocab
"""

import argparse
import json
import sys
from pathlib import Path

from pipelines.datasets import expand_files, read_documents
from tfllm.pretraining import TRAINERS
from tfllm.tokenizers import save_tokenizer

DEFAULTS = {"files": [], "data_format": "text", "kind": "wordpiece", "vocabulary_size": 8000}


def train_tokenizer(config: dict) -> dict:
    """Trains and saves the tokenizer of `config`; returns a summary."""
    unknown = set(config) - {*DEFAULTS, "output"}
    if unknown or "output" not in config:
        raise ValueError(f"Config needs `output`; unknown keys: {sorted(unknown)}")
    config = {**DEFAULTS, **config}
    if config["kind"] not in TRAINERS:
        raise ValueError(f"`kind` must be one of {sorted(TRAINERS)}. Received: {config['kind']!r}")
    files = expand_files(config["files"], "files")
    documents = read_documents(files, config["data_format"]).as_numpy_iterator()
    tokenizer = TRAINERS[config["kind"]]((d.decode() for d in documents), config["vocabulary_size"])
    save_tokenizer(tokenizer, config["output"])
    return {"output": config["output"], "vocabulary_size": tokenizer.vocabulary_size()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="JSON file of the fields above")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    config = json.loads(Path(args.config).read_text(encoding="utf-8")) if args.config else {}
    for item in overrides:
        key, _, value = item.removeprefix("--").partition("=")
        config[key] = value.split(",") if key == "files" else value
    if "vocabulary_size" in config:
        config["vocabulary_size"] = int(config["vocabulary_size"])
    summary = train_tokenizer(config)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
