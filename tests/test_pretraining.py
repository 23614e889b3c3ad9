"""Whole pretraining runs from a RunConfig, through `tools/train.py`."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from tfllm import benchmarking
from tfllm.config import RunConfig
from tfllm.pretraining import pretrain
from tools import train

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LINES = [
    "the king said to the queen that the night was long",
    "my love is like the day and the sword is like the night",
    "a crown of gold for the queen and a sword for the king",
    "the night was dark and the day was bright",
]


@pytest.fixture
def corpus(tmp_path):
    for i in range(3):
        text = "\n\n".join("\n".join(LINES[j % 4] for j in range(i, i + 3)) for _ in range(6))
        (tmp_path / f"doc{i}.txt").write_text(text + "\n")
    return str(tmp_path / "doc*.txt")


@pytest.mark.parametrize(
    "task, model",
    [("causal_lm", "gpt_tiny"), ("masked_lm", "bert_tiny"), ("bert_pretraining", "bert_tiny")],
)
def test_tools_train_writes_a_complete_run(tmp_path, corpus, task, model):
    summary = train.main([
        f"--task={task}", f"--model={model}", f"--train_files={corpus}",
        f"--validation_files={corpus}", "--vocabulary_size=120", "--sequence_length=16",
        "--batch_size=4", "--steps=4", "--log_every=2", "--checkpoint_every=2",
        "--validation_steps=1", f"--output_dir={tmp_path / 'runs'}", "--name=r", "--quiet",
    ])  # fmt: skip
    run_dir = tmp_path / "runs" / "r"
    assert summary["step"] == 4 and summary["loss"] > 0 and "val_loss" in summary
    for name in ("config.json", "model.keras", "history.json", "curves.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "tokenizer" / "vocab.txt").is_file()
    assert RunConfig.load(run_dir / "config.json").task == task
    assert json.loads((run_dir / "history.json").read_text())["step"] == [2, 4]
    reloaded = keras.saving.load_model(run_dir / "model.keras")
    assert reloaded.count_params() > 0


def test_rerun_resumes_instead_of_restarting(tmp_path, corpus):
    config = RunConfig(
        train_files=(corpus,), vocabulary_size=120, sequence_length=16, batch_size=4, steps=3,
        log_every=1, checkpoint_every=1, output_dir=str(tmp_path), name="r",
    )  # fmt: skip
    pretrain(config, verbose=False)
    summary = pretrain(config.replace(steps=5), verbose=False)
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    assert history["step"] == [1, 2, 3, 4, 5] and summary["step"] == 5  # whole across resume


@pytest.mark.parametrize(
    "overrides, error",
    [
        (["--sequence_length=512", "--model=gpt_tiny"], "max_sequence_length"),
        (["--task=causal_lm", "--model=bert_tiny"], "needs a gpt preset"),
        (["--model=gpt_huge"], "must be one of"),
        (["--train_files=/nonexistent/*.txt"], "matches no files"),
    ],
)
def test_bad_runs_fail_before_training(tmp_path, corpus, overrides, error):
    args = [f"--train_files={corpus}", "--vocabulary_size=120", "--steps=2",
            f"--output_dir={tmp_path}", "--quiet", *overrides]  # fmt: skip
    with pytest.raises(ValueError, match=error):
        train.main(args)
    assert not list(tmp_path.glob("*/checkpoints"))


def test_a_failed_run_keeps_the_previous_model_and_dtype_policy(tmp_path, corpus, monkeypatch):
    config = RunConfig(
        train_files=(corpus,), vocabulary_size=120, sequence_length=16, batch_size=4, steps=1,
        log_every=1, checkpoint_every=1, output_dir=str(tmp_path), name="r",
        precision="mixed_bfloat16",
    )  # fmt: skip
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "model.keras").write_bytes(b"previous")

    def save_fails_halfway(model, filepath, *args, **kwargs):
        Path(filepath).write_bytes(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", save_fails_halfway)
    peak_dtypes = []  # a bfloat16 run's MFU divides by the bfloat16 matmul peak
    monkeypatch.setattr(benchmarking, "peak_flops", lambda dtype: peak_dtypes.append(dtype) or 1e12)
    keras.config.set_dtype_policy("mixed_float16")
    with pytest.raises(OSError, match="disk full"):
        pretrain(config, verbose=False)
    assert keras.config.dtype_policy().name == "mixed_float16"
    assert (tmp_path / "r" / "model.keras").read_bytes() == b"previous"
    assert not list((tmp_path / "r").glob(".model*"))
    assert peak_dtypes == ["bfloat16"]


def _config(tmp_path, corpus, **changes):
    values = dict(train_files=(corpus,), vocabulary_size=120, sequence_length=16, batch_size=4,
                  steps=2, log_every=1, checkpoint_every=1, output_dir=str(tmp_path),
                  name="r")  # fmt: skip
    return RunConfig(**{**values, **changes})


def test_a_resume_with_other_data_settings_fails_naming_them(tmp_path, corpus):
    config = _config(tmp_path, corpus)
    pretrain(config, verbose=False)
    with pytest.raises(ValueError, match=r"batch_size: 4 -> 8; seed: 0 -> 1\)"):
        pretrain(config.replace(batch_size=8, seed=1, steps=4), verbose=False)
    extra = Path(corpus).parent / "doc9.txt"
    extra.write_text("the king said to the queen\n")  # the same glob now matches more files
    with pytest.raises(ValueError, match=r"train_files matched: \[\] -> \[.*doc9.txt'\]"):
        pretrain(config.replace(steps=4), verbose=False)
    extra.unlink()
    resumable = dict(steps=3, log_every=3, checkpoint_every=3, validation_steps=5)
    assert pretrain(config.replace(**resumable), verbose=False)["step"] == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, model, data_format",
    [("causal_lm", "gpt_tiny", "text"), ("bert_pretraining", "bert_tiny", "jsonl")],
)
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(
    tmp_path, corpus, killed_after_checkpoint, task, model, data_format
):
    if data_format == "jsonl":
        for path in Path(corpus).parent.glob("doc*.txt"):
            documents = path.read_text().strip().split("\n\n")
            lines = "".join(json.dumps({"text": d}) + "\n" for d in documents)
            path.with_suffix(".jsonl").write_text(lines)
        corpus = corpus.replace(".txt", ".jsonl")
    # One vocabulary, given, for both runs.
    (tmp_path / "vocab").mkdir()
    words = sorted({w for line in LINES for w in line.split()})
    (tmp_path / "vocab" / "vocab.txt").write_text("\n".join(SPECIALS + words) + "\n")
    config = _config(tmp_path, corpus, task=task, model=model, data_format=data_format,
                     steps=6, log_every=3, checkpoint_every=3, shuffle_buffer=4,
                     tokenizer_path=str(tmp_path / "vocab"), name="whole")  # fmt: skip
    pretrain(config, verbose=False)
    with killed_after_checkpoint():
        pretrain(config.replace(name="killed"), verbose=False)
    assert (tmp_path / "killed" / "checkpoints" / "input-0" / "ckpt-3.index").is_file()
    pretrain(config.replace(name="killed"), verbose=False)
    whole, resumed = (
        keras.saving.load_model(tmp_path / n / "model.keras") for n in ("whole", "killed")
    )
    for a, b in zip(whole.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
