"""Benchmark subcommands of `python -m tools.benchmark`: one module each.

A module defines `DESCRIPTION`, `add_arguments(parser)` and `run(args, command)`; `run`
prints its table and, with `--write`, replaces its own section of BENCHMARKS.md through
`write_section`.
"""

import datetime
import os
import platform
import subprocess
from pathlib import Path

from tfllm.benchmarking import interleaved_times, replace_section
from tfllm.io import atomic_write

BENCHMARKS_FILE = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"


def machine() -> str:
    """`lscpu` model name, core count and wide-vector extensions (platform fallback)."""
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        info = ""
    fields = {
        k.strip(): v.strip()
        for k, v in (line.split(":", 1) for line in info.splitlines() if ":" in line)
    }
    model = fields.get("Model name") or platform.processor() or platform.machine()
    flags = fields.get("Flags", "").split()
    extras = [name for flag, name in (("avx512f", "AVX-512"), ("amx_tile", "AMX")) if flag in flags]
    return ", ".join([model, f"{os.cpu_count()} cores", *extras])


def write_section(heading: str, body: str) -> None:
    """Replaces (or appends) the `heading` section of BENCHMARKS.md, atomically."""
    text = BENCHMARKS_FILE.read_text() if BENCHMARKS_FILE.exists() else "# tfllm benchmarks\n"
    atomic_write(BENCHMARKS_FILE, replace_section(text, heading, body))
    print(f"updated {BENCHMARKS_FILE}")


def header(command: str) -> str:
    """The first lines of every BENCHMARKS.md section: machine, date, load and command."""
    return (
        f"Machine: {machine()}. Date: {datetime.date.today().isoformat()}. Load average at "
        f"the end\n(shared machine): {os.getloadavg()[0]:.1f}.\nCommand: `{command.strip()}`"
    )


def interleaved_results(timers: dict, rounds: int, warmup: int = 1) -> tuple[dict, dict]:
    """`interleaved_times` for timers returning `(seconds, result)`.

    Returns `({name: [seconds per round]}, {name: the last result})`, e.g. the tokens a
    generator produced, so that a benchmark can check every side computed the same thing.
    """
    results = {}

    def keep(name, timer):
        def timed():
            seconds, results[name] = timer()
            return seconds

        return timed

    wrapped = {name: keep(name, timer) for name, timer in timers.items()}
    return interleaved_times(wrapped, rounds, warmup), results
