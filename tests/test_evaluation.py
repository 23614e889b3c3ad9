"""tfllm.evaluation / tools/evaluate.py: scores against scikit-learn and Keras metrics."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as sk

from pipelines.datasets import pretraining_dataset_fn
from tests.test_finetuning import files, finetune_config  # noqa: F401 (fixture)
from tests.test_pretraining import corpus  # noqa: F401 (fixture)
from tfllm.config import RunConfig
from tfllm.evaluation import classification_scores, evaluate_run
from tfllm.finetuning import finetune
from tfllm.metrics import Perplexity
from tfllm.pretraining import build_preprocessor, pretrain
from tfllm.tokenizers import load_tokenizer
from tools import evaluate


def test_classification_scores_match_scikit_learn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 3, 300))  # 3 never predicted
    names = ["a", "b", "c", "d"]
    scores = classification_scores(y_true, y_pred, names)
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        y_true, y_pred, labels=range(4), zero_division=0
    )
    for i, name in enumerate(names):
        got = scores["per_class"][name]
        assert [got["precision"], got["recall"], got["f1"]] == pytest.approx(
            [precision[i], recall[i], f1[i]]
        )
        assert got["support"] == support[i]
    assert scores["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred))
    for average in ("micro", "macro"):
        expected = sk.precision_recall_fscore_support(
            y_true, y_pred, labels=range(4), average=average, zero_division=0
        )[:3]
        got = scores[average]
        assert [got["precision"], got["recall"], got["f1"]] == pytest.approx(expected)
    np.testing.assert_array_equal(scores["confusion_matrix"], sk.confusion_matrix(y_true, y_pred))


@pytest.mark.parametrize(
    "y_true, y_pred, match",
    [([0, 2], [0, 1], "y_true.*outside"), ([0, 1], [0, -1], "y_pred.*outside"), ([], [], "empty")],
)
def test_classification_scores_errors(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        classification_scores(y_true, y_pred, ["a", "b"])


def test_evaluate_run_errors(tmp_path):
    with pytest.raises(ValueError, match="not a finished run"):
        evaluate_run(tmp_path)


def test_classification_report_agrees_with_keras_metrics(files):  # noqa: F811
    summary = finetune(finetune_config(files, steps=40), verbose=False)
    report = evaluate.main(["run", summary["run_dir"]])
    assert report["split"] == "test" and report["examples"] == 200
    assert report["scores"]["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert report["baseline"]["accuracy"] == pytest.approx(summary["baseline_accuracy"])
    assert np.sum(report["scores"]["confusion_matrix"]) == 200
    out = files / "runs" / "classification" / "evaluation"
    assert json.loads((out / "report.json").read_text()) == report
    for name in ("confusion_matrix.png", "per_class_f1.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_token_classification_report_agrees_with_the_entity_f1_metric(files):  # noqa: F811
    config = finetune_config(files, "token_classification", steps=60)
    summary = finetune(config, verbose=False)
    report = evaluate_run(summary["run_dir"], output_dir=files / "report")
    # The Keras EntityF1 metric sees piece-level ids in graph; the report maps back to words.
    assert report["scores"]["f1"] == pytest.approx(summary["test_entity_f1"], abs=1e-6)
    assert set(report["scores"]["per_type"]) <= {"loc", "per"}
    assert report["baseline"] == {"entity_f1": 0.0}
    words = sum(len(s.split("\t")) - 1 for s in (files / "test.conll").read_text().split("\n"))
    assert np.sum(report["scores"]["word_tags"]["confusion_matrix"]) == words
    assert (files / "report" / "confusion_matrix.png").is_file()


@pytest.mark.parametrize(
    "task, model", [("causal_lm", "gpt_tiny"), ("bert_pretraining", "bert_tiny")]
)
def test_language_model_report_agrees_with_keras_perplexity(tmp_path, corpus, task, model):  # noqa: F811
    config = RunConfig(
        task=task, model=model, train_files=(corpus,), validation_files=(corpus,),
        vocabulary_size=120, sequence_length=16, batch_size=4, steps=20, log_every=10,
        checkpoint_every=20, learning_rate=3e-3, output_dir=str(tmp_path / "runs"), name="lm",
    )  # fmt: skip
    pretrain(config, verbose=False)
    report = evaluate_run(tmp_path / "runs" / "lm")
    run_dir = tmp_path / "runs" / "lm"
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    dataset = pretraining_dataset_fn(
        config,
        build_preprocessor(config, tokenizer),
        [corpus.replace("*", str(i)) for i in range(3)],
        training=False,
    )(tf.distribute.InputContext())
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if task == "causal_lm":
        model.compile(loss=loss, weighted_metrics=[Perplexity(), "accuracy"])
        logs = model.evaluate(dataset, verbose=0, return_dict=True)
    else:
        metrics = {"mlm": [Perplexity(), "accuracy"]}
        model.compile(loss={"mlm": loss, "nsp": loss}, weighted_metrics=metrics)
        logs = model.evaluate(dataset, verbose=0, return_dict=True)
        logs = {k.removeprefix("mlm_"): v for k, v in logs.items()}
        assert 0 <= report["scores"]["nsp_accuracy"] <= 1
    assert report["scores"]["perplexity"] == pytest.approx(logs["perplexity"], rel=1e-4)
    assert report["scores"]["accuracy"] == pytest.approx(logs["accuracy"], rel=1e-4)
    assert 0 < report["baseline"]["unigram_accuracy"] < 1
    assert report["baseline"]["unigram_perplexity"] < 120  # the vocabulary size
    if task == "causal_lm":  # 20 steps suffice to beat counting words on the training text
        assert report["scores"]["perplexity"] < report["baseline"]["unigram_perplexity"]
