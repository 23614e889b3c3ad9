"""Side-by-side benchmarks; `--write` records them in BENCHMARKS.md.

    python -m tools.benchmark train [--models gpt,bert] [--write]   # training tokens/s
    python -m tools.benchmark generate [--batch_sizes 1,8]          # generation ms/token

Run `python -m tools.benchmark <command> --help` for each command's options.
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tools.benchmarks import generate, train  # noqa: E402

COMMANDS = {"train": train, "generate": generate}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        sub = commands.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        module.add_arguments(sub)
        sub.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)
    COMMANDS[args.command].run(args, "python -m tools.benchmark " + " ".join(argv))


if __name__ == "__main__":
    main()
