"""Hyperparameter search over RunConfigs: space checks, trials in processes, outputs,
failed trials, resume after SIGKILL, chief + two workers."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras_tuner
import pytest

from tfllm.config import RunConfig
from tfllm.tuning import (
    TUNERS,
    RunConfigHyperModel,
    RunConfigTuner,
    apply_values,
    make_objective,
    make_oracle,
    parse_search_space,
)
from tools import tune

LINES = [
    "the king said to the queen that the night was long",
    "my love is like the day and the sword is like the night",
    "a crown of gold for the queen and a sword for the king",
    "the night was dark and the day was bright",
]
ROOT = Path(__file__).resolve().parents[1]
# keras-tuner's oracle lock calls threading.currentThread() (deprecated) on every request.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras_tuner")


@pytest.fixture
def base(tmp_path):
    corpus = tmp_path / "doc.txt"
    corpus.write_text("\n\n".join("\n".join(LINES[i:] + LINES[:i]) for i in range(4)) * 3)
    return RunConfig(
        train_files=(str(corpus),),
        validation_files=(str(corpus),),
        vocabulary_size=120,
        sequence_length=16,
        batch_size=4,
        steps=2,
        log_every=2,
        checkpoint_every=1,
        validation_steps=1,
        search_space={"learning_rate": [1e-3, 3e-3]},
    )


def test_search_space_is_parsed_and_applied(base):
    space = {
        "learning_rate": {"min": 1e-4, "max": 1e-2, "sampling": "log"},
        "num_layers": {"min": 1, "max": 3, "step": 2},
        "optimizer": ["adamw", "lamb"],
        "dropout": [0, 0.1],
        "batch_size": {"values": [4, 8]},
    }
    parsed = parse_search_space(base.replace(search_space=space))
    assert parsed["learning_rate"] == {"type": "float", "min": 1e-4, "max": 1e-2, "sampling": "log"}
    assert parsed["num_layers"]["step"] == 2 and parsed["dropout"]["values"] == [0.0, 0.1]
    hp = keras_tuner.HyperParameters()
    config = RunConfigHyperModel(base.replace(search_space=space)).build(hp)
    # Defaults: the first choice, the minimum of a range; model settings in model_overrides.
    assert config.learning_rate == 1e-4 and config.optimizer == "adamw"
    assert config.model_overrides == {"num_layers": 1, "dropout": 0.0}
    assert config.search_space == {} and config.batch_size == 4
    assert sorted(hp.values) == sorted(space)
    tuned = apply_values(base.replace(model_overrides={"dropout": 0.2}), {"num_layers": 3})
    assert tuned.model_overrides == {"dropout": 0.2, "num_layers": 3}


@pytest.mark.parametrize(
    "space, error, match",
    [
        ({}, ValueError, "empty"),
        ({"learning_rat": [1e-3]}, ValueError, "cannot be tuned"),
        ({"name": ["a", "b"]}, ValueError, "cannot be tuned"),
        ({"train_files": [["a"]]}, ValueError, "cannot be tuned"),
        ({"learning_rate": {"min": 1e-2, "max": 1e-4}}, ValueError, "`min` < `max`"),
        ({"learning_rate": {"min": 0.0, "max": 1.0, "sampling": "log"}}, ValueError, "log"),
        ({"learning_rate": {"values": [1e-3], "min": 1e-4}}, ValueError, "either"),
        ({"learning_rate": []}, ValueError, "at least one"),
        ({"learning_rate": [1e-3, 1e-3]}, ValueError, "distinct"),
        ({"num_layers": {"min": 1.5, "max": 3}}, TypeError, "int"),
        ({"num_layers": {"min": 1, "max": 3, "step": 5}}, ValueError, "step"),
        ({"optimizer": {"min": 1, "max": 2}}, ValueError, "string setting"),
        ({"optimizer": ["adamw", "sgd"]}, ValueError, "optimizer"),
        ({"warmup_steps": {"min": 0, "max": 10}}, ValueError, "warmup_steps"),  # steps=2
        ({"layerwise_lr_decay": [0.8]}, ValueError, "fine-tuning settings"),
        ({"learning_rate": 0.1}, TypeError, "list or a dict"),
    ],
)
def test_bad_search_spaces_fail_before_any_trial(base, tmp_path, space, error, match):
    with pytest.raises(error, match=match):
        tune.main(["--directory", str(tmp_path / "t"), *_args(base.replace(search_space=space))])
    assert not (tmp_path / "t").exists()


def test_objectives_and_directions(base):
    assert make_objective(base, "val_perplexity").direction == "min"
    assert make_objective(base, "val_accuracy").direction == "max"
    assert make_objective(base, "val_accuracy", "min").direction == "min"
    classify = RunConfig(task="classification", dataset="rotten_tomatoes")
    assert make_objective(classify, "val_macro_f1").direction == "max"
    for config, name in [
        (base, "val_f1"),
        (classify, "test_accuracy"),
        (base.replace(validation_files=()), "val_loss"),
    ]:
        with pytest.raises(ValueError, match="`objective` must be one of"):
            make_objective(config, name)
    with pytest.raises(ValueError, match="`direction`"):
        make_objective(base, "loss", "down")
    objective = make_objective(base, "loss")
    with pytest.raises(ValueError, match="`tuner`"):
        make_oracle(base, "evolution", objective)
    assert make_oracle(base.replace(steps=8), "hyperband", objective).max_epochs == 4
    oracles = {name: type(make_oracle(base, name, objective, 3)).__name__ for name in TUNERS}
    assert oracles["bayesian"] == "BayesianOptimizationOracle"  # scipy + scikit-learn present


def test_hyperband_budget_is_a_number_of_evaluation_intervals(base, tmp_path):
    base = base.replace(steps=8, warmup_steps=6)
    oracle = make_oracle(base, "hyperband", make_objective(base, "val_loss"))
    tuner = RunConfigTuner(oracle, RunConfigHyperModel(base), directory=str(tmp_path))
    hp = tuner.oracle.get_space()
    hp.values.update({"learning_rate": 3e-3, "tuner/epochs": 2})
    config = tuner.trial_config(keras_tuner.engine.trial.Trial(hp, trial_id="0007"))
    assert (config.steps, config.warmup_steps, config.learning_rate) == (4, 4, 3e-3)
    assert config.run_dir == tmp_path / "runs" / "trial_0007"


def test_search_writes_outputs_and_records_a_failed_trial(base, tmp_path):
    # lr 1e12 makes the loss non-finite: that trial fails, the search goes on.
    config = base.replace(search_space={"learning_rate": [1e-3, 1e12]})
    result = tune.main(
        [
            "--directory",
            str(tmp_path / "t"),
            "--tuner",
            "grid",
            "--objective",
            "val_perplexity",
            *_args(config),
        ]
    )
    out = tmp_path / "t"
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [(r["trial"], r["status"]) for r in rows] == [("00", "COMPLETED"), ("01", "FAILED")]
    assert "FloatingPointError" in (out / "runs" / "trial_01" / "trial.log").read_text()
    summary = json.loads((out / "runs" / "trial_00" / "summary.json").read_text())
    # The value in the table is the one the trial's own process logged.
    assert float(rows[0]["val_perplexity"]) == pytest.approx(summary["val_perplexity"])
    assert result["best_value"] == pytest.approx(summary["val_perplexity"])
    assert result["trials"] == 1 and result["failed"] == 1
    assert (out / "objective.png").read_bytes()[:4] == b"\x89PNG"
    assert "| trial | status | learning_rate |" in (out / "trials.md").read_text()
    assert (out / "runs" / "trial_00" / "logs").is_dir()  # TensorBoard per trial
    best = RunConfig.load(out / "best_config.json")  # what tools/train.py --config reads
    assert best == base.replace(search_space={}, name="run-tuned")
    with pytest.raises(ValueError, match="different search"):
        tune.main(["--directory", str(out), "--tuner", "random", *_args(config)])


@pytest.mark.slow
def test_killed_search_resumes_without_rerunning_finished_trials(base, tmp_path):
    space = {"learning_rate": [1e-3, 2e-3, 3e-3]}
    config = base.replace(search_space=space, steps=24, log_every=4, checkpoint_every=4)
    out = tmp_path / "t"
    args = ["--directory", str(out), "--tuner", "grid", "--max_trials", "2", *_args(config)]
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.tune", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = out / "runs" / "trial_0" / "summary.json"
    checkpoints = out / "runs" / "trial_1" / "checkpoints"
    _wait_for(lambda: _latest_step(checkpoints) >= 8 or process.poll() is not None, 300)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert first.is_file() and not (out / "runs" / "trial_1" / "summary.json").exists()
    finished = first.stat().st_mtime_ns
    _wait_for(lambda: not _trial_processes(out), 30)  # the trial died with its search
    resumed_at = _latest_step(checkpoints)
    before = json.loads((out / "runs" / "trial_1" / "history.json").read_text())
    result = tune.main(args)
    assert first.stat().st_mtime_ns == finished  # trial 0 was not trained again
    assert result["trials"] == 2 and result["failed"] == 0
    # Trial 1 went on from its checkpoint: the history up to it is kept as measured (a
    # restart would have measured its speed anew), and the later steps follow.
    history = json.loads((out / "runs" / "trial_1" / "history.json").read_text())
    assert history["step"] == list(range(4, 25, 4))
    kept = [i for i, step in enumerate(before["step"]) if step <= resumed_at]
    assert len(kept) >= 2
    speeds = [history["tokens_per_second"][i] for i in kept]
    assert speeds == [before["tokens_per_second"][i] for i in kept]


@pytest.mark.slow
def test_chief_and_two_workers_share_one_search(base, tmp_path, monkeypatch):
    config = base.replace(search_space={"learning_rate": [1e-3, 2e-3, 3e-3]})
    out = tmp_path / "t"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port)}
    args = ["--directory", str(out), "--tuner", "grid", "--max_trials", "3", *_args(config)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tools.tune", *args],
            cwd=ROOT,
            env={**os.environ, **env, "KERASTUNER_TUNER_ID": f"tuner{i}"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(2)
    ]
    for name, value in {**env, "KERASTUNER_TUNER_ID": "chief"}.items():
        monkeypatch.setenv(name, value)
    result = tune.main(args)  # the chief serves the oracle until all trials end
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    assert result["trials"] == 3
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert sorted(float(r["learning_rate"]) for r in rows) == [1e-3, 2e-3, 3e-3]
    assert {r["status"] for r in rows} == {"COMPLETED"}
    # Each worker saves its state after each trial it ran: both took part.
    assert (out / "search" / "tuner0.json").is_file() and (out / "search" / "tuner1.json").is_file()


def _args(config: RunConfig) -> list[str]:
    path = Path(config.train_files[0]).with_name("base.json")
    config.save(path)
    return ["--config", str(path)]


def _wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {seconds} s")
        time.sleep(0.2)


def _latest_step(checkpoints: Path) -> int:
    index = checkpoints / "checkpoint"
    text = index.read_text() if index.is_file() else 'model_checkpoint_path: "ckpt-0"'
    return int(text.split('"')[1].rsplit("-", 1)[1])


def _trial_processes(out: Path) -> list[str]:
    lines = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in lines.splitlines() if "tfllm.tuning" in line and str(out) in line]
