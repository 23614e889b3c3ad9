"""Collect, clean, deduplicate and shard pretraining text on Apache Beam, from one config.

    python -m tools.prepare_data --config data.json [--key=value ...] \
        [--runner DirectRunner] [--workers 2] [-- extra Beam pipeline options]

The config is a JSON object of `pipelines.prepare.PrepareConfig` fields, e.g.
`{"inputs": ["corpus/"], "output": "data/prepared", "clean": {"languages": ["en"]}}`;
`--key=value` overrides one field (the value is JSON, or else a string). `--runner` picks
the Beam runner (DirectRunner, FlinkRunner, SparkRunner, DataflowRunner); `--workers N`
runs the local runner in N processes. Anything after `--` goes to Beam unchanged. A line
is printed as each phase ends (collected, cleaned, deduplicated, sharded: count, seconds).
"""

import argparse
import functools
import json
import logging
import sys

from pipelines.prepare import PrepareConfig, run_prepare
from tfllm.progress import report_phase


def parse_overrides(values: dict, overrides: list[str]) -> dict:
    """Applies `--key=value` overrides (JSON values, or plain strings) to `values`."""
    values = dict(values)
    for text in overrides:
        if not text.startswith("--") or "=" not in text:
            raise ValueError(f"Overrides look like `--key=value`. Received: {text!r}")
        key, raw = text[2:].split("=", 1)
        try:
            values[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.replace("-", "_")] = raw
    return values


def beam_arguments(runner: str, workers: int, extra: list[str]) -> list[str]:
    """Beam pipeline options for `runner`; the local runner uses `workers` processes."""
    args = [f"--runner={runner}"]
    if runner == "DirectRunner" and workers > 1:
        args += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    return args + extra


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="JSON file of PrepareConfig fields")
    parser.add_argument("--runner", default="DirectRunner", help="Beam runner")
    parser.add_argument("--workers", type=int, default=1, help="local runner processes")
    args, overrides = parser.parse_known_args(argv)
    values = {}
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            values = json.load(f)
    config = PrepareConfig.from_dict(parse_overrides(values, overrides))
    print(f"prepare: {len(config.inputs)} input(s) -> {config.output} on {args.runner}")
    report = functools.partial(report_phase, "prepare")
    counters = run_prepare(config, beam_arguments(args.runner, args.workers, extra), report)
    for name, value in counters.items():
        print(f"{name:28s} {value}")
    print(f"report: {config.output}/report/report.html")
    return counters


if __name__ == "__main__":
    # Progress logs on the console; callers of `main` keep their own logging set-up.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    main()
