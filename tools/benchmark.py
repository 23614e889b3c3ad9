"""Side-by-side benchmarks; `--write` records them in BENCHMARKS.md.

    python -m tools.benchmark <command> [options] [--write]

Each command is a module of `tools/benchmarks/` (train, generate, tokenize, ...); run
`python -m tools.benchmark --help` for the list and `<command> --help` for its options.
"""

import argparse
import importlib
import pkgutil
import sys

from tools import benchmarks


def commands() -> dict:
    """`{name: module}` for every module of `tools/benchmarks/`."""
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__))
    return {name: importlib.import_module(f"tools.benchmarks.{name}") for name in names}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    modules = commands()
    for name, module in modules.items():
        sub = subparsers.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        module.add_arguments(sub)
        sub.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)
    modules[args.command].run(args, "python -m tools.benchmark " + " ".join(argv))


if __name__ == "__main__":
    main()
