"""Memory over a 10-trial search: tfllm tuning against a plain KerasTuner loop.

    python -m tools.benchmark tuning [--trials 10] [--steps 4] [--write]

Both search the same tiny GPT (`gpt_tiny`, 1-2 layers, sequence 16, batch 4, `--steps`
steps a trial). The plain loop is `keras_tuner.RandomSearch` building and fitting the
Keras model in its own process (KerasTuner clears the Keras session before each build);
tfllm runs `tfllm.tuning` (one process per trial, on a small text corpus). Each variant
runs in a fresh process; recorded after every trial: the resident memory (VmRSS) of the
search process and its peak so far, and for tfllm the peak of the trial's own process.
`--write` updates the "Tuning memory" section of BENCHMARKS.md.
"""

import argparse
import datetime
import multiprocessing
import resource
import tempfile
from pathlib import Path

from tfllm.benchmarking import markdown_table
from tools.benchmarks import machine, write_section

DESCRIPTION = "Peak memory over a search: tfllm tuning against a plain KerasTuner loop."
SECTION = "## Tuning memory"
LINES = [
    "the king said to the queen that the night was long",
    "a crown of gold for the queen",
    "my love is like the day and the sword is like the night",
    "the night was dark",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=10, help="trials per search")
    parser.add_argument("--steps", type=int, default=4, help="training steps per trial")


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return float(status["VmRSS"].split()[0]) / 1024, peak


def plain_search(trials: int, steps: int, directory: str) -> list[dict]:
    import keras
    import keras_tuner
    import numpy as np

    from tfllm.losses import SparseCategoricalCrossentropy
    from tfllm.models import CausalLM, GPTBackbone

    ids = np.random.default_rng(0).integers(0, 1024, (64, 17)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones_like(ids[:, :-1])}

    def build(hp):
        layers = hp.Int("num_layers", 1, 2)
        model = CausalLM(GPTBackbone.from_preset("gpt_tiny", num_layers=layers))
        optimizer = keras.optimizers.AdamW(hp.Float("learning_rate", 1e-4, 1e-2, sampling="log"))
        model.compile(optimizer, SparseCategoricalCrossentropy())
        return model

    memory = []

    class Measured(keras_tuner.RandomSearch):
        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            memory.append(dict(zip(("rss", "peak"), rss_mb(), strict=True)))

    tuner = Measured(build, "val_loss", max_trials=trials, directory=directory, seed=0)
    tuner.search(
        x,
        ids[:, 1:],
        batch_size=4,
        steps_per_epoch=steps,
        epochs=1,
        validation_data=(x, ids[:, 1:]),
        verbose=0,
    )
    return memory


def tfllm_search(trials: int, steps: int, directory: str) -> list[dict]:
    from tfllm.config import RunConfig
    from tfllm.tuning import RunConfigHyperModel, RunConfigTuner, make_objective, make_oracle

    corpus = Path(directory) / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(LINES[i:] + LINES[:i]) for i in range(4)) * 4)
    space = {"num_layers": [1, 2], "learning_rate": {"min": 1e-4, "max": 1e-2, "sampling": "log"}}
    base = RunConfig(
        train_files=(str(corpus),),
        validation_files=(str(corpus),),
        steps=steps,
        vocabulary_size=120,
        sequence_length=16,
        batch_size=4,
        log_every=steps,
        validation_steps=1,
        search_space=space,
    )
    memory = []

    class Measured(RunConfigTuner):
        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            trial_peak = trial.metrics.get_last_value("peak_memory_mb")
            memory.append(dict(zip(("rss", "peak"), rss_mb(), strict=True), trial=trial_peak))

    oracle = make_oracle(base, "random", make_objective(base, "val_loss"), trials, seed=0)
    Measured(oracle, RunConfigHyperModel(base), directory=directory, project_name="search").search()
    return memory


def run(args: argparse.Namespace, command: str) -> None:
    context = multiprocessing.get_context("spawn")  # each search in a fresh process
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        for name, search in (("plain", plain_search), ("tfllm", tfllm_search)):
            with context.Pool(1) as pool:
                folder = str(Path(directory) / name)
                Path(folder).mkdir()
                results[name] = pool.apply(search, (args.trials, args.steps, folder))
    plain, ours = results["plain"], results["tfllm"]
    rows = [
        [
            i + 1,
            f"{p['rss']:.0f}",
            f"{p['peak']:.0f}",
            f"{o['rss']:.0f}",
            f"{o['peak']:.0f}",
            f"{o['trial']:.0f}",
        ]
        for i, (p, o) in enumerate(zip(plain, ours, strict=True))
    ]
    growth = [
        f"{r[-1]['peak'] - r[0]['peak']:+.0f} MiB" for r in (plain, ours)
    ]  # peak after the last trial minus peak after the first
    table = markdown_table(
        [
            "trial",
            "plain RSS",
            "plain peak",
            "tfllm search RSS",
            "tfllm search peak",
            "tfllm trial peak",
        ],
        rows,
    )
    body = (
        f"`{command}` on {machine()}, {datetime.date.today()}. MiB after each trial; "
        f"peak = high-water mark so far. Growth of the peak from trial 1 to {len(rows)}: "
        f"plain KerasTuner loop {growth[0]}, tfllm {growth[1]} (each trial's own process "
        f"peaks near the same value and gives everything back when it ends).\n\n{table}"
    )
    print(body)
    if args.write:
        write_section(SECTION, body)
