"""Hyperparameter search over `RunConfig`s with KerasTuner, one process per trial.

A trial is the base config with sampled values (`RunConfigHyperModel.build`), trained by
the same path as `tools/train.py` (`pretrain` / `finetune`) in its own Python process:
all its memory (graphs, weights, accelerator memory, which TensorFlow never hands back
in-process) is released when the process ends, so memory stays flat trial after trial
(keras-tuner #395, #873), and a crash, NaN or OOM fails one trial, not the search.

`<directory>/` receives `search/` (KerasTuner's state: an interrupted search resumes
there; a trial cut off re-runs, a pretraining trial from its last checkpoint),
`runs/trial_<id>/` (each trial's run folder, with TensorBoard `logs/` and `trial.log`),
`trials.csv`, `trials.md`, `objective.png` and `best_config.json` (retrain with
`tools/train.py --config`).

The search space is the config's `search_space`: `{name: [choices]}`,
`{name: {"values": [...]}}` or `{name: {"min": a, "max": b[, "step": s][, "sampling":
"log"]}}`, where a name is a `RunConfig` field (`learning_rate`, `warmup_steps`,
`batch_size`, `optimizer`, `layerwise_lr_decay`, ...) or a model setting (`MODEL_KEYS`,
put into `model_overrides`).

Example:
>>> base = RunConfig(steps=200, search_space={"learning_rate": {"min": 1e-4, "max": 1e-2,
...     "sampling": "log"}, "num_layers": [1, 2], "optimizer": ["adamw", "lamb"]})
>>> parse_search_space(base)["num_layers"]  # checked before the first trial
{'type': 'int', 'values': [1, 2]}
>>> trial = apply_values(base, {"learning_rate": 3e-3, "num_layers": 1})  # what a trial trains
>>> trial.learning_rate, trial.model_overrides
(0.003, {'num_layers': 1})
>>> best = tune(base, "tuning/gpt", tuner="bayesian", objective="val_perplexity")  # doctest: +SKIP
"""

import csv
import ctypes
import dataclasses
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras_tuner
from keras_tuner.engine import base_tuner
from keras_tuner.engine import trial as trial_module

from tfllm.benchmarking import markdown_table
from tfllm.config import FINETUNING_TASKS, RunConfig
from tfllm.io import atomic_write
from tfllm.plots import new_figure, save_figure

TUNERS = ("random", "grid", "bayesian", "hyperband")
# Backbone settings a search may vary (into `model_overrides`), with their types.
MODEL_KEYS = dict(num_layers=int, num_heads=int, num_key_value_heads=int, hidden_dim=int,
                  intermediate_dim=int, dropout=float)  # fmt: skip
FIXED_FIELDS = ("name", "output_dir", "task", "search_space")  # what a search never varies
MINIMIZED = ("loss", "perplexity")


def parse_search_space(config: RunConfig) -> dict[str, dict]:
    """`config.search_space` normalised to `{name: {"values": [...]} | {"min", "max",
    "step", "sampling"}}`, each with its `type`; raises `ValueError` / `TypeError` naming the
    entry when it is empty, unknown, contradictory or gives an invalid `RunConfig`."""
    if not config.search_space:
        raise ValueError("`search_space` is empty: give at least one hyperparameter to tune.")
    types = {f.name: f.type for f in dataclasses.fields(RunConfig)}
    space = {}
    for name, spec in config.search_space.items():
        kind = MODEL_KEYS.get(name) or types.get(name)
        if name in FIXED_FIELDS or kind not in (int, float, str):
            tunable = sorted(n for n, t in types.items() if t in (int, float, str))
            tunable = [n for n in tunable if n not in FIXED_FIELDS] + sorted(MODEL_KEYS)
            raise ValueError(f"`search_space` key {name!r} cannot be tuned. Tunable: {tunable}")
        space[name] = _parse_entry(name, spec, kind)
        for value in space[name].get("values") or (space[name]["min"], space[name]["max"]):
            try:
                apply_values(config, {name: value})
            except (ValueError, TypeError) as error:
                raise ValueError(
                    f"`search_space[{name!r}]` value {value!r} makes an invalid RunConfig: {error}"
                ) from None
    return space


def _parse_entry(name: str, spec, kind) -> dict:
    if isinstance(spec, list):
        spec = {"values": spec}
    if not isinstance(spec, dict):
        raise TypeError(f"`search_space[{name!r}]` must be a list or a dict. Received: {spec!r}")
    unknown = sorted(set(spec) - {"values", "min", "max", "step", "sampling"})
    ranged = "min" in spec or "max" in spec
    if unknown or ("values" in spec) == ranged:
        raise ValueError(
            f"`search_space[{name!r}]` needs either `values` or `min` and `max` (with optional "
            f"`step`, `sampling`). Received: {spec!r}"
        )
    if "values" in spec:
        values = spec["values"]
        if not values or len(set(map(repr, values))) < len(values):
            raise ValueError(
                f"`search_space[{name!r}]` values must be distinct, at least one. "
                f"Received: {values!r}"
            )
        if not all(_fits(kind, v) for v in values):
            raise TypeError(
                f"`search_space[{name!r}]` values must be {kind.__name__}. Received: {values!r}"
            )
        return {"type": kind.__name__, "values": [kind(v) for v in values]}
    if kind is str:
        raise ValueError(f"`search_space[{name!r}]` is a string setting: give `values`.")
    low, high, step = spec.get("min"), spec.get("max"), spec.get("step")
    sampling = spec.get("sampling", "linear")
    if not all(_fits(kind, v) for v in (low, high, step) if v is not None):
        raise TypeError(
            f"`search_space[{name!r}]` bounds must be {kind.__name__}. Received: {spec!r}"
        )
    if low is None or high is None or not low < high:
        raise ValueError(f"`search_space[{name!r}]` needs `min` < `max`. Received: {spec!r}")
    if sampling not in ("linear", "log") or (sampling == "log" and low <= 0):
        raise ValueError(
            f"`search_space[{name!r}]` sampling must be linear, or log with "
            f"`min` > 0. Received: {spec!r}"
        )
    if step is not None and not 0 < step <= high - low:
        raise ValueError(
            f"`search_space[{name!r}]` `step` must be in (0, max - min]. Received: {spec!r}"
        )
    entry = {"type": kind.__name__, "min": kind(low), "max": kind(high), "sampling": sampling}
    return entry | ({"step": kind(step)} if step is not None else {})


def _fits(kind, value) -> bool:
    return type(value) is kind or (kind is float and type(value) is int)


def apply_values(base: RunConfig, values: dict) -> RunConfig:
    """`base` with tuned `values` (model settings go into `model_overrides`), searchless."""
    fields = {k: v for k, v in values.items() if k not in MODEL_KEYS and not k.startswith("tuner/")}
    model = {k: v for k, v in values.items() if k in MODEL_KEYS}
    overrides = {**base.model_overrides, **model}
    return base.replace(**fields, model_overrides=overrides, search_space={})


def objective_names(config: RunConfig) -> tuple[str, ...]:
    """The metrics a run of `config` reports that a search may optimise."""
    if config.task in FINETUNING_TASKS:  # only validation scores: tuning on test is leakage
        score = "macro_f1" if config.task == "classification" else "entity_f1"
        return tuple(f"val_{n}" for n in ("loss", "accuracy", score))
    if config.task == "bert_pretraining":
        names = ["loss"] + [f"{h}_{m}" for h in ("mlm", "nsp") for m in ("loss", "accuracy")]
        names.append("mlm_perplexity")
    else:
        names = ["loss", "perplexity", "accuracy"]
    validated = config.validation_files or not config.train_files  # built-in corpus holds out
    names += [f"val_{n}" for n in names] if validated else []
    return (*names, "tokens_per_second", "mfu")


def make_objective(config: RunConfig, name: str, direction: str = "") -> keras_tuner.Objective:
    """`name` (a metric of `objective_names`) with its direction, `min` or `max` (empty:
    inferred from the name: losses and perplexities go down, scores up)."""
    known = objective_names(config)
    if name not in known:
        raise ValueError(
            f"`objective` must be one of {list(known)} for `task={config.task}`. Received: {name!r}"
        )
    if not direction:
        direction = "min" if name.endswith(MINIMIZED) else "max"
    if direction not in ("min", "max"):
        raise ValueError(f"`direction` must be min or max. Received: {direction!r}")
    return keras_tuner.Objective(name, direction)


class RunConfigHyperModel(keras_tuner.HyperModel):
    """`build(hp)` gives the base `RunConfig` with sampled values; `fit` trains it in a
    child process and returns its final metrics (plus `seconds`, `peak_memory_mb`).

    Args:
        base: the base config; its `search_space` says what to sample.
    """

    def __init__(self, base: RunConfig):
        super().__init__(name="run_config")
        self.base = base
        self.space = parse_search_space(base)

    def build(self, hp: keras_tuner.HyperParameters) -> RunConfig:
        values = {}
        for name, spec in self.space.items():
            if "values" in spec:
                values[name] = hp.Choice(name, spec["values"], ordered=spec["type"] != "str")
            else:
                make = hp.Int if spec["type"] == "int" else hp.Float
                values[name] = make(
                    name, spec["min"], spec["max"], step=spec.get("step"), sampling=spec["sampling"]
                )
        return apply_values(self.base, values)

    def fit(self, hp, model: RunConfig, *args, **kwargs) -> dict[str, float]:
        return run_trial_process(model)


def run_trial_process(config: RunConfig) -> dict[str, float]:
    """Trains `config` in a child Python process; its output goes to `run_dir/trial.log`.

    Raises `keras_tuner.errors.FailedTrialError` (the trial is recorded as failed, the
    search goes on) when the process fails or reports a non-finite metric."""
    run_dir = config.run_dir
    config.save(run_dir / "config.json")
    summary_path = run_dir / "summary.json"
    summary_path.unlink(missing_ok=True)
    started = time.perf_counter()
    paths = [str(run_dir / "config.json"), str(summary_path), str(os.getpid())]
    command = [sys.executable, "-m", "tfllm.tuning", *paths]
    with open(run_dir / "trial.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:  # wait4: the child's own peak memory, not the maximum over all children
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode or not summary_path.is_file():
        tail = (run_dir / "trial.log").read_text(errors="replace")[-2000:]
        raise keras_tuner.errors.FailedTrialError(
            f"The trial process exited with {process.returncode}. End of {run_dir}/trial.log:\n"
            + tail
        )
    summary = json.loads(summary_path.read_text())
    metrics = {
        k: float(v)
        for k, v in summary.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        raise keras_tuner.errors.FailedTrialError(f"The trial reported non-finite {bad}.")
    metrics["seconds"] = time.perf_counter() - started
    metrics["peak_memory_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    return metrics


class RunConfigTuner(base_tuner.BaseTuner):
    """KerasTuner's search loop (oracle, resume, chief/workers) over `RunConfig` trials.

    Each trial runs in `<directory>/runs/trial_<id>/`. Under Hyperband a trial trains
    `tuner/epochs * log_every` steps (from scratch, not continuing a lower-budget trial).
    """

    def run_trial(self, trial, *args, **kwargs) -> dict[str, float]:
        return self.hypermodel.fit(trial.hyperparameters, self.trial_config(trial))

    def trial_config(self, trial) -> RunConfig:
        """The `RunConfig` that `trial` trains."""
        hp = trial.hyperparameters
        config = self.hypermodel.build(hp)
        runs, name = str(Path(self.directory) / "runs"), f"trial_{trial.trial_id}"
        if "tuner/epochs" not in hp.values:
            return config.replace(output_dir=runs, name=name)
        steps = hp.values["tuner/epochs"] * config.log_every
        warmup = min(config.warmup_steps, steps)
        return config.replace(output_dir=runs, name=name, steps=steps, warmup_steps=warmup)


def make_oracle(
    config: RunConfig,
    tuner: str,
    objective: keras_tuner.Objective,
    max_trials: int = 10,
    seed: int = 0,
) -> keras_tuner.Oracle:
    """The KerasTuner oracle of `tuner`; Hyperband's largest budget is `config.steps`
    (in units of `log_every` steps) and it ignores `max_trials`."""
    if tuner not in TUNERS:
        raise ValueError(f"`tuner` must be one of {TUNERS}. Received: {tuner!r}")
    if max_trials < 1:
        raise ValueError(f"`max_trials` must be positive. Received: {max_trials}")
    oracles = keras_tuner.oracles
    if tuner == "hyperband":
        return oracles.HyperbandOracle(
            objective, max_epochs=max(config.steps // config.log_every, 1), seed=seed
        )
    oracle = {
        "random": oracles.RandomSearchOracle,
        "grid": oracles.GridSearchOracle,
        "bayesian": oracles.BayesianOptimizationOracle,
    }[tuner]
    return oracle(objective, max_trials=max_trials, seed=seed)


def tune(
    config: RunConfig,
    directory,
    tuner: str = "random",
    objective: str = "val_loss",
    direction: str = "",
    max_trials: int = 10,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Searches `config.search_space`; returns the best trial (empty on a worker).

    Everything is checked before the first trial. Rerunning the same command resumes the
    search in `directory` (finished trials are kept); `overwrite` starts over. With
    `KERASTUNER_TUNER_ID` / `KERASTUNER_ORACLE_IP` / `KERASTUNER_ORACLE_PORT` set, the
    `chief` serves the oracle and writes the outputs, workers run trials.
    """
    hypermodel = RunConfigHyperModel(config)
    oracle = make_oracle(
        config, tuner, make_objective(config, objective, direction), max_trials, seed
    )
    directory = Path(directory)
    settings = dict(
        config=config.to_dict(),
        tuner=tuner,
        objective=oracle.objective.name,
        direction=oracle.objective.direction,
        max_trials=max_trials,
        seed=seed,
    )
    _check_same_search(directory / "search.json", settings, overwrite)
    search = RunConfigTuner(
        oracle, hypermodel, directory=str(directory), project_name="search", overwrite=overwrite
    )
    search.search()
    if os.environ.get("KERASTUNER_TUNER_ID", "chief") != "chief":
        return {}
    return write_report(search.oracle, hypermodel, directory)


def _check_same_search(path: Path, settings: dict, overwrite: bool) -> None:
    if path.is_file() and not overwrite and json.loads(path.read_text()) != settings:
        raise ValueError(
            f"{path.parent} holds a different search ({path}): use another directory, the "
            "same settings to resume, or `overwrite`."
        )
    atomic_write(path, json.dumps(settings, indent=1))


def write_report(oracle, hypermodel: RunConfigHyperModel, directory: Path) -> dict:
    """`trials.csv`, `trials.md`, `objective.png` and `best_config.json` of a search."""
    name = oracle.objective.name
    keys = list(hypermodel.space)
    rows = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        metrics = trial.metrics
        last = {
            k: metrics.get_last_value(k) if metrics.exists(k) else None for k in (name, "seconds")
        }
        values = {k: trial.hyperparameters.values.get(k) for k in keys}
        rows.append({"trial": trial_id, "status": trial.status, **values, **last})
    text = io.StringIO()
    writer = csv.DictWriter(text, list(rows[0]) if rows else ["trial"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(directory / "trials.csv", text.getvalue())
    cells = [[f"{v:.4g}" if isinstance(v, float) else v for v in r.values()] for r in rows]
    atomic_write(directory / "trials.md", markdown_table(list(rows[0]), cells) + "\n")
    done = [r for r in rows if r[name] is not None]
    plot_trials(
        [r[name] for r in rows], name, oracle.objective.direction, directory / "objective.png"
    )
    result = {
        "directory": str(directory),
        "objective": name,
        "trials": len(done),
        "failed": sum(r["status"] == trial_module.TrialStatus.FAILED for r in rows),
    }
    if done:
        best = oracle.get_best_trials(1)[0]
        values = {
            k: best.hyperparameters.values[k] for k in keys if k in best.hyperparameters.values
        }
        base = hypermodel.base
        tuned = apply_values(base, values).replace(name=f"{base.name}-tuned")
        tuned.save(directory / "best_config.json")
        result.update(best_trial=best.trial_id, best_value=best.score, best_hyperparameters=values)
    return result


def plot_trials(values: list, name: str, direction: str, path) -> Path:
    """PNG of `values` (one per trial, `None` = failed, drawn as red crosses) and the best
    so far, written atomically."""
    figure = new_figure(figsize=(6, 3.5))
    axis = figure.subplots()
    done = [(i, v) for i, v in enumerate(values) if v is not None]
    if done:
        order, scores = zip(*done, strict=True)
        pick = min if direction == "min" else max
        best = [pick(scores[: i + 1]) for i in range(len(scores))]
        axis.plot(order, scores, "o", label="trial")
        axis.step(order, best, where="post", label="best so far")
        failed = [i for i, v in enumerate(values) if v is None]
        axis.plot(failed, [pick(scores)] * len(failed), "rx", label="failed")
        axis.legend()
    axis.set_xlabel("trial")
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.set_ylabel(name)
    axis.grid(alpha=0.3)
    return save_figure(figure, path)


def _trial_main(config_path: str, summary_path: str, parent_pid: str) -> None:
    """Child process of `run_trial_process`: trains, then writes the summary atomically."""
    if sys.platform.startswith("linux"):  # die with the search (SIGKILL included)
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent_pid):
        sys.exit("The search process that started this trial has ended.")
    from tfllm.finetuning import finetune  # heavy: imported only in the child
    from tfllm.pretraining import pretrain

    config = RunConfig.load(config_path)
    run = finetune if config.task in FINETUNING_TASKS else pretrain
    summary = run(config, verbose=False)
    atomic_write(Path(summary_path), json.dumps(summary, indent=1))


if __name__ == "__main__":
    _trial_main(*sys.argv[1:])
